import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { assertCoverage, collectExtents, isIcError, MemoryIO } from '@ic/core';
import { HEADER_FIELDS, parseDescriptor, parseSparseHeader, serializeSparseHeader, vmdkDriver, writeSparseVmdk, type SparseHeader } from '../src/index.js';
import { inflate, pattern } from './helpers.js';

let base: Uint8Array | undefined;
async function baseImage(): Promise<Uint8Array> {
  if (!base) {
    const io = new MemoryIO();
    await writeSparseVmdk(io, {
      capacity: 4 * 1024 * 1024,
      grainSize: 4096,
      grains: [0, 5, 100, 1023].map((i) => ({ guestOffset: i * 4096, data: pattern(4096, i + 1) })),
      zeroGrains: [7 * 4096],
    });
    base = io.snapshot();
  }
  return base.slice();
}

/** Opens and exercises everything; anything thrown must be an IcError. */
async function exercise(bytes: Uint8Array): Promise<void> {
  try {
    const image = await vmdkDriver.open(new MemoryIO(bytes, 'fuzz.vmdk', { writable: false }), { inflate });
    const extents = await collectExtents(image.map());
    assertCoverage(extents, image.info().virtualSize);
    await image.check?.();
    await image.conversionSource?.();
    const size = image.info().virtualSize;
    if (size > 0) await image.read(0, Math.min(size, 64 * 1024));
  } catch (error) {
    if (!isIcError(error)) throw error;
    expect(error.message).toMatch(/^vmdk: /);
  }
}

const u32Boundaries = fc.constantFrom(0, 1, 2, 7, 8, 0x100, 0x200, 0x201, 0x1000, 0x7fffffff, 0x80000000, 0xffffffff);
const u64Boundaries = fc.constantFrom(0n, 1n, 21n, 0x100n, 0x10000n, 0x200000n, 0x200001n, 2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n);

describe('property: hostile headers and tables never escape as anything but IcError', () => {
  it('header fields set to boundary values', async () => {
    const u32Fields = [HEADER_FIELDS.version, HEADER_FIELDS.flags, HEADER_FIELDS.numGTEsPerGT];
    const u64Fields = [HEADER_FIELDS.capacity, HEADER_FIELDS.grainSize, HEADER_FIELDS.descriptorOffset, HEADER_FIELDS.descriptorSize, HEADER_FIELDS.rgdOffset, HEADER_FIELDS.gdOffset, HEADER_FIELDS.overHead];
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof(fc.tuple(fc.constantFrom(...u32Fields), u32Boundaries), fc.tuple(fc.constantFrom(...u64Fields), u64Boundaries)), { minLength: 1, maxLength: 3 }),
        async (pokes) => {
          const bytes = await baseImage();
          const view = new DataView(bytes.buffer);
          for (const [offset, value] of pokes) {
            if (typeof value === 'bigint') view.setBigUint64(offset, value, true);
            else view.setUint32(offset, value, true);
          }
          await exercise(bytes);
        },
      ),
      { numRuns: 150 },
    );
  });

  it('random bytes written into the metadata (header, descriptor, directories, tables)', async () => {
    const metadataEnd = 0x2a00 + 4 * 512 * 2 + 1024; // RGD + RGT + GD + GT of the base image
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.integer({ min: 0, max: metadataEnd - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 16 }), async (pokes) => {
        const bytes = await baseImage();
        for (const [offset, value] of pokes) bytes[offset] = value;
        await exercise(bytes);
      }),
      { numRuns: 150 },
    );
  });

  it('descriptor text: parses or throws CORRUPT/LIMIT', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), fc.boolean(), (text, withCid) => {
        const source = withCid ? `CID=1\nparentCID=ffffffff\n${text}` : text;
        try {
          const descriptor = parseDescriptor(source);
          expect(Number.isInteger(descriptor.cid)).toBe(true);
        } catch (error) {
          expect(isIcError(error) && ['CORRUPT', 'LIMIT'].includes(error.code)).toBe(true);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('header serialise/parse round trip', () => {
    const sectors = fc.integer({ min: 0, max: 2 ** 40 });
    fc.assert(
      fc.property(
        fc.record({
          version: fc.integer({ min: 0, max: 3 }),
          flags: fc.integer({ min: 0, max: 0xffffffff }),
          capacity: sectors,
          grainSize: sectors,
          descriptorOffset: sectors,
          descriptorSize: sectors,
          numGTEsPerGT: fc.integer({ min: 0, max: 0xffffffff }),
          rgdOffset: sectors,
          gdOffset: fc.option(sectors, { nil: undefined }),
          overHead: sectors,
          uncleanShutdown: fc.integer({ min: 0, max: 255 }),
          newlineCheck: fc.uint8Array({ minLength: 4, maxLength: 4 }),
          compressAlgorithm: fc.integer({ min: 0, max: 0xffff }),
        }),
        (header: SparseHeader) => {
          expect(parseSparseHeader(serializeSparseHeader(header))).toEqual(header);
        },
      ),
    );
  });
});
