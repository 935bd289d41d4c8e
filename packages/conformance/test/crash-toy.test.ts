/**
 * The crash machinery on toy formats: recording, enumeration, the classifier, whole campaigns for the three
 * commit kinds and a raw-like source, a crash inside recovery, and a self-test that an unsafe writer is caught.
 */
import { describe, expect, it } from 'vitest';
import { collectExtents, IcError, MemoryIO, Registry, writeImage, type BlockIO, type Driver, type ImageContent } from '@ic/core';
import {
  Classifier,
  contentFromImageContent,
  CrashSpace,
  RecordingIO,
  runCrashCampaign,
  SparseBytes,
  summariseCampaign,
  tearBoundaries,
  type CampaignResult,
  type GeneratorName,
} from '../src/crash/index.js';
import { encodeToyHeader, makeToyFormat, makeToyRaw } from '../src/crash/toy-formats.js';
import { pattern } from '../src/shapes.js';

const toyA = makeToyFormat({ name: 'toya', magic: 'TOYA', headerClusters: 1 });
const toyB = makeToyFormat({ name: 'toyb', magic: 'TOYB', headerClusters: 2 });
/** A header of three sectors: committed as tail first, then sector 0 (or through the transitional marker). */
const toyLong = makeToyFormat({ name: 'toyl', magic: 'TOYL', headerClusters: 1, headerLength: 1536 });
const toyRaw = makeToyRaw();
const registry = new Registry([toyA, toyB, toyLong, toyRaw]);

const CI_GENERATORS: GeneratorName[] = ['prefix', 'omit-one', 'tear-512', 'tear-4096', 'subsets', 'extension', 'random'];

function sampleContent(clusterSize: number): ImageContent {
  return {
    virtualSize: 24 * clusterSize,
    clusterSize,
    data: [
      { guestOffset: 0, bytes: pattern(2 * clusterSize, 1) },
      { guestOffset: 5 * clusterSize + 100, bytes: pattern(700, 2) },
      { guestOffset: 23 * clusterSize, bytes: pattern(clusterSize, 3) },
    ],
    zero: [{ guestOffset: 10 * clusterSize, length: 2 * clusterSize }],
  };
}

async function build(driver: Driver, content: ImageContent): Promise<MemoryIO> {
  const io = new MemoryIO(new Uint8Array(0), `sample.${driver.name}`);
  await writeImage(io, driver, content);
  return io;
}

function expectSafe(result: CampaignResult): void {
  const failures = result.failures.map((f) => `${f.outcome} [${f.generator}] ${f.state}: ${f.detail}`).join('\n');
  expect(result.totals.SILENT_BAD, failures).toBe(0);
  expect(result.totals.DATA_LOSS, failures).toBe(0);
  expect(result.totals.UNTYPED_ERROR, failures).toBe(0);
  // Under sector-atomic models nothing is left that recover cannot bring back.
  expect(result.totals.DETECTED_REFUSED, failures).toBe(0);
  expect(result.totals.OLD_INTACT + result.totals.RECOVERED_OLD, 'the old image is seen').toBeGreaterThan(0);
  expect(result.totals.NEW_INTACT + result.totals.RECOVERED_NEW, 'the new image is seen').toBeGreaterThan(0);
  const recovery = result.recovery.result;
  expect(recovery, 'recovery was crashed too').toBeDefined();
  const recoveryFailures = recovery!.failures.map((f) => `${f.outcome} [${f.generator}] ${f.state}: ${f.detail}`).join('\n');
  for (const outcome of ['SILENT_BAD', 'DATA_LOSS', 'UNTYPED_ERROR', 'DETECTED_REFUSED'] as const) expect(recovery!.totals[outcome], recoveryFailures).toBe(0);
  expect(recovery!.states).toBeGreaterThan(0);
}

describe('RecordingIO and the crash space', () => {
  it('records writes, truncates and flushes in order, and behaves like a file', async () => {
    const start = new MemoryIO(pattern(4096, 9), 'start');
    const recording = await RecordingIO.wrap(start);
    const data = new Uint8Array(1024).fill(7);
    await recording.write(3000, data);
    data.fill(8); // the recording keeps its own copy
    await recording.flush();
    await recording.truncate(2048);
    await recording.write(8192, new Uint8Array(512).fill(9));
    expect(recording.ops.map((op) => op.kind)).toEqual(['write', 'flush', 'truncate', 'write']);
    expect(await recording.size()).toBe(8704);
    expect((await recording.read(3000, 4))[0]).toBe(0); // truncated away
    expect(await start.size()).toBe(4096); // the starting image is untouched
    const first = recording.ops[0]!;
    expect(first.kind === 'write' && first.data[0]).toBe(7);
    expect(first.kind === 'write' && first.sizeBefore).toBe(4096);

    const space = new CrashSpace(recording.recording());
    expect(space.epochs.map((e) => e.pending.length)).toEqual([1, 2]);
    expect(space.stats()).toMatchObject({ writes: 2, truncates: 1, flushes: 1, maxPending: 2, extendingWrites: 1 });
    expect(space.finalBytes().equals(await SparseBytes.fromIO(recording.current))).toBe(true);
    // Prefix: |P|+1 per epoch; the full prefix of epoch 0 is the start of epoch 1 (same key).
    const prefixes = [...space.generate('prefix')];
    expect(prefixes).toHaveLength(2 + 3);
    expect(new Set(prefixes.map((s) => s.key)).size).toBe(4);
    expect([...space.generate('omit-one')]).toHaveLength(3);
    expect([...space.generate('subsets')]).toHaveLength(2 + 4);
    // Extension: each extending write (only the one past the end) × {zeros, garbage} × {rest kept, rest lost}.
    expect([...space.generate('extension')]).toHaveLength(4);
  });

  it('records a hole punch as a write of zeros inside the file (size kept), torn and lost like a write', async () => {
    const recording = await RecordingIO.wrap(new MemoryIO(pattern(8192, 4), 'start'));
    expect(await recording.punchHole(4096, 8192)).toBe(true); // runs past the end: only [4096, 8192) changes
    expect(await recording.size()).toBe(8192);
    expect((await recording.read(4096, 4096)).every((b) => b === 0)).toBe(true);
    expect((await recording.read(4095, 1))[0]).toBe(pattern(8192, 4)[4095]);
    expect(recording.ops).toHaveLength(1);
    const punch = recording.ops[0]!;
    expect(punch.kind === 'write' && [punch.offset, punch.data.length, punch.sizeBefore]).toEqual([4096, 4096, 8192]);
    expect(await recording.punchHole(9000, 512)).toBe(true); // wholly past the end: nothing to record
    expect(recording.ops).toHaveLength(1);
    await recording.flush();
    const space = new CrashSpace(recording.recording());
    // Lost or kept (prefix: the kept one is also the start of the empty last epoch), and torn at its 7 inner
    // sector boundaries, two ways each.
    expect([...space.generate('prefix')]).toHaveLength(3);
    const torn = [...space.generate('tear-512')];
    expect(torn).toHaveLength(7 * 2);
    const half = await space.materialise(torn.find((s) => {
      const fate = s.kept.get(0);
      return fate?.kind === 'torn' && fate.ranges[0]![1] === 2048;
    })!);
    expect((await half.read(4096, 2048)).every((b) => b === 0)).toBe(true);
    expect(await half.read(6144, 2048)).toEqual(pattern(8192, 4).subarray(6144));
  });

  it('tears a write with fewer boundaries than the sample size when maxTearPoints is small (it looped forever)', async () => {
    const recording = await RecordingIO.wrap(new MemoryIO(new Uint8Array(8192), 'start'));
    await recording.write(0, new Uint8Array(8 * 512).fill(3)); // 7 inner boundaries: more than 2, fewer than 11
    await recording.flush();
    const space = new CrashSpace(recording.recording());
    const torn = [...space.generate('tear-512', { maxTearPoints: 2 })];
    expect(torn).toHaveLength(7 * 2);
  });

  it('materialises lost, torn and extended writes', async () => {
    const recording = await RecordingIO.wrap(new MemoryIO(new Uint8Array(1024), 'start'));
    await recording.write(512, new Uint8Array(3 * 512).fill(5)); // extends 1024 -> 2048
    await recording.flush();
    const space = new CrashSpace(recording.recording());
    const torn = [...space.generate('tear-512')];
    // Two inner boundaries (1024, 1536): tears after one or two units, rest kept / dropped (nothing else pending).
    expect(torn).toHaveLength(4);
    const afterOne = await space.materialise(torn[0]!);
    expect(await afterOne.size()).toBe(1024);
    expect((await afterOne.read(512, 1024))[511]).toBe(5);
    expect((await afterOne.read(1024, 1))[0]).toBe(0);
    const extension = [...space.generate('extension')];
    const zeros = await space.materialise(extension.find((s) => s.kept.get(0)?.kind === 'extension' && (s.kept.get(0) as { fill: string }).fill === 'zeros')!);
    expect(await zeros.size()).toBe(2048);
    expect((await zeros.read(512, 1536)).every((b) => b === 0)).toBe(true);
    const garbage = await space.materialise(extension.find((s) => (s.kept.get(0) as { fill?: string } | undefined)?.fill === 'garbage')!);
    expect(await garbage.size()).toBe(2048);
    expect((await garbage.read(512, 512)).every((b) => b === 0)).toBe(true); // inside the old size: untouched
    expect((await garbage.read(1024, 1024)).some((b) => b !== 0)).toBe(true);
  });

  it('finds tear points at aligned boundaries only', () => {
    expect(tearBoundaries(0, 512, 512).count).toBe(0);
    expect(tearBoundaries(0, 4096, 512)).toEqual({ first: 512, count: 7 });
    expect(tearBoundaries(100, 1000, 512)).toEqual({ first: 512, count: 2 });
    expect(tearBoundaries(0, 4096, 4096).count).toBe(0);
  });
});

describe('classifier', () => {
  const content = sampleContent(4096);
  const pristine = contentFromImageContent(content);
  const classifier = new Classifier({ registry, sourceDriver: 'toya', targetDriver: 'toyb', pristine });

  it('calls an untouched source OLD_INTACT and a converted one NEW_INTACT', async () => {
    expect((await classifier.classify(await build(toyA, content))).outcome).toBe('OLD_INTACT');
    expect((await classifier.classify(await build(toyB, content))).outcome).toBe('NEW_INTACT');
  });

  it('calls a flipped data byte SILENT_BAD', async () => {
    const io = await build(toyA, content);
    const image = await toyA.open(io);
    const extents = await collectExtents(image.map());
    const host = extents.find((e) => e.kind === 'data')!.hostOffset!;
    await io.write(host + 10, new Uint8Array([0]));
    const verdict = await classifier.classify(io);
    expect(verdict.outcome).toBe('SILENT_BAD');
    expect(verdict.detail).toMatch(/differs/);
  });

  it('calls a torn multi-sector header DETECTED_REFUSED, and a header of another format SILENT_BAD', async () => {
    const long = await build(toyLong, content);
    const fresh = await toyLong.open(long);
    await fresh.close();
    await long.write(1024, new Uint8Array(512)); // tear the tail: checksum fails
    const longClassifier = new Classifier({ registry, sourceDriver: 'toya', targetDriver: 'toyl', pristine });
    expect((await longClassifier.classify(long)).outcome).toBe('DETECTED_REFUSED');
    const other = await build(toyB, content);
    expect((await longClassifier.classify(other)).outcome).toBe('SILENT_BAD');
  });

  it('treats a raw source by its first N bytes and reports growth', async () => {
    const bytes = pattern(64 * 1024, 4);
    const rawClassifier = new Classifier({ registry, sourceDriver: 'toyraw', targetDriver: 'toyb', pristine: contentFromImageContent({ virtualSize: bytes.length, data: [{ guestOffset: 0, bytes }] }) });
    expect(rawClassifier.isRawLike(toyRaw)).toBe(true);
    expect(rawClassifier.isRawLike(toyA)).toBe(false);
    expect((await rawClassifier.classify(new MemoryIO(bytes, 'raw'))).outcome).toBe('OLD_INTACT');
    const grown = new MemoryIO(bytes, 'raw');
    await grown.write(bytes.length, new Uint8Array(4096).fill(3));
    expect((await rawClassifier.classify(grown)).outcome).toBe('OLD_INTACT_GROWN');
    const changed = new MemoryIO(bytes.slice(), 'raw');
    await changed.write(7, new Uint8Array([0]));
    expect((await rawClassifier.classify(changed)).outcome).toBe('SILENT_BAD');
  });
});

describe('crash campaigns on toy formats', () => {
  const cases: { name: string; source: Driver; target: Driver; clusterSize: number; commit: string }[] = [
    { name: 'single-sector commit with a relocation', source: toyA, target: toyB, clusterSize: 4096, commit: 'single-sector' },
    { name: 'header tail first, then sector 0', source: toyA, target: toyLong, clusterSize: 4096, commit: 'tail-then-sector-0' },
    { name: 'transitional commit (the tail overwrites source data)', source: toyA, target: toyLong, clusterSize: 512, commit: 'transitional' },
  ];
  for (const { name, source, target, clusterSize, commit } of cases) {
    it(`${source.name} → ${target.name}: ${name}`, async () => {
      const content = sampleContent(clusterSize);
      const result = await runCrashCampaign({
        registry,
        sourceDriver: source.name,
        targetDriver: target.name,
        buildSource: () => build(source, content),
        expectedContent: contentFromImageContent(content),
        generators: CI_GENERATORS,
        samples: 400,
        seed: 7,
      });
      console.log(summariseCampaign(result));
      expect(result.conversion?.commit).toBe(commit);
      expectSafe(result);
      expect(result.totals.RECOVERED_OLD, 'states after the intent record need a roll-back').toBeGreaterThan(0);
      expect(result.generators['tear-512']!.states).toBeGreaterThan(0);
      expect(result.generators.subsets!.states).toBeGreaterThan(0);
      expect(result.generators.random!.states).toBe(400);
      if (commit === 'transitional') {
        // The marker sector is probed by no toy format: readers that do not recover refuse or see raw.
        expect(result.beforeRecovery['other-format'] ?? 0).toBeGreaterThan(0);
      }
    });
  }

  it(`${toyRaw.name} → ${toyB.name}: a raw source only grows when the intent record is torn or lost`, async () => {
    const clusterSize = 4096;
    const bytes = new Uint8Array(40 * clusterSize);
    bytes.set(pattern(3 * clusterSize, 11), 0);
    bytes.set(pattern(clusterSize, 12), 20 * clusterSize);
    const result = await runCrashCampaign({
      registry,
      sourceDriver: toyRaw.name,
      targetDriver: toyB.name,
      buildSource: async () => new MemoryIO(bytes, 'raw'),
      expectedContent: contentFromImageContent({ virtualSize: bytes.length, data: [{ guestOffset: 0, bytes }] }),
      generators: CI_GENERATORS,
      samples: 400,
    });
    console.log(summariseCampaign(result));
    expectSafe(result);
    expect(result.totals.OLD_INTACT_GROWN).toBeGreaterThan(0);
    // Growth without a record happens only in the first epoch (the intent record's own write).
    result.epochs.slice(1).forEach((epoch, i) => expect(epoch.outcomes.OLD_INTACT_GROWN, `epoch ${i + 1}`).toBe(0));
  });
});

describe('the harness catches unsafe writers', () => {
  it('a writer that switches the header before writing the table is SILENT_BAD', async () => {
    const clusterSize = 4096;
    const content = sampleContent(clusterSize);
    const source = await build(toyA, content);
    // Convert by hand, unsafely: new table at the end, header first, table after, one flush at the end.
    const unsafe = async (io: BlockIO) => {
      const image = await toyA.open(io);
      const description = await image.conversionSource!();
      const table = [...(description.metadataRanges() as Iterable<{ offset: number; length: number }>)][1]!;
      const tableAt = table.offset + table.length;
      const old = await io.read(table.offset, table.length);
      await io.write(0, encodeToyHeader('TOYB', clusterSize, content.virtualSize, tableAt, 1, 36));
      await io.write(tableAt, old);
      await io.flush();
    };
    const result = await runCrashCampaign({
      registry,
      sourceDriver: 'toya',
      targetDriver: 'toyb',
      buildSource: async () => source,
      operation: unsafe,
      generators: ['omit-one', 'subsets'],
      samples: 0,
      recoveryCrashes: 0,
    });
    expect(result.totals.NEW_INTACT).toBeGreaterThan(0);
    expect(result.totals.SILENT_BAD + result.totals.DETECTED_REFUSED).toBeGreaterThan(0);
  });

  it('a conversion that throws propagates (nothing to enumerate)', async () => {
    const content = sampleContent(4096);
    await expect(
      runCrashCampaign({
        registry,
        sourceDriver: 'toya',
        targetDriver: 'toyb',
        buildSource: () => build(toyA, content),
        operation: async () => {
          throw new IcError('IO', 'boom');
        },
      }),
    ).rejects.toThrow('boom');
  });
});
