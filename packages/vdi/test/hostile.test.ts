import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, convertInPlace, CountingIO, DRIVER_API_VERSION, IcError, isIcError, MemoryIO, type BlockIO, type Driver } from '@ic/core';
import { BLOCK_SIZE, HEADER_FIELDS, MAX_BLOCKS_IN_IMAGE, newHeader, serializeHeader, vdiDriver, type VdiHeader } from '../src/index.js';

const MiB = 1024 ** 2;
const f = HEADER_FIELDS;

/**
 * A stand-in in-place target that accepts data anywhere at 512-byte alignment: enough for a dry run, whose survey
 * is where the engine refuses sources whose ranges overlap. It never builds.
 */
const surveyOnlyTarget: Driver = {
  name: 'surveyonly',
  description: 'test double: an in-place target for dry runs',
  version: '0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { inPlaceTarget: true },
  probe: () => 0,
  open: async () => {
    throw new IcError('UNSUPPORTED', 'surveyonly opens nothing');
  },
  inPlace: {
    clusterSizes: { min: BLOCK_SIZE, max: BLOCK_SIZE },
    create: () => ({
      layout: { clusterSize: BLOCK_SIZE, hostAlignment: 512, headerRegionSize: 512, maxHostOffset: Number.MAX_SAFE_INTEGER, zeroExtents: false },
      problems: [],
      estimate: () => ({ metadataBytes: 0 }),
      build: async () => {
        throw new IcError('INTERNAL', 'surveyonly never builds');
      },
    }),
  },
};

function header(fields: Partial<VdiHeader>): Uint8Array {
  return serializeHeader({ ...newHeader({ diskSize: 16 * MiB, imageType: 1, blocksAllocated: 0 }), ...fields });
}

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  return bytes;
}

/** A read-only in-memory file of `size` bytes (sparse: free to make huge) holding `pieces`. */
function file(size: number, pieces: [number, Uint8Array][]): MemoryIO {
  const io = new MemoryIO(new Uint8Array(0), 'hostile');
  void io.truncate(size);
  for (const [offset, bytes] of pieces) void io.write(offset, bytes);
  return io;
}

function readOnly(io: MemoryIO): CountingIO {
  const view = new CountingIO(io);
  view.write = async () => {
    throw new IcError('IO', 'hostile test file is read-only');
  };
  view.truncate = async () => {
    throw new IcError('IO', 'hostile test file is read-only');
  };
  return view;
}

/** Runs every read-side operation and a dry-run conversion; returns the error codes (anything but an IcError fails). */
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
  const image = await attempt(() => vdiDriver.open(io));
  if (!image) return codes;
  const virtualSize = image.info().virtualSize;
  const extents = await attempt(() => collectExtents(image.map()));
  if (extents) assertCoverage(extents, virtualSize);
  await attempt(() => image.read(0, Math.min(virtualSize, 8192)));
  const report = await attempt(() => image.check!());
  const dry = await attempt(() => convertInPlace({ io, source: vdiDriver, target: surveyOnlyTarget, dryRun: true }));
  // A source check() finds clean converts. A corrupt one is refused (by map, or by the engine's overlap survey),
  // unless its only fault is the blocks_allocated count, which matters to the next VDI write, not to the content.
  if (report && report.corruptions === 0 && extents) expect(dry, codes.join(',')).toBeDefined();
  if (report && dry) expect(report.messages.filter((message) => !/allocated blocks mismatch/.test(message))).toEqual([]);
  return codes;
}

describe('hostile VDI input: typed errors, bounded work, nothing written', () => {
  it('short, empty and unsigned files are not VDI', async () => {
    for (const bytes of [new Uint8Array(0), header({}).subarray(0, 511), new Uint8Array(512)]) {
      await expect(vdiDriver.open(new MemoryIO(bytes))).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    }
  });

  it("every field qemu's vdi_open refuses is refused, with qemu's reason", async () => {
    const cases: [Partial<VdiHeader>, RegExp][] = [
      [{ version: 0x00010000 }, /version 1\.0/],
      [{ offsetBmap: 0x201 }, /unaligned block map offset 0x201/],
      [{ offsetData: 0x1201 }, /unaligned data offset 0x1201/],
      [{ sectorSize: 4096 }, /sector size 4096 is not 512/],
      [{ blockSize: 2 * MiB }, /block size 2097152 is not 1048576/],
      [{ diskSize: 17 * MiB }, /image bitmap has room for 16777216/],
      [{ uuidLink: new Uint8Array(16).fill(1) }, /non-NULL link UUID/],
      [{ uuidParent: new Uint8Array(16).fill(1) }, /non-NULL parent UUID/],
      [{ blocksInImage: MAX_BLOCKS_IN_IMAGE + 1, diskSize: 16 * MiB }, /too many blocks 536870785, max is 536870784/],
    ];
    for (const [fields, reason] of cases) {
      const io = readOnly(file(64 * MiB, [[0, header(fields)]]));
      await expect(vdiDriver.open(io), reason.source).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(reason) });
      expect(io.stats.bytesRead).toBeLessThanOrEqual(512);
    }
    const huge = new Uint8Array(header({}));
    new DataView(huge.buffer).setBigUint64(f.diskSize.offset, 2n ** 63n, true);
    await expect(vdiDriver.open(new MemoryIO(huge))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/exceeds qemu's maximum/) });
  });

  it('a block map past the end of the file (a 2 GiB map claimed by a 4 KiB file) is refused before it is read', async () => {
    const io = readOnly(file(4096, [[0, header({ blocksInImage: MAX_BLOCKS_IN_IMAGE })]]));
    await expect(vdiDriver.open(io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
    expect(io.stats.bytesRead).toBeLessThanOrEqual(512);
    await expect(vdiDriver.open(file(4096, [[0, header({ offsetBmap: 0 })]]))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/overlaps/) });
  });

  it('a 1 TiB disk whose map is all unallocated: map and check stream it; memory stays bounded', async () => {
    const blocks = 1024 * 1024;
    const bmap = new Uint8Array(blocks * 4).fill(0xff);
    const io = readOnly(file(512 + bmap.length, [[0, header({ diskSize: blocks * MiB, blocksInImage: blocks, offsetData: 512 + bmap.length })], [512, bmap]]));
    const image = await vdiDriver.open(io);
    const before = process.memoryUsage().rss;
    expect(await collectExtents(image.map())).toEqual([{ kind: 'zero', guestOffset: 0, length: blocks * MiB }]);
    expect(await image.check!()).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * MiB);
  });

  it('every entry naming index 0 (aliasing): check counts each, messages are capped, the conversion refuses', async () => {
    const blocks = 20000;
    const io = readOnly(file(512 + Math.ceil((blocks * 4) / 512) * 512 + MiB, [[0, header({ diskSize: blocks * MiB, blocksInImage: blocks, blocksAllocated: 1, offsetData: 512 + Math.ceil((blocks * 4) / 512) * 512 })]]));
    const image = await vdiDriver.open(io);
    const report = await image.check!();
    expect(report.corruptions).toBe(blocks - 1 + 1);
    expect(report.messages.length).toBeLessThanOrEqual(201);
    await expect(convertInPlace({ io, source: vdiDriver, target: surveyOnlyTarget, dryRun: true })).rejects.toMatchObject({ code: 'CORRUPT' });
  });

  it('entries past blocks_in_image and blocks past the end of the file are CORRUPT on read and map', async () => {
    const io = readOnly(file(0x1200 + MiB, [[0, header({})], [512, u32(0)], [516, u32(0x7fffffff)], [520, u32(3)]]));
    const image = await vdiDriver.open(io);
    expect((await image.read(0, 512)).length).toBe(512);
    await expect(image.read(MiB, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/not below blocks_in_image/) });
    await expect(image.read(2 * MiB, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
    await expect(image.read(16 * MiB - 10, 11)).rejects.toMatchObject({ code: 'OUT_OF_BOUNDS' });
  });

  it('property: arbitrary headers and maps give an image or a typed error, and nothing is written', async () => {
    const boundary32 = fc.constantFrom(0, 1, 2, 3, 16, 512, 0x1200, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff);
    const mostly = <T>(sane: fc.Arbitrary<T>, hostile: fc.Arbitrary<T>) => fc.oneof({ arbitrary: sane, weight: 5 }, { arbitrary: hostile, weight: 1 });
    const entry = fc.oneof({ arbitrary: fc.constantFrom(0xffffffff, 0xfffffffe), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 20 }), weight: 3 }, { arbitrary: boundary32, weight: 1 });
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          imageType: mostly(fc.constantFrom(1, 2), boundary32),
          offsetBmap: mostly(fc.constant(512), boundary32),
          offsetData: mostly(fc.constantFrom(1024, 0x1200, 2048), boundary32),
          diskSize: mostly(fc.integer({ min: 0, max: 16 * 2048 }).map((sectors) => sectors * 512 + (sectors % 3)), fc.constantFrom(0, 17 * MiB, 2 ** 40)),
          blocksInImage: mostly(fc.integer({ min: 0, max: 20 }), boundary32),
          blocksAllocated: mostly(fc.integer({ min: 0, max: 20 }), boundary32),
          entries: fc.array(entry, { maxLength: 24 }),
          fileBlocks: fc.integer({ min: 0, max: 20 }),
          fileTail: fc.integer({ min: 0, max: 4096 }),
        }),
        async (input) => {
          const head = header({
            imageType: input.imageType,
            offsetBmap: input.offsetBmap,
            offsetData: input.offsetData,
            diskSize: input.diskSize,
            blocksInImage: input.blocksInImage,
            blocksAllocated: input.blocksAllocated,
          });
          const bmap = new Uint8Array(input.entries.length * 4);
          input.entries.forEach((value, i) => new DataView(bmap.buffer).setUint32(i * 4, value, true));
          const memory = file(512 + input.fileBlocks * MiB + input.fileTail, [
            [0, head],
            [512, bmap],
          ]);
          const pristine = memory.snapshot();
          const codes = await exercise(readOnly(memory));
          for (const code of codes) expect(['WRONG_FORMAT', 'CORRUPT', 'UNSUPPORTED', 'LIMIT', 'OUT_OF_BOUNDS']).toContain(code);
          expect(Buffer.from(memory.snapshot()).equals(Buffer.from(pristine))).toBe(true);
        },
      ),
      { numRuns: Number(process.env.IC_FUZZ_RUNS ?? 200) },
    );
  });
});
