import { describe, expect, it } from 'vitest';
import { collectExtents, compactImage, convertInPlace, MemoryIO, writeImage } from '../src/index.js';
import { makeToyDriver } from './toy-format.js';

const toyA = makeToyDriver('toya', 'TOYA', 1);
const toyB = makeToyDriver('toyb', 'TOYB', 3);

describe('compactImage', () => {
  it('fills the holes an in-place conversion leaves and truncates, keeping the content', async () => {
    const clusterSize = 4096;
    const content = {
      virtualSize: 600 * clusterSize,
      clusterSize,
      data: [
        { guestOffset: 0, bytes: new Uint8Array(5 * clusterSize).fill(0x41) },
        { guestOffset: 200 * clusterSize + 9, bytes: new Uint8Array(20 * clusterSize).fill(0x42) },
      ],
    };
    const io = new MemoryIO(new Uint8Array(0), 'compact');
    await writeImage(io, toyA, content);
    await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    const before = await (await toyB.open(io)).read(0, content.virtualSize);
    const sizeBefore = await io.size();
    const report = await compactImage(io, toyB);
    expect(report.unitsMoved).toBeGreaterThan(0);
    expect(report.fileSizeAfter).toBeLessThan(sizeBefore);
    const image = await toyB.open(io);
    expect(await image.read(0, content.virtualSize)).toEqual(before);
    // No hole is left: every cluster past the header region is referenced.
    const extents = await collectExtents(image.map());
    const dataClusters = extents.filter((e) => e.kind === 'data').reduce((n, e) => n + Math.ceil(e.length / clusterSize), 0);
    const tableClusters = Math.ceil((600 * 8) / clusterSize);
    expect(await io.size()).toBe(3 * clusterSize + (dataClusters + tableClusters) * clusterSize);
    // Compacting again finds nothing to do.
    expect((await compactImage(io, toyB)).unitsMoved).toBe(0);
  });

  it('moves nothing when the plan costs more than allowed', async () => {
    const clusterSize = 4096;
    const io = new MemoryIO(new Uint8Array(0), 'budget');
    await writeImage(io, toyA, { virtualSize: 64 * clusterSize, clusterSize, data: [{ guestOffset: 0, bytes: new Uint8Array(8 * clusterSize).fill(9) }] });
    await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    const before = io.snapshot();
    const report = await compactImage(io, toyB, { maxBytes: 0 });
    expect(report.done).toBe(false);
    expect(report.bytesPlanned).toBeGreaterThan(0);
    expect(io.snapshot()).toEqual(before);
  });
});
