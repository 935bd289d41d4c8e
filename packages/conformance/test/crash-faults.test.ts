/**
 * I/O error injection (reliability.md §2.3 G7): an error at every write, truncate and flush of a conversion.
 * The conversion must reject with exactly the injected typed error, and leave a store that is intact or
 * recoverable. Toy formats first, then every installed driver pair on two shapes.
 */
import { describe, expect, it } from 'vitest';
import { hasCapability, IcError, isIcError, MemoryIO, Registry, writeImage, type Driver, type ImageContent } from '@ic/core';
import { buildCrashSource, canBeCrashSource, contentFromImageContent, crashShapes, describeFault, FaultyIO, runFaultSweep, type FaultSweepResult } from '../src/crash/index.js';
import { makeToyFormat, makeToyRaw } from '../src/crash/toy-formats.js';
import { pattern } from '../src/shapes.js';
import { installedDrivers } from './installed-drivers.js';

function expectSweepSafe(result: FaultSweepResult): void {
  const describeRuns = (runs: FaultSweepResult['runs']) =>
    runs.map((r) => `${describeFault(r.fault)}: ${r.result === 'completed' ? 'completed' : r.result.message} → ${r.classification.outcome} ${r.classification.detail}`).join('\n');
  expect(result.runs.length).toBe(2 * result.writes + 2 * result.truncates + result.flushes);
  expect(result.wrongErrors, describeRuns(result.wrongErrors)).toEqual([]);
  expect(result.unsafe, describeRuns(result.unsafe)).toEqual([]);
  expect(result.outcomes.DETECTED_REFUSED, describeRuns(result.runs.filter((r) => r.classification.outcome === 'DETECTED_REFUSED'))).toBe(0);
  // Faults early leave the old image, faults after the commit leave the new one (possibly needing recovery).
  expect(result.outcomes.OLD_INTACT + result.outcomes.RECOVERED_OLD + result.outcomes.OLD_INTACT_GROWN).toBeGreaterThan(0);
  expect(result.outcomes.NEW_INTACT + result.outcomes.RECOVERED_NEW).toBeGreaterThan(0);
}

describe('FaultyIO', () => {
  it('fails the chosen call with a typed error, and everything after a failed flush', async () => {
    const io = new FaultyIO(new MemoryIO(new Uint8Array(1024), 'store'), { on: 'write', at: 2, code: 'NO_SPACE' });
    await io.write(0, new Uint8Array([1]));
    const error = await io.write(0, new Uint8Array([2])).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('NO_SPACE');
    expect((await io.read(0, 1))[0]).toBe(1); // the failed write changed nothing
    await io.write(0, new Uint8Array([3])); // a failed write does not poison the file

    const flushing = new FaultyIO(new MemoryIO(new Uint8Array(1024), 'store'), { on: 'flush', at: 1 });
    const flushError = await flushing.flush().catch((e: unknown) => e);
    expect(isIcError(flushError) && flushError.code).toBe('IO');
    for (const call of [() => flushing.read(0, 1), () => flushing.write(0, new Uint8Array(1)), () => flushing.flush(), () => flushing.size(), () => flushing.truncate(0)]) {
      const later = await call().catch((e: unknown) => e);
      expect(later).toBeInstanceOf(IcError);
      expect((later as IcError).code).toBe('IO');
    }
  });
});

describe('fault sweep on toy formats', () => {
  const toyA = makeToyFormat({ name: 'toya', magic: 'TOYA', headerClusters: 1 });
  const toyB = makeToyFormat({ name: 'toyb', magic: 'TOYB', headerClusters: 2 });
  const toyLong = makeToyFormat({ name: 'toyl', magic: 'TOYL', headerClusters: 1, headerLength: 1536 });
  const toyRaw = makeToyRaw();
  const registry = new Registry([toyA, toyB, toyLong, toyRaw]);
  const content = (clusterSize: number): ImageContent => ({
    virtualSize: 16 * clusterSize,
    clusterSize,
    data: [
      { guestOffset: 0, bytes: pattern(2 * clusterSize, 1) },
      { guestOffset: 9 * clusterSize, bytes: pattern(clusterSize, 2) },
    ],
  });
  for (const [source, target, clusterSize] of [
    [toyA, toyB, 4096],
    [toyA, toyLong, 4096],
    [toyA, toyLong, 512],
  ] as const) {
    it(`${source.name} → ${target.name}, ${clusterSize}-byte clusters`, async () => {
      const result = await runFaultSweep({
        registry,
        sourceDriver: source.name,
        targetDriver: target.name,
        buildSource: async () => {
          const io = new MemoryIO(new Uint8Array(0), 'toy');
          await writeImage(io, source, content(clusterSize));
          return io;
        },
        expectedContent: contentFromImageContent(content(clusterSize)),
      });
      expectSweepSafe(result);
    });
  }

  it(`${toyRaw.name} → ${toyB.name}`, async () => {
    const bytes = pattern(12 * 4096, 5);
    const result = await runFaultSweep({
      registry,
      sourceDriver: toyRaw.name,
      targetDriver: toyB.name,
      buildSource: async () => new MemoryIO(bytes, 'raw'),
      expectedContent: contentFromImageContent({ virtualSize: bytes.length, data: [{ guestOffset: 0, bytes }] }),
    });
    expectSweepSafe(result);
  });
});


const drivers = await installedDrivers();
const registry = new Registry(drivers);
const sources = drivers.filter(canBeCrashSource);
const targets = drivers.filter((d) => hasCapability(d, 'inPlaceTarget') && d.inPlace !== undefined);
const sweepShapes = crashShapes.filter((s) => s.name === 'checkerboard' || s.name === 'backing reference');

describe.runIf(sources.length > 0 && targets.length > 0)('fault sweep on installed drivers', () => {
  for (const source of sources) {
    for (const target of targets) {
      if (source === target) continue;
      for (const shape of sweepShapes) {
        if (shape.needsBacking && !(hasCapability(source, 'backing') && hasCapability(target, 'backing'))) continue;
        it(`${source.name} → ${target.name}: ${shape.name}`, async (context) => {
          const built = await buildCrashSource(source, shape, 65536);
          const result = await runFaultSweep({
            registry,
            sourceDriver: source.name,
            targetDriver: target.name,
            buildSource: async () => built.io,
            expectedContent: built.expected,
            ...(built.openOptions ? { openOptions: built.openOptions } : {}),
          }).catch((error: unknown) => error);
          if (isIcError(result) && result.code === 'UNSUPPORTED') {
            context.skip(result.message);
            return;
          }
          if (result instanceof Error) throw result;
          expectSweepSafe(result as FaultSweepResult);
        });
      }
    }
  }
});
