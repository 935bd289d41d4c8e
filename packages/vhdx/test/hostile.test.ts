import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, isIcError, itemBatches, MemoryIO, type BlockIO } from '@ic/core';
import { guid, HEADER_FIELDS, HEADER_OFFSETS, HEADER_SIZE, LOG_SIGNATURE, PARENT_LOCATOR_GUID, REGION_TABLE_OFFSETS, setChecksum, VHDX_PARENT_LOCATOR_TYPE, vhdxDriver, type VhdxImage } from '../src/index.js';

const MiB = 1024 ** 2;
/** Layout of the images below (qemu-img's for 8 MiB, block_size=1M): log 1 MiB, BAT 2 MiB, metadata 3 MiB. */
const BAT = 2 * MiB;
const METADATA = 3 * MiB;

async function pristine(size = 8 * MiB): Promise<Uint8Array> {
  const io = new MemoryIO(new Uint8Array(0), 'pristine');
  await vhdxDriver.create!(io, { virtualSize: size, options: { block_size: MiB } });
  return io.snapshot();
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Fixes the CRC-32C of both headers and the first region table after an edit. */
function reseal(bytes: Uint8Array): void {
  for (const at of HEADER_OFFSETS) setChecksum(bytes.subarray(at, at + HEADER_SIZE), HEADER_FIELDS.checksum.offset);
  setChecksum(bytes.subarray(REGION_TABLE_OFFSETS[0], REGION_TABLE_OFFSETS[0] + 65536), 4);
}

async function open(bytes: Uint8Array, untrusted = false): Promise<VhdxImage> {
  return (await vhdxDriver.open(new MemoryIO(bytes, 'hostile', { writable: false }), { untrusted })) as VhdxImage;
}

/** Every read-side operation; the error codes seen (anything but an IcError fails the test). */
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
  const image = await attempt(() => vhdxDriver.open(io));
  if (!image) return codes;
  const size = image.info().virtualSize;
  const extents = await attempt(() => collectExtents(image.map()));
  if (extents) assertCoverage(extents, size);
  await attempt(() => image.read(0, Math.min(size, 8192)));
  await attempt(() => image.check!());
  await attempt(async () => {
    const source = await image.conversionSource!();
    for await (const _ of itemBatches(source.metadataRanges()));
  });
  return codes;
}

describe('hostile VHDX input: typed errors, bounded work, nothing written', () => {
  it('field checks in qemu order', async () => {
    const base = await pristine();
    const edit = async (change: (bytes: Uint8Array, v: DataView) => void, seal = true) => {
      const bytes = base.slice();
      change(bytes, view(bytes));
      if (seal) reseal(bytes);
      return open(bytes);
    };
    await expect(edit((b) => b.fill(0, 0, 8), false)).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(vhdxDriver.open(new MemoryIO(base.slice(0, 4096)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/header section/) });
    // The log fields of the current header (both are edited: the second has the higher sequence number).
    await expect(edit((_, v) => HEADER_OFFSETS.forEach((at) => v.setBigUint64(at + 72, 12345n, true)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/log offset/) });
    await expect(edit((_, v) => HEADER_OFFSETS.forEach((at) => v.setUint16(at + 64, 1, true)))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/log version/) });
    // Only the stale header damaged: the current one still opens.
    expect((await edit((_, v) => v.setBigUint64(HEADER_OFFSETS[0] + 72, 12345n, true))).info().virtualSize).toBe(8 * MiB);
    await expect(edit((b) => (b[REGION_TABLE_OFFSETS[0] + 100] = 1), false)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/CRC-32C/) });
    await expect(edit((_, v) => v.setUint32(REGION_TABLE_OFFSETS[0] + 8, 3000, true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/entries/) });
    // The BAT region moved onto the log.
    await expect(edit((_, v) => v.setBigUint64(REGION_TABLE_OFFSETS[0] + 16 + 16, BigInt(MiB), true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/overlaps the log/) });
    // A third, unknown region marked required.
    await expect(
      edit((b, v) => {
        v.setUint32(REGION_TABLE_OFFSETS[0] + 8, 3, true);
        b.set(guid('11111111-2222-3333-4444-555555555555'), REGION_TABLE_OFFSETS[0] + 16 + 64);
        v.setBigUint64(REGION_TABLE_OFFSETS[0] + 16 + 64 + 16, BigInt(5 * MiB), true);
        v.setUint32(REGION_TABLE_OFFSETS[0] + 16 + 64 + 24, MiB, true);
        v.setUint32(REGION_TABLE_OFFSETS[0] + 16 + 64 + 28, 1, true);
      }),
    ).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await expect(edit((b) => b.fill(0, METADATA, METADATA + 8))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/"metadata" signature/) });
    await expect(edit((_, v) => v.setUint32(METADATA + 65536, 3 * MiB, true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/block size/) });
    await expect(edit((_, v) => v.setUint32(METADATA + 65536, 0, true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/block size/) });
    await expect(edit((_, v) => v.setUint32(METADATA + 65536 + 32, 4096, true))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/logical sector size/) });
    // An item pointing outside the metadata region.
    await expect(edit((_, v) => v.setUint32(METADATA + 32 + 16, 2 * MiB, true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/does not lie inside/) });
    // Drop an entry: a required item is missing.
    await expect(edit((_, v) => v.setUint16(METADATA + 10, 4, true))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/physical sector size/) });
    // A virtual size whose BAT does not fit the 1 MiB BAT region.
    await expect(edit((_, v) => v.setBigUint64(METADATA + 65536 + 8, BigInt(2 ** 50), true))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/BAT region/) });
    // BAT states ic cannot read (qemu reads them as I/O errors).
    for (const state of [4n, 7n]) {
      const image = await edit((_, v) => v.setBigUint64(BAT, state, true));
      await expect(collectExtents(image.map())).rejects.toMatchObject({ code: 'CORRUPT' });
    }
    const far = await edit((_, v) => v.setBigUint64(BAT + 8, 0xffff_ffff_fff0_0006n, true));
    await expect(collectExtents(far.map())).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/past 2\^53/) });
    expect((await far.check()).corruptions).toBe(2);
  });

  it('a log full of entry headers that claim the whole log: bounded work, then LIMIT or no log', async () => {
    const bytes = await pristine();
    const logGuid = guid('AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE');
    const v = view(bytes);
    for (const at of HEADER_OFFSETS) bytes.set(logGuid, at + 48);
    for (let sector = 0; sector < 256; sector++) {
      const at = MiB + sector * 4096;
      v.setUint32(at, LOG_SIGNATURE, true);
      v.setUint32(at + 8, MiB, true);
      v.setBigUint64(at + 16, 1n, true);
      bytes.set(logGuid, at + 32);
    }
    reseal(bytes);
    const started = performance.now();
    // Every entry fails its CRC: qemu finds no log to replay, and so does ic, after reading the log once per entry.
    const image = await open(bytes);
    expect(image.info().virtualSize).toBe(8 * MiB);
    expect(performance.now() - started).toBeLessThan(30_000);
  });

  it('a differencing image names its parent as a backing reference (qemu 7.2 cannot open it); untrusted refuses it', async () => {
    const bytes = await pristine();
    const v = view(bytes);
    v.setUint32(METADATA + 65536 + 4, 2, true); // has parent
    v.setUint16(METADATA + 10, 6, true);
    const entry = METADATA + 32 + 5 * 32;
    bytes.set(PARENT_LOCATOR_GUID, entry);
    const item = 65536 + 40;
    const key = 'relative_path';
    const value = '.\\base.vhdx';
    const utf16 = (text: string) => Uint8Array.from([...text].flatMap((c) => [c.charCodeAt(0), 0]));
    const locator = new Uint8Array(20 + 12 + key.length * 2 + value.length * 2);
    const lv = view(locator);
    locator.set(VHDX_PARENT_LOCATOR_TYPE, 0);
    lv.setUint16(18, 1, true);
    lv.setUint32(20, 32, true);
    lv.setUint32(24, 32 + key.length * 2, true);
    lv.setUint16(28, key.length * 2, true);
    lv.setUint16(30, value.length * 2, true);
    locator.set(utf16(key), 32);
    locator.set(utf16(value), 32 + key.length * 2);
    bytes.set(locator, METADATA + item);
    v.setUint32(entry + 16, item, true);
    v.setUint32(entry + 20, locator.length, true);
    v.setUint32(entry + 24, 4, true);
    const image = await open(bytes);
    expect(image.info().backing).toEqual({ name: '.\\base.vhdx', format: 'vhdx' });
    expect(image.subformat).toBe('differencing');
    expect((await image.conversionSource()).options.backing).toEqual({ name: '.\\base.vhdx', format: 'vhdx' });
    await expect(open(bytes, true)).rejects.toMatchObject({ code: 'EXTERNAL_REF' });
  });

  it('property: mutated headers, region table, metadata and BAT give an image or a typed error, and nothing is written', async () => {
    const base = await pristine();
    const areas = [
      [HEADER_OFFSETS[0], 80],
      [HEADER_OFFSETS[1], 80],
      [REGION_TABLE_OFFSETS[0], 80],
      [METADATA, 200],
      [METADATA + 65536, 40],
      [BAT, 80],
      [MiB, 64],
    ] as const;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.integer({ min: 0, max: areas.length - 1 }), fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 12 }),
        fc.boolean(),
        fc.integer({ min: 0, max: 3 }),
        async (edits, seal, truncate) => {
          const bytes = base.slice(0, base.length - truncate * MiB);
          for (const [area, at, value] of edits) {
            const [start, length] = areas[area]!;
            if (start + (at % length) < bytes.length) bytes[start + (at % length)] = value;
          }
          if (seal) reseal(bytes);
          const io = new MemoryIO(bytes, 'fuzz', { writable: false });
          const copy = bytes.slice();
          for (const code of await exercise(io)) expect(['WRONG_FORMAT', 'CORRUPT', 'UNSUPPORTED', 'LIMIT', 'OUT_OF_BOUNDS', 'EXTERNAL_REF']).toContain(code);
          expect(Buffer.from(io.snapshot()).equals(Buffer.from(copy))).toBe(true);
        },
      ),
      { numRuns: Number(process.env.IC_FUZZ_RUNS ?? 80) },
    );
  });
});
