import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, CountingIO, IcError, isIcError, MemoryIO, type BlockIO } from '@ic/core';
import {
  DISK_TYPE_DIFFERENCING,
  DISK_TYPE_DYNAMIC,
  DISK_TYPE_FIXED,
  FIXED_FOOTER_SCORE,
  MAX_CHS,
  parseFooter,
  serializeDynamicHeader,
  serializeFooter,
  sizedGeometry,
  vhdChecksum,
  vpcDriver,
  type VhdFooter,
} from '../src/index.js';

const MiB = 1024 ** 2;

function footer(fields: Partial<VhdFooter> & { virtualSize?: number } = {}): Uint8Array {
  const wanted = fields.virtualSize ?? 16 * MiB;
  // Sizes qemu would refuse are written as current_size with the maximum geometry.
  const sized = wanted <= 2040 * 1024 ** 3 ? sizedGeometry(wanted, true) : { ...MAX_CHS, virtualSize: wanted, creatorApp: 'qem2' };
  return serializeFooter({
    features: 2,
    version: 0x10000,
    dataOffset: 512n,
    timestamp: 0,
    creatorApp: sized.creatorApp,
    creatorVersion: 0x50003,
    creatorOs: 'Wi2k',
    originalSize: BigInt(sized.virtualSize),
    currentSize: BigInt(sized.virtualSize),
    cylinders: sized.cylinders,
    heads: sized.heads,
    sectorsPerTrack: sized.sectorsPerTrack,
    diskType: DISK_TYPE_DYNAMIC,
    uniqueId: new Uint8Array(16),
    savedState: 0,
    ...fields,
  });
}

function u32be(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, false);
  return bytes;
}

/** A sparse in-memory file of `size` bytes holding `pieces`, reads counted, writes refused. */
function file(size: number, pieces: [number, Uint8Array][]): { memory: MemoryIO; io: CountingIO } {
  const memory = new MemoryIO(new Uint8Array(0), 'hostile');
  for (const [offset, bytes] of pieces) void memory.write(offset, bytes);
  void memory.truncate(size);
  const io = new CountingIO(memory);
  io.write = async () => {
    throw new IcError('IO', 'hostile test file is read-only');
  };
  io.truncate = async () => {
    throw new IcError('IO', 'hostile test file is read-only');
  };
  return { memory, io };
}

/** A dynamic 16 MiB disk: dynamic header at 512, BAT (8 entries) at 1536, blocks from 2048 as `bat` says. */
function dynamicDisk(bat: number[], options: { blockSize?: number; entries?: number; tableOffset?: number; fileSize?: number } = {}) {
  const entries = options.entries ?? 8;
  const table = new Uint8Array(Math.ceil((Math.min(entries, 1024) * 4) / 512) * 512).fill(0xff);
  bat.forEach((entry, i) => table.set(u32be(entry), i * 4));
  return file(options.fileSize ?? 2048 + 8 * (2 * MiB + 512) + 512, [
    [0, footer()],
    [512, serializeDynamicHeader({ tableOffset: options.tableOffset ?? 1536, maxTableEntries: entries, blockSize: options.blockSize ?? 2 * MiB })],
    [options.tableOffset ?? 1536, table],
  ]);
}

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
  const image = await attempt(() => vpcDriver.open(io));
  if (!image) return codes;
  const virtualSize = image.info().virtualSize;
  const extents = await attempt(() => collectExtents(image.map()));
  if (extents) assertCoverage(extents, virtualSize);
  await attempt(() => image.read(0, Math.min(virtualSize, 8192)));
  const source = await attempt(() => image.conversionSource!());
  if (source) await attempt(async () => { for await (const _ of source.metadataRanges() as AsyncIterable<unknown>) void _; });
  return codes;
}

describe('hostile VHD input: typed errors, bounded work, nothing written', () => {
  it('probe: the cookie at 0 scores 100; a whole fixed footer at the end 50; anything else 0', () => {
    const fixed = footer({ diskType: DISK_TYPE_FIXED, dataOffset: 0xffff_ffff_ffff_ffffn });
    const size = 16 * MiB + 512;
    expect(vpcDriver.probe(footer(), size)).toBe(100);
    expect(vpcDriver.probe(new Uint8Array(512), size, fixed)).toBe(FIXED_FOOTER_SCORE);
    const badSum = fixed.slice();
    badSum[100] = 1;
    expect(vpcDriver.probe(new Uint8Array(512), size, badSum)).toBe(0);
    // A footer whose disk would not fit before it, or one of a dynamic disk, at the end: not a fixed disk.
    expect(vpcDriver.probe(new Uint8Array(512), 8 * MiB, fixed)).toBe(0);
    expect(vpcDriver.probe(new Uint8Array(512), size, footer())).toBe(0);
  });

  it("qemu's footer and header checks, with qemu's reasons", async () => {
    const bad = footer().slice();
    bad[67] = bad[67]! ^ 1;
    await expect(vpcDriver.open(file(MiB, [[0, bad]]).io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/Incorrect header checksum/) });
    await expect(vpcDriver.open(dynamicDisk([], { blockSize: 3000 }).io)).rejects.toMatchObject({ message: expect.stringMatching(/Invalid block size 3000/) });
    await expect(vpcDriver.open(dynamicDisk([], { entries: 7 }).io)).rejects.toMatchObject({ message: expect.stringMatching(/Page table too small/) });
    await expect(vpcDriver.open(dynamicDisk([], { entries: 0x20000000, fileSize: 8192 }).io)).rejects.toMatchObject({ message: expect.stringMatching(/Max Table Entries too large/) });
    await expect(vpcDriver.open(file(MiB, [[0, footer()], [512, new Uint8Array(1024)]]).io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/Invalid header magic/) });
    await expect(vpcDriver.open(file(MiB, [[0, footer({ dataOffset: 2n ** 60n })]]).io)).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(vpcDriver.open(file(MiB, [[0, footer({ virtualSize: 2041 * 1024 ** 3 })]]).io)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/2040 GiB/) });
    await expect(vpcDriver.open(file(100, []).io)).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(vpcDriver.open(file(MiB, []).io)).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
  });

  it('a differencing disk is refused in one line naming its parent; so is a fixed-type footer at offset 0', async () => {
    const header = serializeDynamicHeader({ tableOffset: 1536, maxTableEntries: 8, blockSize: 2 * MiB });
    const name = 'parent.vhd';
    for (let i = 0; i < name.length; i++) header.set([0, name.charCodeAt(i)], 64 + 2 * i);
    header.set(u32be(vhdChecksum(header, 36)), 36);
    const diff = file(MiB, [[0, footer({ diskType: DISK_TYPE_DIFFERENCING })], [512, header]]);
    await expect(vpcDriver.open(diff.io)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/differencing.*"parent\.vhd"/) });
    await expect(vpcDriver.open(file(MiB, [[0, footer({ diskType: DISK_TYPE_FIXED })]]).io)).rejects.toMatchObject({ code: 'CORRUPT' });
  });

  it("truncation: a BAT or a block past the end of the file is refused (qemu: free_data_block_offset)", async () => {
    await expect(vpcDriver.open(dynamicDisk([], { tableOffset: 4 * MiB, fileSize: 4 * MiB }).io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
    await expect(vpcDriver.open(dynamicDisk([4], { fileSize: 2 * MiB }).io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
  });

  it('a block over the BAT or the headers is CORRUPT on read, map and conversion', async () => {
    const { io } = dynamicDisk([3, 1]);
    const image = await vpcDriver.open(io);
    await expect(image.read(0, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/overlaps the BAT|overlaps the dynamic/) });
    await expect(collectExtents(image.map())).rejects.toMatchObject({ code: 'CORRUPT' });
  });

  it('a fixed disk whose data would run into its footer is refused', async () => {
    const fixed = footer({ diskType: DISK_TYPE_FIXED, dataOffset: 0xffff_ffff_ffff_ffffn, virtualSize: 32 * MiB });
    await expect(vpcDriver.open(file(16 * MiB + 512, [[16 * MiB, fixed]]).io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
    expect(parseFooter(fixed).diskType).toBe(DISK_TYPE_FIXED);
  });

  it('a 2040 GiB dynamic disk with an empty 4 MiB BAT: map streams, memory stays bounded', async () => {
    const size = 2040 * 1024 ** 3;
    const entries = size / (2 * MiB);
    const { io } = file(1536 + entries * 4 + 512, [
      [0, footer({ virtualSize: size })],
      [512, serializeDynamicHeader({ tableOffset: 1536, maxTableEntries: entries, blockSize: 2 * MiB })],
      [1536, new Uint8Array(entries * 4).fill(0xff)],
    ]);
    const image = await vpcDriver.open(io);
    const before = process.memoryUsage().rss;
    expect(await collectExtents(image.map())).toEqual([{ kind: 'zero', guestOffset: 0, length: size }]);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * MiB);
  });

  it('property: arbitrary footers, headers and BATs give an image or a typed error, and nothing is written', async () => {
    const boundary32 = fc.constantFrom(0, 1, 4, 8, 512, 4096, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff);
    const mostly = <T>(sane: fc.Arbitrary<T>, hostile: fc.Arbitrary<T>) => fc.oneof({ arbitrary: sane, weight: 5 }, { arbitrary: hostile, weight: 1 });
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          diskType: mostly(fc.constant(DISK_TYPE_DYNAMIC), fc.constantFrom(0, 2, 4, 5)),
          virtualSize: mostly(fc.integer({ min: 0, max: 8 }).map((mib) => mib * MiB + (mib % 2) * 512), fc.constantFrom(2 ** 40, 2 ** 52)),
          creatorApp: fc.constantFrom('qemu', 'qem2', 'win ', 'vpc '),
          dataOffset: mostly(fc.constant(512n), fc.constantFrom(0n, 1n, 1536n, 2n ** 63n)),
          tableOffset: mostly(fc.constant(1536), boundary32),
          maxTableEntries: mostly(fc.integer({ min: 0, max: 10 }), boundary32),
          blockSize: mostly(fc.constantFrom(MiB, 2 * MiB, 4096, 512), boundary32),
          bat: fc.array(mostly(fc.integer({ min: 4, max: 40000 }), boundary32), { maxLength: 10 }),
          fileSize: fc.integer({ min: 0, max: 24 * MiB }),
        }),
        async (input) => {
          const table = new Uint8Array(512).fill(0xff);
          input.bat.forEach((entry, i) => table.set(u32be(entry), i * 4));
          const { memory, io } = file(input.fileSize, [
            [0, footer({ diskType: input.diskType, virtualSize: input.virtualSize, creatorApp: input.creatorApp, dataOffset: input.dataOffset })],
            [512, serializeDynamicHeader({ tableOffset: input.tableOffset, maxTableEntries: input.maxTableEntries, blockSize: input.blockSize })],
            [1536, table],
          ]);
          const pristine = memory.snapshot();
          const codes = await exercise(io);
          for (const code of codes) expect(['WRONG_FORMAT', 'CORRUPT', 'UNSUPPORTED', 'LIMIT', 'OUT_OF_BOUNDS']).toContain(code);
          expect(Buffer.from(memory.snapshot()).equals(Buffer.from(pristine))).toBe(true);
        },
      ),
      { numRuns: Number(process.env.IC_FUZZ_RUNS ?? 200) },
    );
  });
});
