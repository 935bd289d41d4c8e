import { describe, expect, it } from 'vitest';
import { isIcError } from '@ic/core';
import { FLAG_NEWLINE_DETECT, FLAG_REDUNDANT_GD, parseSparseHeader, serializeSparseHeader, validateSparseHeader } from '../src/index.js';

/** Sector 0 of `qemu-img create -f vmdk x.vmdk 1G` (qemu 7.2), field by field. */
function qemuHeader1G(): Uint8Array {
  const fields: number[][] = [
    [0x4b, 0x44, 0x4d, 0x56], //                              0  magicNumber "KDMV"
    [0x01, 0x00, 0x00, 0x00], //                              4  version 1
    [0x03, 0x00, 0x00, 0x00], //                              8  flags: newline detection | redundant GD
    [0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00], //     12  capacity 0x200000 sectors (1 GiB)
    [0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     20  grainSize 128 sectors (64 KiB)
    [0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     28  descriptorOffset sector 1
    [0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     36  descriptorSize 20 sectors
    [0x00, 0x02, 0x00, 0x00], //                             44  numGTEsPerGT 512
    [0x15, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     48  rgdOffset sector 21
    [0x96, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     56  gdOffset sector 150
    [0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //     64  overHead 384 sectors (0x30000)
    [0x00], //                                               72  uncleanShutdown
    [0x0a, 0x20, 0x0d, 0x0a], //                             73  newline check "\n \r\n"
    [0x00, 0x00], //                                         77  compressAlgorithm none
  ];
  const out = new Uint8Array(512); // 79..511 zero padding
  out.set(fields.flat());
  return out;
}

describe('sparse extent header', () => {
  it('parses the qemu 1 GiB header field by field', () => {
    const header = parseSparseHeader(qemuHeader1G());
    expect(header).toEqual({
      version: 1,
      flags: FLAG_NEWLINE_DETECT | FLAG_REDUNDANT_GD,
      capacity: 0x200000,
      grainSize: 128,
      descriptorOffset: 1,
      descriptorSize: 20,
      numGTEsPerGT: 512,
      rgdOffset: 21,
      gdOffset: 150,
      overHead: 384,
      uncleanShutdown: 0,
      newlineCheck: new Uint8Array([0x0a, 0x20, 0x0d, 0x0a]),
      compressAlgorithm: 0,
    });
    const geometry = validateSparseHeader(header, 0x30000);
    expect(geometry).toMatchObject({ virtualSize: 1024 ** 3, grainBytes: 65536, gdEntries: 32, gtCoverage: 32 * 1024 * 1024, gtSectors: 4, redundant: true, zeroedGrains: false });
  });

  it('serialises back to the same bytes', () => {
    const bytes = qemuHeader1G();
    expect(serializeSparseHeader(parseSparseHeader(bytes))).toEqual(bytes);
  });

  it('GD_AT_END reads as an undefined gdOffset and serialises back', () => {
    const bytes = qemuHeader1G();
    bytes.fill(0xff, 56, 64);
    const header = parseSparseHeader(bytes);
    expect(header.gdOffset).toBeUndefined();
    expect(serializeSparseHeader(header)).toEqual(bytes);
  });

  const refuse: [string, (b: DataView) => void, string, RegExp][] = [
    ['version 4', (b) => b.setUint32(4, 4, true), 'UNSUPPORTED', /version 4/],
    ['numGTEsPerGT 0', (b) => b.setUint32(44, 0, true), 'CORRUPT', /numGTEsPerGT 0/],
    ['numGTEsPerGT 513', (b) => b.setUint32(44, 513, true), 'CORRUPT', /numGTEsPerGT 513/],
    ['grainSize 0', (b) => b.setBigUint64(20, 0n, true), 'CORRUPT', /grainSize 0/],
    ['grainSize 0x200001', (b) => b.setBigUint64(20, 0x200001n, true), 'CORRUPT', /grainSize 2097153/],
    ['capacity 2^62 sectors', (b) => b.setBigUint64(12, 2n ** 62n, true), 'LIMIT', /capacity/],
    ['capacity needing 64 Mi GD entries', (b) => b.setBigUint64(12, 2n ** 26n * 512n * 128n, true), 'LIMIT', /grain directory entries/],
    ['overHead past the file', (b) => b.setBigUint64(64, 0x10000n, true), 'CORRUPT', /truncated/],
  ];
  for (const [label, poke, code, message] of refuse) {
    it(`refuses ${label} with ${code}`, () => {
      const bytes = qemuHeader1G();
      poke(new DataView(bytes.buffer));
      try {
        validateSparseHeader(parseSparseHeader(bytes), 0x30000);
        expect.unreachable();
      } catch (error) {
        expect(isIcError(error) && error.code).toBe(code);
        expect((error as Error).message).toMatch(/^vmdk: /);
        expect((error as Error).message).toMatch(message);
      }
    });
  }

  it('refuses a sector without the magic as WRONG_FORMAT', () => {
    expect(() => parseSparseHeader(new Uint8Array(512))).toThrowError(/KDMV/);
  });
});
