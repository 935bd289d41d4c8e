import { describe, expect, it } from 'vitest';
import {
  AppendAllocator,
  collectExtents,
  convertInPlace,
  IcError,
  isIcError,
  MemoryIO,
  planMapping,
  writeImage,
  type Extent,
  type TargetLayout,
} from '../src/index.js';
import { makeToyDriver } from './toy-format.js';

const toyA = makeToyDriver('toya', 'TOYA', 1);
const toyB = makeToyDriver('toyb', 'TOYB', 2); // a larger header region: cluster 1 of A must move

function bytes(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => ((i * 31 + seed * 17) % 251) + 1);
}

const layout = (clusterSize: number, headerRegionSize = clusterSize, zeroExtents = true): TargetLayout => ({
  clusterSize,
  headerRegionSize,
  maxHostOffset: Number.MAX_SAFE_INTEGER,
  zeroExtents,
});

describe('planMapping', () => {
  const space = () => new AppendAllocator(1 << 20, 4096);

  it('keeps aligned clusters, relocates the header region and misaligned data', () => {
    const extents: Extent[] = [
      { kind: 'data', guestOffset: 0, length: 4096, hostOffset: 0 }, // under the new header
      { kind: 'data', guestOffset: 4096, length: 8192, hostOffset: 8192 }, // stays
      { kind: 'data', guestOffset: 12288, length: 4096, hostOffset: 20480 + 512 }, // misaligned
      { kind: 'unallocated', guestOffset: 16384, length: 16384 },
    ];
    const plan = planMapping({ extents, virtualSize: 32768, layout: layout(4096), hasBacking: false, space: space() });
    expect(plan.stats).toEqual({ clustersKept: 2, clustersRelocated: 2, bytesRelocated: 8192, zeroClusters: 0, unallocatedClusters: 4 });
    expect(plan.relocations.map((r) => r.reason)).toEqual(['header-region', 'misaligned']);
    expect(plan.mapping[1]).toEqual({ kind: 'data', guestOffset: 4096, length: 8192, hostOffset: 8192 });
  });

  it('turns zero into unallocated for a target without zero extents, unless a backing file shows through', () => {
    const extents: Extent[] = [{ kind: 'zero', guestOffset: 0, length: 8192 }];
    const noBacking = planMapping({ extents, virtualSize: 8192, layout: layout(4096, 0, false), hasBacking: false, space: space() });
    expect(noBacking.mapping).toEqual([{ kind: 'unallocated', guestOffset: 0, length: 8192 }]);
    const withBacking = planMapping({ extents, virtualSize: 8192, layout: layout(4096, 0, false), hasBacking: true, space: space() });
    // One relocation for the whole run: its two clusters get consecutive new places and are written as zeros.
    expect(withBacking.relocations.map((r) => [r.reason, r.length])).toEqual([['zero-fill', 8192]]);
  });

  it('stores the last cluster as zeros for a target that needs a data cluster, only when nothing holds data', () => {
    const needs = { ...layout(4096, 3 * 4096, false), needsDataCluster: true };
    const empty = planMapping({ extents: [{ kind: 'zero', guestOffset: 0, length: 20000 }], virtualSize: 20000, layout: needs, hasBacking: false, space: space() });
    // The last cluster is partial: its 3616 guest bytes get a whole cluster of zeros.
    expect(empty.mapping).toEqual([
      { kind: 'unallocated', guestOffset: 0, length: 16384 },
      { kind: 'data', guestOffset: 16384, length: 3616, hostOffset: 1 << 20 },
    ]);
    expect(empty.relocations.map((r) => [r.reason, r.source.kind, r.guestOffset])).toEqual([['zero-fill', 'zero', 16384]]);
    expect(empty.stats).toEqual({ clustersKept: 0, clustersRelocated: 1, bytesRelocated: 3616, zeroClusters: 0, unallocatedClusters: 4 });
    const withData: Extent[] = [
      { kind: 'data', guestOffset: 0, length: 4096, hostOffset: 16384 },
      { kind: 'unallocated', guestOffset: 4096, length: 12288 },
    ];
    const kept = planMapping({ extents: withData, virtualSize: 16384, layout: needs, hasBacking: false, space: space() });
    expect(kept.relocations).toEqual([]);
    expect(kept.mapping).toEqual([
      { kind: 'data', guestOffset: 0, length: 4096, hostOffset: 16384 },
      { kind: 'unallocated', guestOffset: 4096, length: 12288 },
    ]);
  });

  it('relocates a larger target cluster that mixes data and holes, and refuses to mix in backing content', () => {
    const extents: Extent[] = [
      { kind: 'data', guestOffset: 0, length: 512, hostOffset: 65536 },
      { kind: 'unallocated', guestOffset: 512, length: 3584 },
    ];
    const plan = planMapping({ extents, virtualSize: 4096, layout: layout(4096, 0), hasBacking: false, space: space() });
    expect(plan.relocations).toHaveLength(1);
    expect(plan.relocations[0]!.reason).toBe('mixed-content');
    expect(() => planMapping({ extents, virtualSize: 4096, layout: layout(4096, 0), hasBacking: true, space: space() })).toThrowError(IcError);
  });

  it('keeps a cluster of data and zero-reading holes in place when the source says holes read as zero', () => {
    const extents: Extent[] = [
      { kind: 'zero', guestOffset: 0, length: 8192, hostOffset: 0 },
      { kind: 'zero', guestOffset: 8192, length: 4096 + 1024, hostOffset: 8192 },
      { kind: 'data', guestOffset: 13312, length: 3072, hostOffset: 13312 },
    ];
    const input = { extents, virtualSize: 16384, layout: layout(8192), hasBacking: false, space: space() };
    const kept = planMapping({ ...input, zeroHostRangesReadAsZero: true, zeroAsUnallocated: true });
    expect(kept.mapping).toEqual([
      { kind: 'unallocated', guestOffset: 0, length: 8192 },
      { kind: 'data', guestOffset: 8192, length: 8192, hostOffset: 8192 },
    ]);
    expect(kept.relocations).toEqual([]);
    const moved = planMapping({ ...input, zeroAsUnallocated: true });
    expect(moved.relocations.map((r) => r.reason)).toEqual(['mixed-content']);
  });

  it('with holesAsData keeps the whole clusters of zero-reading holes as data in place, except under the header and where misaligned', () => {
    const extents: Extent[] = [
      // A hole from 0: its first cluster is under the header region and becomes empty, the next two stay.
      { kind: 'zero', guestOffset: 0, length: 3 * 8192, hostOffset: 0 },
      { kind: 'data', guestOffset: 3 * 8192, length: 8192, hostOffset: 3 * 8192 },
      // A hole whose host range is not cluster-aligned (not a raw hole at its own offset): empty.
      { kind: 'zero', guestOffset: 4 * 8192, length: 8192, hostOffset: 4 * 8192 + 512 },
      // A zero run without a host range (a zero cluster, not a hole of the file): empty.
      { kind: 'zero', guestOffset: 5 * 8192, length: 8192 },
      // Two hole pieces that share a cluster and one host run: kept whole.
      { kind: 'zero', guestOffset: 6 * 8192, length: 4096, hostOffset: 6 * 8192 },
      { kind: 'zero', guestOffset: 6 * 8192 + 4096, length: 4096, hostOffset: 6 * 8192 + 4096 },
    ];
    const input = { extents, virtualSize: 7 * 8192, layout: layout(8192), hasBacking: false, space: space(), zeroHostRangesReadAsZero: true, zeroAsUnallocated: true };
    const plan = planMapping({ ...input, holesAsData: true });
    expect(plan.mapping).toEqual([
      { kind: 'unallocated', guestOffset: 0, length: 8192 },
      { kind: 'data', guestOffset: 8192, length: 3 * 8192, hostOffset: 8192 },
      { kind: 'unallocated', guestOffset: 4 * 8192, length: 2 * 8192 },
      { kind: 'data', guestOffset: 6 * 8192, length: 8192, hostOffset: 6 * 8192 },
    ]);
    expect(plan.relocations).toEqual([]);
    expect(plan.stats).toMatchObject({ clustersKept: 4, clustersRelocated: 0, unallocatedClusters: 3 });
    // Without it the holes are empty.
    const plain = planMapping(input);
    expect(plain.mapping.filter((extent) => extent.kind === 'data')).toEqual([{ kind: 'data', guestOffset: 3 * 8192, length: 8192, hostOffset: 3 * 8192 }]);
    // Only where holes read as zeros.
    const unknown = planMapping({ ...input, zeroHostRangesReadAsZero: false, holesAsData: true });
    expect(unknown.mapping.filter((extent) => extent.kind === 'data')).toHaveLength(1);
  });

  it('covers a partial last cluster and long empty runs in one step', () => {
    const extents: Extent[] = [
      { kind: 'unallocated', guestOffset: 0, length: 1 << 30 },
      { kind: 'data', guestOffset: 1 << 30, length: 1000, hostOffset: 1 << 16 },
    ];
    const virtualSize = (1 << 30) + 1000;
    const plan = planMapping({ extents, virtualSize, layout: layout(65536), hasBacking: false, space: space() });
    expect(plan.mapping).toEqual([
      { kind: 'unallocated', guestOffset: 0, length: 1 << 30 },
      { kind: 'data', guestOffset: 1 << 30, length: 1000, hostOffset: 1 << 16 },
    ]);
  });
});

describe('convertInPlace (toy formats)', () => {
  const clusterSize = 4096;
  const content = {
    virtualSize: 64 * clusterSize + 512,
    data: [
      { guestOffset: 0, bytes: bytes(clusterSize * 3, 1) },
      { guestOffset: 20 * clusterSize + 100, bytes: bytes(5000, 2) },
      { guestOffset: 64 * clusterSize, bytes: bytes(512, 3) },
    ],
    zero: [{ guestOffset: 40 * clusterSize, length: 2 * clusterSize }],
    clusterSize,
  };
  const expected = new Uint8Array(content.virtualSize);
  for (const piece of content.data) expected.set(piece.bytes, piece.guestOffset);

  async function sample(): Promise<MemoryIO> {
    const io = new MemoryIO(new Uint8Array(0), 'toy');
    await writeImage(io, toyA, content);
    return io;
  }

  it('converts A -> B -> A, moving only what lies under the larger header, and keeps the content', async () => {
    const io = await sample();
    const mapBefore = await collectExtents((await toyA.open(io)).map());
    const toB = await convertInPlace({ io, source: toyA, target: toyB });
    expect(toB.verified).toBe(true);
    // writeImage put the data right after A's one-cluster header, so B's second header cluster holds one data cluster.
    expect(toB.clustersRelocated).toBe(1);
    expect(toB.commit).toBe('single-sector');
    const imageB = await toyB.open(io);
    expect(await imageB.read(0, content.virtualSize)).toEqual(expected);
    const mapB = await collectExtents(imageB.map());
    // Without a backing file a zero run and an unallocated one read the same: the plan keeps neither's host space.
    expect(mapB.filter((e) => e.kind === 'zero')).toEqual([]);
    expect(mapB.find((e) => e.guestOffset <= 40 * clusterSize && e.guestOffset + e.length >= 42 * clusterSize)?.kind).toBe('unallocated');

    const back = await convertInPlace({ io, source: toyB, target: toyA });
    expect(back.clustersRelocated).toBe(0);
    const imageA = await toyA.open(io);
    expect(await imageA.read(0, content.virtualSize)).toEqual(expected);
    expect((await collectExtents(imageA.map())).filter((e) => e.kind === 'data').length).toBeGreaterThan(0);
    expect(mapBefore.length).toBeGreaterThan(0);
    // the stale parts of the old header region were zeroed
    const region = await io.read(28, clusterSize - 28);
    expect(region.every((b) => b === 0)).toBe(true);
  });

  it('a dry run writes nothing and reports the same plan', async () => {
    const io = await sample();
    const before = io.snapshot();
    const dry = await convertInPlace({ io, source: toyA, target: toyB, dryRun: true, compact: 'never' });
    expect(io.snapshot()).toEqual(before);
    expect(dry.dryRun).toBe(true);
    expect(dry.io.bytesWritten).toBe(0);
    const real = await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    const plan = (report: typeof dry) => ({
      targetClusterSize: report.targetClusterSize,
      geometryReason: report.geometryReason,
      clustersKept: report.clustersKept,
      clustersRelocated: report.clustersRelocated,
      bytesRelocated: report.bytesRelocated,
      zeroClusters: report.zeroClusters,
      unallocatedClusters: report.unallocatedClusters,
      spaceReserved: report.spaceReserved,
    });
    expect(plan(real)).toEqual(plan(dry));
    // The dry run reports the target's estimate: an upper bound of what it writes.
    expect(dry.metadataBytes).toBeGreaterThanOrEqual(real.metadataBytes);
  });

  it('refuses when the source is not its claimed format, leaving the bytes unchanged', async () => {
    const io = await sample();
    const before = io.snapshot();
    const error = await convertInPlace({ io, source: toyB, target: toyA }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('WRONG_FORMAT');
    expect(io.snapshot()).toEqual(before);
  });

  it('refuses a source whose clusters overlap (corrupt), leaving the bytes unchanged', async () => {
    const io = await sample();
    // Point guest cluster 1 at the host cluster of guest cluster 0.
    const image = await toyA.open(io);
    const source = await image.conversionSource!();
    const table = [...(source.metadataRanges() as Iterable<{ offset: number; role?: string }>)].find((r) => r.role === 'table')!;
    const entry0 = await io.read(table.offset, 8);
    await io.write(table.offset + 8, entry0);
    const before = io.snapshot();
    const error = await convertInPlace({ io, source: toyA, target: toyB }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('CORRUPT');
    expect(io.snapshot()).toEqual(before);
  });

  it('rolls back to the source when the result does not verify', async () => {
    const io = await sample();
    const before = io.snapshot();
    // A target whose header claims a different cluster size than it was asked for builds a wrong image.
    const liar = makeToyDriver('liar', 'TOYB', 2);
    const lyingFactory = liar.inPlace!;
    const broken = {
      ...liar,
      inPlace: {
        ...lyingFactory,
        create: (request: Parameters<typeof lyingFactory.create>[0]) => {
          const real = lyingFactory.create(request);
          return {
            ...real,
            build: async (mapping: Parameters<typeof real.build>[0], space: Parameters<typeof real.build>[1], out: Parameters<typeof real.build>[2]) => {
              async function* shifted(): AsyncGenerator<readonly Extent[]> {
                for await (const batch of mapping) yield batch.map((e) => (e.kind === 'data' ? { ...e, hostOffset: e.hostOffset + request.clusterSize } : e));
              }
              return real.build(shifted(), space, out);
            },
          };
        },
      },
    };
    const error = await convertInPlace({ io, source: toyA, target: broken }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('INTERNAL');
    // The source still reads back identically: sector 0 was restored.
    const image = await toyA.open(io);
    expect(await image.read(0, content.virtualSize)).toEqual(expected);
    expect(io.snapshot()).toEqual(before);
  });

  it('chooses the source cluster size when the target allows it, and explains it', async () => {
    const io = await sample();
    const report = await convertInPlace({ io, source: toyA, target: toyB, dryRun: true });
    expect(report.targetClusterSize).toBe(clusterSize);
    expect(report.geometryReason).toMatch(/source's cluster size/);
  });

  it('picks the nearest allowed size that moves the least when the source size is out of range', async () => {
    const io = await sample();
    const bigOnly = makeToyDriver('big', 'TOYC', 1, { min: 16384, max: 65536 });
    const report = await convertInPlace({ io, source: toyA, target: bigOnly });
    expect(report.targetClusterSize).toBe(16384);
    expect(report.clustersRelocated).toBeGreaterThan(0);
    const image = await bigOnly.open(io);
    expect(await image.read(0, content.virtualSize)).toEqual(expected);
  });
});
