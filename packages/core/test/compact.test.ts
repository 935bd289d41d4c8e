import { describe, expect, it } from 'vitest';
import { collectExtents, convertInPlace, MemoryIO, writeImage } from '../src/index.js';
import { makeToyDriver } from './toy-format.js';

/** Byte equality without vitest's element-wise diff (slow on megabytes). */
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

const toyA = makeToyDriver('toya', 'TOYA', 1);
const toyB = makeToyDriver('toyb', 'TOYB', 3);

describe('packing after a conversion (a target that counts unreferenced clusters as leaks)', () => {
  const clusterSize = 4096;
  const content = {
    virtualSize: 600 * clusterSize,
    clusterSize,
    data: [
      { guestOffset: 0, bytes: new Uint8Array(5 * clusterSize).fill(0x41) },
      { guestOffset: 200 * clusterSize + 9, bytes: new Uint8Array(20 * clusterSize).fill(0x42) },
    ],
  };

  it('fills the holes the old metadata leaves and truncates, keeping the content', async () => {
    const io = new MemoryIO(new Uint8Array(0), 'pack');
    await writeImage(io, toyA, content);
    const before = await (await toyA.open(io)).read(0, content.virtualSize);
    const report = await convertInPlace({ io, source: toyA, target: toyB });
    expect(report.compaction?.done).toBe(true);
    expect(report.compaction?.unitsMoved).toBeGreaterThan(0);
    expect(report.compaction?.leaksLeft).toBe(0);
    const image = await toyB.open(io);
    expect(same(await image.read(0, content.virtualSize), before)).toBe(true);
    expect((await image.check!()).leaks).toBe(0);
    // No hole is left: every cluster past the header region is referenced.
    const extents = await collectExtents(image.map());
    const dataClusters = extents.filter((e) => e.kind === 'data').reduce((n, e) => n + Math.ceil(e.length / clusterSize), 0);
    const tableClusters = Math.ceil((600 * 8) / clusterSize);
    expect(await io.size()).toBe(3 * clusterSize + (dataClusters + tableClusters) * clusterSize);
  });

  it('with packing off, leaves the leaks and says so', async () => {
    const io = new MemoryIO(new Uint8Array(0), 'no-pack');
    await writeImage(io, toyA, content);
    const report = await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    expect(report.compaction?.done).toBe(false);
    expect(report.compaction?.leaksLeft).toBeGreaterThan(0);
    expect(report.compaction?.reason).toMatch(/turned off/);
    expect((await (await toyB.open(io)).check!()).leaks).toBe(report.compaction?.leaksLeft);
  });
});

describe('packing, property: any layout a conversion leaves packs to a leak-free, identical image', () => {
  it('random data placements, cluster sizes and table sizes', async () => {
    const fc = (await import('fast-check')).default;
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          clusterSize: fc.constantFrom(512, 1024, 4096),
          clusters: fc.integer({ min: 8, max: 700 }),
          data: fc.uniqueArray(fc.integer({ min: 0, max: 699 }), { maxLength: 60 }),
          reverse: fc.boolean(),
          headerB: fc.integer({ min: 1, max: 4 }),
        }),
        async ({ clusterSize, clusters, data, reverse, headerB }) => {
          const source = makeToyDriver('toya', 'TOYA', 1);
          const target = makeToyDriver('toyb', 'TOYB', headerB);
          const virtualSize = clusters * clusterSize;
          const pieces = data.filter((c) => c < clusters).map((c) => ({ guestOffset: c * clusterSize, bytes: new Uint8Array(clusterSize).fill((c % 250) + 1) }));
          const io = new MemoryIO(new Uint8Array(0), 'prop');
          await writeImage(io, source, { virtualSize, clusterSize, data: pieces, hostOrder: reverse ? 'reverse' : 'guest' });
          const before = await (await source.open(io)).read(0, virtualSize);
          const report = await convertInPlace({ io, source, target, compact: 'always' });
          const image = await target.open(io);
          expect(same(await image.read(0, virtualSize), before)).toBe(true);
          expect(report.compaction === undefined || report.compaction.done, report.compaction?.reason).toBe(true);
          expect((await image.check!()).leaks).toBe(0);
          // And back: the other direction packs too.
          const back = await convertInPlace({ io, source: target, target: source, compact: 'always' });
          expect(back.compaction === undefined || back.compaction.done, back.compaction?.reason).toBe(true);
          expect(same(await (await source.open(io)).read(0, virtualSize), before)).toBe(true);
          expect((await (await source.open(io)).check!()).leaks).toBe(0);
        },
      ),
      { numRuns: Number(process.env.IC_PACK_RUNS ?? 150), seed: Number(process.env.IC_PACK_SEED ?? 7) },
    );
  }, 120_000);
});
