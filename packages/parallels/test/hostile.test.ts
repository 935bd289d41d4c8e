import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, convertInPlace, isIcError, MemoryIO, type BlockIO } from '@ic/core';
import { HEADER_FIELDS, newHeader, parallelsDriver, serializeHeader, type ParallelsHeader } from '../src/index.js';

const MiB = 1024 ** 2;

function header(fields: Partial<ParallelsHeader>): Uint8Array {
  return serializeHeader({ ...newHeader(16 * MiB, 4096), ...fields });
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
  const image = await attempt(() => parallelsDriver.open(io));
  if (!image) return codes;
  const size = image.info().virtualSize;
  const extents = await attempt(() => collectExtents(image.map()));
  if (extents) assertCoverage(extents, size);
  await attempt(() => image.read(0, Math.min(size, 8192)));
  await attempt(() => image.check!());
  await attempt(() => convertInPlace({ io, source: parallelsDriver, target: parallelsDriver, dryRun: true }));
  return codes;
}

describe('hostile Parallels input: typed errors, bounded work, nothing written', () => {
  it('short, wrong and truncated headers', async () => {
    await expect(parallelsDriver.open(new MemoryIO(new Uint8Array(10)))).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(parallelsDriver.open(new MemoryIO(header({ version: 3 })))).rejects.toMatchObject({ code: 'WRONG_FORMAT' });
    await expect(parallelsDriver.open(new MemoryIO(header({}).subarray(0, 40)))).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(parallelsDriver.open(new MemoryIO(header({ tracks: 0 })))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/tracks/) });
    await expect(parallelsDriver.open(new MemoryIO(header({ tracks: 0x7fffffff })))).rejects.toMatchObject({ code: 'LIMIT' });
    await expect(parallelsDriver.open(new MemoryIO(header({ batEntries: 0x7fffffff })))).rejects.toMatchObject({ code: 'LIMIT' });
    // A BAT that runs past the end of the file (qemu would read zeros): refused.
    await expect(parallelsDriver.open(new MemoryIO(header({})))).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/BAT/) });
  });

  it('a 2^52-byte virtual size of nothing maps as one unallocated run without reading the disk', async () => {
    const bytes = new Uint8Array(4096);
    bytes.set(header({ nbSectors: 2 ** 43, batEntries: 16 }));
    const image = await parallelsDriver.open(new MemoryIO(bytes));
    expect(await collectExtents(image.map())).toEqual([{ kind: 'unallocated', guestOffset: 0, length: 2 ** 52 }]);
    await expect(parallelsDriver.open(new MemoryIO(header({ nbSectors: 2 ** 44 })))).rejects.toMatchObject({ code: 'LIMIT' });
  });

  it('property: arbitrary headers and BAT bytes give an image or a typed error, and nothing is written', async () => {
    const boundary32 = fc.constantFrom(0, 1, 8, 512, 4096, 0x7fffffff, 0xffffffff);
    const mostly = <T>(sane: fc.Arbitrary<T>, hostile: fc.Arbitrary<T>) => fc.oneof({ arbitrary: sane, weight: 5 }, { arbitrary: hostile, weight: 1 });
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          magic: fc.constantFrom('clusters', 'sectors'),
          tracks: mostly(fc.constantFrom(8, 16), boundary32),
          batEntries: mostly(fc.integer({ min: 0, max: 64 }), boundary32),
          nbSectors: mostly(fc.integer({ min: 0, max: 64 * 16 }), fc.constantFrom(2 ** 32, 2 ** 40, 2 ** 50)),
          inuse: fc.constantFrom(0, 0x746f6e59),
          dataOff: mostly(fc.constantFrom(8, 16), boundary32),
          extOff: mostly(fc.constant(0), fc.constantFrom(1, 8, 2 ** 40)),
          entries: fc.array(fc.tuple(fc.integer({ min: 0, max: 63 }), mostly(fc.integer({ min: 0, max: 20 }), boundary32)), { maxLength: 40 }),
          fileSize: fc.integer({ min: 64, max: 20 * 4096 }),
        }),
        async (input) => {
          const file = new Uint8Array(input.fileSize);
          const fixed = serializeHeader({
            ...newHeader(MiB, 4096),
            batUnit: input.magic as 'clusters' | 'sectors',
            tracks: input.tracks,
            batEntries: input.batEntries,
            nbSectors: input.nbSectors,
            inuse: input.inuse,
            dataOff: input.dataOff,
            extOff: input.extOff,
          });
          file.set(fixed.subarray(0, Math.min(64, file.length)));
          const view = new DataView(file.buffer);
          for (const [slot, value] of input.entries) if (64 + slot * 4 + 4 <= file.length) view.setUint32(64 + slot * 4, value, true);
          const io = new MemoryIO(file, 'fuzz', { writable: false });
          for (const code of await exercise(io)) expect(['WRONG_FORMAT', 'CORRUPT', 'UNSUPPORTED', 'LIMIT', 'OUT_OF_BOUNDS']).toContain(code);
          expect(Buffer.from(io.snapshot()).equals(Buffer.from(file))).toBe(true);
        },
      ),
      { numRuns: Number(process.env.IC_FUZZ_RUNS ?? 300) },
    );
    expect(HEADER_FIELDS.batEntries.offset).toBe(32);
  });
});
