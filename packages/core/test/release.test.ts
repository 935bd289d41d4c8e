/**
 * The release step (engine/release.ts) on toy formats: what the committed image references is never punched,
 * what it does not reference is, the cut never goes below the end the target asked for, and a store that cannot
 * or will not punch (or fails) leaves the image as it was with a report that says so.
 */
import { describe, expect, it } from 'vitest';
import { collectExtents, convertInPlace, IcError, MemoryIO, RELEASE_GRANULE, releaseUnreferenced, writeImage, type BlockIO, type Driver } from '../src/index.js';
import { makeToyDriver } from './toy-format.js';

const toyA = makeToyDriver('toya', 'TOYA', 1);
const toyB = makeToyDriver('toyb', 'TOYB', 2); // a larger header region: cluster 1 of A must move
const C = 4096;

function bytes(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => ((i * 31 + seed * 17) % 251) + 1);
}

const content = {
  virtualSize: 64 * C,
  data: [
    { guestOffset: 0, bytes: bytes(C * 3, 1) },
    { guestOffset: 20 * C, bytes: bytes(2 * C, 2) },
  ],
  zero: [],
  clusterSize: C,
};
const expected = new Uint8Array(content.virtualSize);
for (const piece of content.data) expected.set(piece.bytes, piece.guestOffset);

/** A memory store whose punches zero the range inside the file (the size kept), listed in order. */
class PunchingIO extends MemoryIO {
  readonly punches: [number, number][] = [];
  constructor(
    initial: Uint8Array,
    private readonly answer: 'punch' | 'refuse' | 'fail' = 'punch',
  ) {
    super(initial, 'punching');
  }
  async punchHole(offset: number, length: number): Promise<boolean> {
    if (this.answer === 'fail') throw new IcError('IO', 'punching: EIO');
    if (this.answer === 'refuse') return false;
    this.punches.push([offset, length]);
    const end = Math.min(offset + length, await this.size());
    if (end > offset) await this.write(offset, new Uint8Array(end - offset));
    return true;
  }
}

async function toyImage(): Promise<Uint8Array> {
  const io = new MemoryIO(new Uint8Array(0), 'toy');
  await writeImage(io, toyA, content);
  return io.snapshot();
}

/** Every byte range the committed image references: header region, its metadata ranges, its data. */
async function referencedRanges(driver: Driver, io: BlockIO, headerRegionSize: number): Promise<[number, number][]> {
  const image = await driver.open(io);
  const source = await image.conversionSource!();
  const ranges: [number, number][] = [[0, headerRegionSize]];
  for (const range of source.metadataRanges() as Iterable<{ offset: number; length: number }>) ranges.push([range.offset, range.offset + range.length]);
  for (const extent of await collectExtents(image.map())) if (extent.kind === 'data') ranges.push([extent.hostOffset, extent.hostOffset + extent.length]);
  return ranges;
}

describe('release after the commit', () => {
  it('punches the old places (whole granules), never a referenced byte; the image reads the same and checks clean of corruption', async () => {
    const start = await toyImage();
    const oldTable = Number(new DataView(start.buffer).getBigUint64(16, true));
    const io = new PunchingIO(start);
    const report = await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    // Cluster 1 of A moves out of B's header region (which keeps its old place); A's table is left behind.
    expect(report.clustersRelocated).toBe(1);
    const release = report.release!;
    expect(release.estimated).toBe(false);
    expect(release.bytesLeft).toBe(0);
    expect(io.punches).toEqual([[oldTable, C]]);
    expect(release.bytesPunched).toBe(C);
    expect(release.bytesReleased).toBe(release.bytesPunched + release.bytesTruncated);
    const referenced = await referencedRanges(toyB, io, 2 * C);
    for (const [offset, length] of io.punches) {
      expect(offset % RELEASE_GRANULE).toBe(0);
      expect(length % RELEASE_GRANULE).toBe(0);
      for (const [start, end] of referenced) expect(offset + length <= start || offset >= end, `punch ${offset}+${length} over [${start}, ${end})`).toBe(true);
    }
    const image = await toyB.open(io);
    expect(await image.read(0, content.virtualSize)).toEqual(expected);
    expect((await image.check!()).corruptions).toBe(0);
  });

  it('leaves the file as release: false does when the store has no punchHole, and says so', async () => {
    const start = await toyImage();
    const off = new MemoryIO(start.slice(), 'off');
    const without = new MemoryIO(start.slice(), 'without');
    expect((await convertInPlace({ io: off, source: toyA, target: toyB, compact: 'never', release: false })).release).toBeUndefined();
    const release = (await convertInPlace({ io: without, source: toyA, target: toyB, compact: 'never' })).release!;
    expect(without.snapshot()).toEqual(off.snapshot());
    expect([release.bytesReleased, release.bytesPunched, release.bytesTruncated]).toEqual([0, 0, 0]);
    expect(release.bytesLeft).toBe(C);
    expect(release.reason).toMatch(/cannot punch holes/);
  });

  it('a store that refuses to punch or fails changes nothing and the conversion stands', async () => {
    const start = await toyImage();
    const off = new MemoryIO(start.slice(), 'off');
    await convertInPlace({ io: off, source: toyA, target: toyB, compact: 'never', release: false });
    for (const answer of ['refuse', 'fail'] as const) {
      const io = new PunchingIO(start.slice(), answer);
      const report = await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
      expect(report.verified).toBe(true);
      expect(io.snapshot()).toEqual(off.snapshot());
      expect(report.release!.bytesPunched).toBe(0);
      expect(report.release!.reason).toMatch(answer === 'refuse' ? /cannot punch holes here/ : /I\/O error.*EIO/);
    }
  });

  it('releases nothing, and says why, when the committed image cannot be described or uses a blocker', async () => {
    const io = new PunchingIO(await toyImage());
    await convertInPlace({ io, source: toyA, target: toyB, compact: 'never', release: false });
    const before = io.snapshot();
    const failing: Driver = {
      ...toyB,
      open: async (store) => ({ ...(await toyB.open(store)), conversionSource: async () => Promise.reject(new IcError('CORRUPT', 'toyb: table unreadable')) }),
    };
    const blocked: Driver = {
      ...toyB,
      open: async (store) => {
        const image = await toyB.open(store);
        return { ...image, conversionSource: async () => ({ ...(await image.conversionSource!()), blockers: [{ feature: 'snapshots', reason: 'kept elsewhere' }] }) };
      },
    };
    const options = { header: { offset: 0, length: 2 * C }, clusterSize: C, targetEnd: await io.size() };
    const failed = await releaseUnreferenced(io, { driver: failing, ...options });
    expect(failed.reason).toMatch(/could not be described.*table unreadable/);
    const refused = await releaseUnreferenced(io, { driver: blocked, ...options });
    expect(refused.reason).toMatch(/uses snapshots/);
    for (const report of [failed, refused]) expect([report.bytesReleased, report.bytesLeft]).toEqual([0, 0]);
    expect(io.punches).toEqual([]);
    expect(io.snapshot()).toEqual(before);
  });

  it('cuts an unreferenced tail, but never below the end the target asked for', async () => {
    const io = new PunchingIO(await toyImage());
    await convertInPlace({ io, source: toyA, target: toyB, compact: 'never' });
    const end = await io.size();
    // Unreferenced bytes past the image's end (a file longer than its target asked for).
    await io.write(end + 3 * C, bytes(C, 9));
    const keep = await releaseUnreferenced(io, { driver: toyB, header: { offset: 0, length: 2 * C }, clusterSize: C, targetEnd: end + 2 * C });
    expect(await io.size()).toBe(end + 2 * C);
    expect(keep.bytesTruncated).toBeGreaterThanOrEqual(C);
    const cut = await releaseUnreferenced(io, { driver: toyB, header: { offset: 0, length: 2 * C }, clusterSize: C, targetEnd: end });
    expect(await io.size()).toBe(end);
    expect(cut.bytesTruncated).toBeLessThanOrEqual(2 * C);
    expect(await (await toyB.open(io)).read(0, content.virtualSize)).toEqual(expected);
  });
});
