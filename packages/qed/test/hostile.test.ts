import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, convertInPlace, IcError, isIcError, MemoryIO, type BlockIO } from '@ic/core';
import { HEADER_FIELDS, qedDriver, serializeHeader, type QedHeader } from '../src/index.js';

const KiB = 1024;
const MiB = 1024 ** 2;

/**
 * A read-only file that claims any size and reads zeros except where bytes were placed: a sparse file an
 * attacker can make for free. Counts what is read, and refuses writes.
 */
class SparseIO implements BlockIO {
  readonly name = 'sparse';
  readonly writable = false;
  bytesRead = 0;
  private readonly pieces: { offset: number; bytes: Uint8Array }[] = [];
  constructor(private readonly length: number) {}
  place(offset: number, bytes: Uint8Array): this {
    this.pieces.push({ offset, bytes });
    return this;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.bytesRead += length;
    const out = new Uint8Array(length);
    for (const piece of this.pieces) {
      const from = Math.max(offset, piece.offset);
      const to = Math.min(offset + length, piece.offset + piece.bytes.length);
      if (to > from) out.set(piece.bytes.subarray(from - piece.offset, to - piece.offset), from - offset);
    }
    return out;
  }
  async write(): Promise<void> {
    throw new IcError('IO', 'sparse test file is read-only');
  }
  async size(): Promise<number> {
    return this.length;
  }
  async truncate(): Promise<void> {
    throw new IcError('IO', 'sparse test file is read-only');
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}

function header(fields: Partial<QedHeader>): Uint8Array {
  return serializeHeader({
    clusterSize: 4096,
    tableSize: 4,
    headerSize: 1,
    features: 0n,
    compatFeatures: 0n,
    autoclearFeatures: 0n,
    l1TableOffset: 4096,
    imageSize: 64 * MiB,
    backingFilenameOffset: 0,
    backingFilenameSize: 0,
    ...fields,
  });
}

function u64(value: number | bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  return bytes;
}

/**
 * Runs every read-side operation; returns the error codes seen (an exception that is not an IcError fails the
 * test) and checks that the operations agree with each other when they succeed.
 */
async function exercise(io: BlockIO): Promise<string[]> {
  const codes: string[] = [];
  const attempt = async <T>(step: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await step();
    } catch (error) {
      if (!isIcError(error)) throw error;
      codes.push(error.code);
      return undefined;
    }
  };
  const image = await attempt(() => qedDriver.open(io));
  if (!image) return codes;
  const virtualSize = image.info().virtualSize;
  const extents = await attempt(() => collectExtents(image.map()));
  if (extents) assertCoverage(extents, virtualSize);
  await attempt(() => image.read(0, Math.min(virtualSize, 8192)));
  const report = await attempt(() => image.check!());
  // A (dry-run) conversion refuses exactly the images check() finds corrupt; a blocker (need-check) refuses alone.
  const before = codes.length;
  const dry = await attempt(() => convertInPlace({ io, source: qedDriver, target: qedDriver, dryRun: true }));
  const blocked = codes.length > before && codes[codes.length - 1] === 'UNSUPPORTED';
  if (report && !blocked) expect(dry !== undefined, `check: ${report.messages[0]}; conversion: ${codes.join(',')}`).toBe(report.corruptions === 0);
  return codes;
}

describe('hostile QED input: typed errors, bounded work, nothing written', () => {
  it('a file shorter than the magic is not QED; a truncated header is CORRUPT', async () => {
    await expect(qedDriver.open(new MemoryIO(new Uint8Array([0x51, 0x45])))).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(qedDriver.open(new MemoryIO(new Uint8Array(0)))).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(qedDriver.open(new MemoryIO(header({}).subarray(0, 40)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
  });

  it('a 64 MiB cluster / table_size 16 geometry in a tiny file is refused before any table is read', async () => {
    const io = new SparseIO(64 * KiB).place(0, header({ clusterSize: 64 * MiB, tableSize: 16, l1TableOffset: 64 * MiB }));
    await expect(qedDriver.open(io)).rejects.toMatchObject({ code: 'CORRUPT' });
    expect(io.bytesRead).toBeLessThanOrEqual(64);
  });

  it('a sparse 2^50-byte file with a 1 GiB L1 of zeros: map reads 8 bytes of L1, check streams it in bounded chunks', async () => {
    const cluster = 64 * MiB;
    const io = new SparseIO(2 ** 50).place(0, header({ clusterSize: cluster, tableSize: 16, l1TableOffset: cluster, imageSize: 2 ** 50 }));
    const image = await qedDriver.open(io);
    expect(await collectExtents(image.map())).toEqual([{ kind: 'unallocated', guestOffset: 0, length: 2 ** 50 }]);
    expect(io.bytesRead).toBeLessThan(KiB);
    const before = process.memoryUsage().rss;
    const report = await image.check!();
    // Every cluster between the header and the sparse EOF is "leaked"; counted, not enumerated.
    expect(report.leaks).toBe(2 ** 50 / cluster - 1 - 16);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * MiB);
  });

  it('every L1 entry naming the same L2 table: one corruption per overlapping cluster, tables read once', async () => {
    const l1 = new Uint8Array(16 * KiB);
    for (let i = 0; i < 2048; i++) l1.set(u64(5 * 4096), i * 8);
    const io = new SparseIO(9 * 4096).place(0, header({ imageSize: 16 * 1024 ** 3 })).place(4096, l1);
    const image = await qedDriver.open(io);
    const report = await image.check!();
    expect(report.corruptions).toBe(2047 * 4);
    expect(report.messages.length).toBeLessThanOrEqual(202);
    await expect(convertInPlace({ io, source: qedDriver, target: qedDriver, dryRun: true })).rejects.toMatchObject({ code: 'CORRUPT' });
    // map() follows each (valid) L1 entry; the table is small, so this stays quick.
    const extents = await collectExtents(image.map());
    expect(extents).toEqual([{ kind: 'unallocated', guestOffset: 0, length: 16 * 1024 ** 3 }]);
  });

  it('an L2 table full of references to one data cluster: corruptions counted, messages capped', async () => {
    const l2 = new Uint8Array(16 * KiB);
    for (let i = 0; i < 2048; i++) l2.set(u64(9 * 4096), i * 8);
    const io = new SparseIO(10 * 4096)
      .place(0, header({}))
      .place(4096, u64(5 * 4096))
      .place(5 * 4096, l2);
    const image = await qedDriver.open(io);
    const report = await image.check!();
    expect(report.corruptions).toBe(2047);
    expect(report.messages.length).toBeLessThanOrEqual(202);
  });

  it('entries with high bits set (past 2^53) are CORRUPT, never a RangeError', async () => {
    const io = new SparseIO(10 * 4096)
      .place(0, header({}))
      .place(4096, u64(0xffff_ffff_ffff_f000n))
      .place(4096 + 8, u64(5 * 4096))
      .place(5 * 4096 + 8, u64(1n << 62n));
    const image = await qedDriver.open(io);
    await expect(image.read(0, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/0xfffffffffffff000/) });
    await expect(image.read(8 * MiB + 4096, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/0x4000000000000000/) });
    const report = await image.check!();
    expect(report.corruptions).toBe(2);
  });

  it('reads outside the disk are OUT_OF_BOUNDS', async () => {
    const image = await qedDriver.open(new SparseIO(5 * 4096).place(0, header({})));
    await expect(image.read(64 * MiB - 10, 11)).rejects.toMatchObject({ code: 'OUT_OF_BOUNDS' });
    await expect(image.read(-1, 1)).rejects.toMatchObject({ code: 'OUT_OF_BOUNDS' });
  });

  it('property: arbitrary headers and table bytes give an image or a typed error, and nothing is written', async () => {
    const boundary32 = fc.constantFrom(0, 1, 512, 4096, 8192, 65536, 0x7fffffff, 0x80000000, 0xffffffff);
    const boundary64 = fc.oneof(
      fc.constantFrom(0n, 1n, 4096n, 8192n, 12288n, 65536n, 2n ** 31n, 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    );
    /** Mostly plausible values (so that many images open and their tables get walked), sometimes hostile ones. */
    const mostly = <T>(sane: fc.Arbitrary<T>, hostile: fc.Arbitrary<T>) => fc.oneof({ arbitrary: sane, weight: 5 }, { arbitrary: hostile, weight: 1 });
    const clusterOffset = fc.integer({ min: 0, max: 12 }).map((cluster) => BigInt(cluster * 4096));
    const entry = fc.oneof({ arbitrary: fc.constantFrom(0n, 1n), weight: 2 }, { arbitrary: clusterOffset, weight: 4 }, { arbitrary: boundary64, weight: 1 });
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          clusterSize: mostly(fc.constant(4096), boundary32),
          tableSize: mostly(fc.constantFrom(1, 2), fc.constantFrom(0, 3, 4, 16, 17, 0xffffffff)),
          headerSize: mostly(fc.constant(1), fc.constantFrom(0, 2, 0xffffffff)),
          features: mostly(fc.constantFrom(0n, 2n), fc.oneof(fc.constantFrom(1n, 3n, 5n, 7n, 8n), boundary64)),
          l1TableOffset: mostly(fc.constantFrom(4096n, 8192n), boundary64),
          imageSize: mostly(fc.integer({ min: 0, max: 2 ** 15 }).map((sectors) => BigInt(sectors * 512)), boundary64),
          backingFilenameOffset: mostly(fc.constant(64), boundary32),
          backingFilenameSize: mostly(fc.integer({ min: 0, max: 100 }), boundary32),
          entries: fc.array(fc.tuple(fc.integer({ min: 0, max: 8 * 512 - 1 }), entry), { maxLength: 60 }),
          fileSize: mostly(fc.integer({ min: 4, max: 13 }).map((clusters) => clusters * 4096), fc.integer({ min: 0, max: 13 * 4096 })),
        }),
        async (input) => {
          const file = new Uint8Array(input.fileSize);
          const fixed = new Uint8Array(64);
          const view = new DataView(fixed.buffer);
          fixed.set([0x51, 0x45, 0x44, 0x00]);
          view.setUint32(HEADER_FIELDS.clusterSize.offset, input.clusterSize, true);
          view.setUint32(HEADER_FIELDS.tableSize.offset, input.tableSize, true);
          view.setUint32(HEADER_FIELDS.headerSize.offset, input.headerSize, true);
          view.setBigUint64(HEADER_FIELDS.features.offset, input.features, true);
          view.setBigUint64(HEADER_FIELDS.l1TableOffset.offset, input.l1TableOffset, true);
          view.setBigUint64(HEADER_FIELDS.imageSize.offset, input.imageSize, true);
          view.setUint32(HEADER_FIELDS.backingFilenameOffset.offset, input.backingFilenameOffset, true);
          view.setUint32(HEADER_FIELDS.backingFilenameSize.offset, input.backingFilenameSize, true);
          file.set(fixed.subarray(0, Math.min(64, file.length)));
          if (file.length >= 64 + 100) file.set(new TextEncoder().encode('backing.img'.padEnd(100, '!')), 64);
          // Table entries scattered over the clusters after the header (L1 and L2 candidates).
          const fileView = new DataView(file.buffer);
          for (const [slot, value] of input.entries) {
            const at = 4096 + slot * 8;
            if (at + 8 <= file.length) fileView.setBigUint64(at, value, true);
          }
          const io = new MemoryIO(file, 'fuzz', { writable: false });
          const codes = await exercise(io);
          for (const code of codes) expect(['WRONG_FORMAT', 'CORRUPT', 'UNSUPPORTED', 'LIMIT', 'OUT_OF_BOUNDS']).toContain(code);
          expect(Buffer.from(io.snapshot()).equals(Buffer.from(file))).toBe(true);
        },
      ),
      { numRuns: Number(process.env.IC_FUZZ_RUNS ?? 300) },
    );
  });
});
