/**
 * The kit judged: it fails a driver that claims what it does not implement (and one that implements what it does
 * not claim), it tests a 1 MiB-only format at 1 MiB instead of silently not at all, it fails loudly when no cluster
 * size is left, and it gives a source-only driver map, read and conversion tests from its samples.
 */
import { describe, expect, it } from 'vitest';
import { collectExtents, DRIVER_API_VERSION, MemoryIO, writeImage, type Driver, type Image } from '@ic/core';
import {
  conformanceSuite,
  contentFromImageContent,
  describeDriver,
  driverMemberProblems,
  identityPairCases,
  installedPartners,
  kitClusterSizes,
  matrixCases,
  pattern,
  shapePairCases,
  shapes,
  type KitGroup,
  type Sample,
} from '../src/index.js';
import { expectUsableWithQemu } from '../src/qemu/index.js';
import { makeToyFormat, makeToyRaw } from '../src/crash/toy-formats.js';
import { installedDrivers } from './installed-drivers.js';

const MiB = 1024 * 1024;

function kitCase(groups: KitGroup[], name: string) {
  const found = groups.flatMap((group) => group.cases).find((c) => c.name.includes(name));
  if (!found) throw new Error(`no kit case named like "${name}" in: ${groups.flatMap((g) => g.cases.map((c) => c.name)).join(' | ')}`);
  return found;
}

/** Runs every case and returns the names of those that fail. */
async function failingCases(groups: KitGroup[]): Promise<string[]> {
  const failed: string[] = [];
  for (const c of groups.flatMap((group) => group.cases)) await c.run().catch(() => failed.push(c.name));
  return failed;
}

/** An image that reads as zeros and has none of the optional members. */
function bareImage(format: string, virtualSize: number): Image {
  return {
    format,
    info: () => ({ format, virtualSize, dirty: false }),
    map: () => [[{ kind: 'unallocated', guestOffset: 0, length: virtualSize }]],
    read: async (_offset, length) => new Uint8Array(length),
    close: async () => {},
  };
}

const claimsEverything: Driver = {
  name: 'claims-all',
  description: 'claims every capability and implements none of them',
  version: '0.0.0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { read: true, create: true, backing: true, zeroExtents: true, check: true, inPlaceSource: true, inPlaceTarget: true },
  probe: () => 0,
  open: async () => bareImage('claims-all', MiB),
};

const oneSample = async (): Promise<Sample[]> => [{ name: 'zeros', io: new MemoryIO(new Uint8Array(512)), expected: { virtualSize: MiB, data: [] } }];

describe('the kit fails a driver that claims every capability and implements none', () => {
  it('names each missing driver member', () => {
    const problems = driverMemberProblems(claimsEverything).join('\n');
    expect(problems).toMatch(/claims capability 'create' but the driver has no create\(\)/);
    expect(problems).toMatch(/claims capability 'inPlaceTarget' but the driver has no inPlace/);
  });

  it('fails the capability case with every missing member, driver- and image-level', async () => {
    const groups = await conformanceSuite(claimsEverything, { partners: [], samples: oneSample });
    const run = kitCase(groups, 'every claimed capability has its member').run();
    await expect(run).rejects.toThrow(/create\(\)[\s\S]*inPlace[\s\S]*check\(\)[\s\S]*conversionSource\(\)/);
  });

  it('fails the registry case and the cases that look for backing and zero extents being exercised', async () => {
    const groups = await conformanceSuite(claimsEverything, { partners: [], samples: oneSample });
    await expect(kitCase(groups, 'is accepted by the registry').run()).rejects.toThrow(/claims capability 'create'/);
    await expect(kitCase(groups, "capability 'backing' is exercised").run()).rejects.toThrow(/no sample names one/);
    await expect(kitCase(groups, "capability 'zeroExtents' is exercised").run()).rejects.toThrow(/no sample maps one/);
  });

  it('fails it without samples too: no image to test', async () => {
    const groups = await conformanceSuite(claimsEverything, { partners: [] });
    await expect(kitCase(groups, 'gives the kit images to test').run()).rejects.toThrow(/no image of this format to test/);
    const failed = await failingCases(groups);
    expect(failed).toEqual(expect.arrayContaining(['every claimed capability has its member, and no member is there without its capability', 'is accepted by the registry and describes itself as data']));
  });
});

describe('the kit reports members that are there without their capability', () => {
  const toy = makeToyFormat({ name: 'toyquiet', magic: 'TQUI', headerClusters: 1 });
  const quiet: Driver = { ...toy, capabilities: { read: true }, create: async () => {} };

  it('driver-level: create() and inPlace', () => {
    const problems = driverMemberProblems(quiet).join('\n');
    expect(problems).toMatch(/has create\(\) but the driver does not claim capability 'create'/);
    expect(problems).toMatch(/has inPlace .* but the driver does not claim capability 'inPlaceTarget'/);
  });

  it("image-level and target-level: check(), conversionSource() and the target's zero extents", async () => {
    const io = new MemoryIO(new Uint8Array(0), 'toy');
    await writeImage(io, toy, { virtualSize: 4 * MiB, clusterSize: 65536, data: [{ guestOffset: 0, bytes: pattern(4096, 1) }] });
    const groups = await conformanceSuite(quiet, { partners: [], samples: async () => [{ name: 'toy image', io, expected: { virtualSize: 4 * MiB, data: [{ guestOffset: 0, bytes: pattern(4096, 1) }] } }] });
    const error = await kitCase(groups, 'every claimed capability has its member').run().catch((e: unknown) => e);
    expect(String(error)).toMatch(/an opened image has check\(\) but the driver does not claim capability 'check'/);
    expect(String(error)).toMatch(/an opened image has conversionSource\(\) but the driver does not claim capability 'inPlaceSource'/);
    expect(String(error)).toMatch(/in-place target .* has way to record zero extents \(layout.zeroExtents\) but the driver does not claim capability 'zeroExtents'/);
  });
});

describe('cluster sizes come from the driver', () => {
  const oneMiB = makeToyFormat({ name: 'toymib', magic: 'TMIB', headerClusters: 1, clusterSizes: { min: MiB, max: MiB } });

  it('a format whose only cluster size is 1 MiB is tested at 1 MiB, with finite shapes', async () => {
    expect(kitClusterSizes(oneMiB)).toEqual([MiB]);
    const groups = await conformanceSuite(oneMiB, { partners: [] });
    const built = groups.find((g) => g.name === 'images built by its in-place target')!;
    const shapeCases = built.cases.filter((c) => c.name.startsWith('builds the'));
    expect(shapeCases.length).toBe(shapes.filter((s) => !s.needsBacking).length);
    for (const c of shapeCases) expect(c.name).toContain(`${MiB}-byte clusters`);
    for (const shape of shapes) expect(Number.isSafeInteger(shape.content(2 * MiB).virtualSize), shape.name).toBe(true);
  });

  it("the default sizes move to the driver's range: 4 KiB and 64 KiB, or the nearest it supports", () => {
    expect(kitClusterSizes(makeToyFormat({ name: 'toywide', magic: 'TWID', headerClusters: 1, clusterSizes: { min: 512, max: 2 * MiB } }))).toEqual([4096, 65536]);
    expect(kitClusterSizes(makeToyFormat({ name: 'toybig', magic: 'TBIG', headerClusters: 1, clusterSizes: { min: MiB, max: 2 * MiB } }))).toEqual([MiB]);
    expect(kitClusterSizes(makeToyFormat({ name: 'toysmall', magic: 'TSML', headerClusters: 1, clusterSizes: { min: 512, max: 1024 } }))).toEqual([1024]);
  });

  it('an empty set, or a requested size outside the range, fails loudly', async () => {
    const none = makeToyFormat({ name: 'toynone', magic: 'TNON', headerClusters: 1, clusterSizes: { min: 3000, max: 3500 } });
    expect(() => kitClusterSizes(none)).toThrow(/holds no power of two/);
    const groups = await conformanceSuite(none, { partners: [] });
    await expect(kitCase(groups, 'has cluster sizes to build images with').run()).rejects.toThrow(/holds no power of two/);
    expect(() => kitClusterSizes(oneMiB, [65536])).toThrow(/65536 are not powers of two in/);
    expect(() => kitClusterSizes(oneMiB, [])).toThrow(/empty/);
  });

  // The suite itself, at 1 MiB: every shape really runs and passes.
  describeDriver(oneMiB, { partners: [] });
});

describe('a source-only driver is tested from its samples', () => {
  const toyRaw = makeToyRaw('toyflat');
  const content = {
    virtualSize: 8 * MiB,
    data: [
      { guestOffset: 0, bytes: pattern(65536, 1) },
      { guestOffset: 3 * MiB + 1000, bytes: pattern(5000, 2) },
      { guestOffset: 8 * MiB - 4096, bytes: pattern(4096, 3) },
    ],
  };
  const samples = async (): Promise<Sample[]> => {
    const io = new MemoryIO(new Uint8Array(0), 'flat');
    for (const piece of content.data) await io.write(piece.guestOffset, piece.bytes);
    await io.truncate(content.virtualSize);
    return [{ name: 'three pieces', io, expected: content }];
  };

  it('gets map/read and conversion cases to every bundled target', async () => {
    const groups = await conformanceSuite(toyRaw, { samples });
    const names = groups.find((g) => g.name === 'samples')!.cases.map((c) => c.name);
    expect(names).toContain('sample "three pieces": maps the whole disk, reads the expected content, checks clean');
    for (const target of ['qcow2', 'qed', 'vmdk']) expect(names.some((n) => n.startsWith(`sample "three pieces" -> ${target}:`)), target).toBe(true);
    expect(groups.some((g) => g.name === 'images built by its in-place target')).toBe(false);
  });

  it('fails a reader that returns the wrong bytes', async () => {
    const lying: Driver = {
      ...toyRaw,
      async open(io, options) {
        const image = await toyRaw.open(io, options);
        return { ...image, read: async (offset: number, length: number) => (await image.read(offset, length)).map((b) => b ^ 1) };
      },
    };
    const groups = await conformanceSuite(lying, { samples, partners: [] });
    await expect(kitCase(groups, 'sample "three pieces": maps').run()).rejects.toThrow(/guest content/);
  });

  it('fails a hook that gives no sample', async () => {
    const groups = await conformanceSuite(toyRaw, { samples: async () => [], partners: [] });
    await expect(kitCase(groups, 'makes its samples').run()).rejects.toThrow(/gave no sample/);
  });

  describeDriver(toyRaw, { samples });
});

describe('the qemu usability check can fail', () => {
  async function qedImage() {
    const { drivers } = await installedPartners();
    const qed = drivers.find((d) => d.name === 'qed')!;
    const io = new MemoryIO(new Uint8Array(0), 'image.qed');
    const content = { virtualSize: 16 * MiB, data: [{ guestOffset: 65536, bytes: pattern(65536, 4) }] };
    await writeImage(io, qed, { ...content, clusterSize: 65536 });
    const map = await collectExtents((await qed.open(io)).map());
    return { qed, io, content, map };
  }

  it('passes a good image, and writes at a fresh place, over data and across the end of data', async () => {
    const { io, content, map } = await qedImage();
    const { writes } = await expectUsableWithQemu({ io, format: 'qed', map, clusterSize: 65536, expected: contentFromImageContent(content), what: 'good' });
    expect(writes.map((w) => w.where.split(' at ')[0])).toEqual(['a whole unallocated cluster', 'over data', 'across the end of data']);
  });

  it('fails when the content is not what it should be', async () => {
    const { io, content, map } = await qedImage();
    const wrong = { ...content, data: [{ guestOffset: 65536, bytes: pattern(65536, 5) }] };
    await expect(expectUsableWithQemu({ io, format: 'qed', map, clusterSize: 65536, expected: contentFromImageContent(wrong), what: 'wrong content' })).rejects.toThrow(/qemu-img compare/);
  });

  it('fails when qemu-img check finds leaks', async () => {
    const { io, content, map } = await qedImage();
    // A cluster at the end of the file that nothing references: a leak to qemu's QED check.
    await io.write(await io.size(), pattern(65536, 6));
    await expect(expectUsableWithQemu({ io, format: 'qed', map, clusterSize: 65536, expected: contentFromImageContent(content), what: 'leaky' })).rejects.toThrow(/qemu-img check exits 3/);
  });
});

describe("the matrix's covering subset", () => {
  const a = makeToyFormat({ name: 'cova', magic: 'COVA', headerClusters: 1, clusterSizes: { min: 4096, max: 1 << 20 } });
  const b = makeToyFormat({ name: 'covb', magic: 'COVB', headerClusters: 2, clusterSizes: { min: 4096, max: 1 << 20 } });
  const sizes = [4096, 65536, 1 << 20];
  const parse = (name: string) => /: (.+), (\d+)-byte clusters$/.exec(name)!.slice(1) as [string, string];

  it('meets every shape once and every cluster size at least once, for each pair, with a third of the cases', () => {
    for (const [source, target] of [[a, b], [b, a]] as const) {
      const full = shapePairCases(source, target, { clusterSizes: sizes, coverage: 'full' }).map((c) => parse(c.name));
      const covering = shapePairCases(source, target, { clusterSizes: sizes, coverage: 'covering' }).map((c) => parse(c.name));
      const shapeNames = [...new Set(full.map(([shape]) => shape))];
      expect(full.length).toBe(shapeNames.length * sizes.length);
      expect(covering.map(([shape]) => shape).sort()).toEqual([...shapeNames].sort());
      expect(new Set(covering.map(([, size]) => Number(size)))).toEqual(new Set(sizes));
      // A subset of the full matrix, never a case of its own.
      const fullNames = new Set(full.map((pair) => pair.join('@')));
      for (const pair of covering) expect(fullNames.has(pair.join('@'))).toBe(true);
    }
  });

  it('is the same on every run, and the environment variable chooses it when the option does not', () => {
    const names = () => shapePairCases(a, b, { clusterSizes: sizes, coverage: 'covering' }).map((c) => c.name);
    expect(names()).toEqual(names());
    const saved = process.env.IC_KIT_COVERAGE;
    try {
      process.env.IC_KIT_COVERAGE = 'full';
      expect(shapePairCases(a, b, { clusterSizes: sizes }).length).toBe(shapes.length * sizes.length - sizes.length * shapes.filter((s) => s.needsBacking).length);
      process.env.IC_KIT_COVERAGE = 'covering';
      expect(shapePairCases(a, b, { clusterSizes: sizes }).map((c) => c.name)).toEqual(names());
      process.env.IC_KIT_COVERAGE = 'most';
      expect(() => shapePairCases(a, b, { clusterSizes: sizes })).toThrow(/IC_KIT_COVERAGE/);
    } finally {
      if (saved === undefined) delete process.env.IC_KIT_COVERAGE;
      else process.env.IC_KIT_COVERAGE = saved;
    }
  });
});

describe('the matrix with an identity target (raw)', () => {
  const toy = makeToyFormat({ name: 'idsrc', magic: 'IDSR', headerClusters: 1, clusterSizes: { min: 4096, max: 1 << 20 } });
  const other = makeToyFormat({ name: 'idoth', magic: 'IDOT', headerClusters: 2, clusterSizes: { min: 4096, max: 1 << 20 } });
  const toyRaw = makeToyRaw('idraw');
  const identity = { ...toyRaw, capabilities: { ...toyRaw.capabilities, identityTarget: true } };
  const sizes = [4096, 65536, 1 << 20];
  const parse = (name: string) => /: (.+), (\d+)-byte clusters$/.exec(name)!.slice(1) as [string, string];

  it('pairs every driver that builds and converts with each identity target, after the ordinary pairs, under the coverage rules', () => {
    const pairs = matrixCases([toy, other, identity], { clusterSizes: sizes, coverage: 'covering' }).map((p) => p.pair);
    expect(pairs).toEqual(['idsrc -> idoth -> idsrc', 'idoth -> idsrc -> idoth', 'idsrc -> idraw -> idsrc', 'idoth -> idraw -> idoth']);
    const full = identityPairCases(toy, identity, { clusterSizes: sizes, coverage: 'full' }).map((c) => parse(c.name));
    const covering = identityPairCases(toy, identity, { clusterSizes: sizes, coverage: 'covering' }).map((c) => parse(c.name));
    expect(full.length).toBe(shapes.length * sizes.length - sizes.length * shapes.filter((s) => s.needsBacking).length);
    expect(covering.map(([shape]) => shape).sort()).toEqual([...new Set(full.map(([shape]) => shape))].sort());
    expect(new Set(covering.map(([, size]) => Number(size)))).toEqual(new Set(sizes));
    // A target that cannot be a source is met one way only.
    const oneWay = { ...identity, name: 'idsink', capabilities: { read: true, identityTarget: true } };
    expect(matrixCases([toy, oneWay], { clusterSizes: sizes }).map((p) => p.pair)).toEqual(['idsrc -> idsink']);
  });

  it('registers a source the engine cannot turn into the target as skipped, with the reason, its file unchanged', async () => {
    // The toy format lists no movable units: the engine refuses it up front.
    const cases = identityPairCases(toy, identity, { clusterSizes: [4096], shapes: shapes.filter((s) => s.name === 'checkerboard'), qemu: false });
    expect(cases).toHaveLength(1);
    const result = await cases[0]!.run();
    expect(result && 'skipped' in result ? result.skipped : result).toMatch(/refuses to convert this idsrc image to idraw up front \(nothing written\):.*movable units/);
  });

  it('converts a real source to raw and back, and refuses its image with a backing file', async () => {
    const drivers = await installedDrivers();
    const qed = drivers.find((d) => d.name === 'qed');
    const raw = drivers.find((d) => d.name === 'raw');
    if (!qed || !raw) throw new Error('@ic/qed and @ic/raw must be installed for this test');
    const pick = (name: string) => shapes.filter((s) => s.name === name);
    const [converted] = identityPairCases(qed, raw, { clusterSizes: [65536], shapes: pick('unaligned writes and the last byte'), qemu: false });
    expect(converted!.name).toBe('qed -> raw -> qed: unaligned writes and the last byte, 65536-byte clusters');
    expect(await converted!.run()).toBeUndefined();
    const [backed] = identityPairCases(qed, raw, { clusterSizes: [65536], shapes: pick('backing reference'), qemu: false });
    const result = await backed!.run();
    expect(result && 'skipped' in result ? result.skipped : result).toMatch(/up front \(nothing written\):.*backing file/);
  });
});
