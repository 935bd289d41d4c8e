import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { collectExtents, MemoryIO } from '@ic/core';
import { qemuCreate, requireQemu, tempDir } from '@ic/test-utils';
import {
  FEATURE_BACKING_FILE,
  FEATURE_BACKING_FORMAT_NO_PROBE,
  HEADER_FIELDS,
  maxImageSize,
  parseHeader,
  qedDriver,
  serializeHeader,
  validateHeader,
  type QedHeader,
} from '../src/index.js';

/** Little-endian bytes of `value` in `width` bytes. */
function le(value: number | bigint, width: number): number[] {
  const out: number[] = [];
  let rest = BigInt(value);
  for (let i = 0; i < width; i++) {
    out.push(Number(rest & 0xffn));
    rest >>= 8n;
  }
  return out;
}

/**
 * The header `qemu-img create -f qed -b base.raw -F raw img 1G` writes (checked against qemu below),
 * field by field, followed by the backing name at offset 64.
 */
const FIXTURE = new Uint8Array([
  ...[0x51, 0x45, 0x44, 0x00], //                                 0  magic "QED\0"
  ...[0x00, 0x00, 0x01, 0x00], //                                 4  cluster_size 65536
  ...[0x04, 0x00, 0x00, 0x00], //                                 8  table_size 4 clusters
  ...[0x01, 0x00, 0x00, 0x00], //                                12  header_size 1 cluster
  ...[0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //        16  features BACKING_FILE | BACKING_FORMAT_NO_PROBE
  ...[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //        24  compat_features
  ...[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00], //        32  autoclear_features
  ...[0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00], //        40  l1_table_offset 0x10000
  ...[0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00], //        48  image_size 0x40000000 (1 GiB)
  ...[0x40, 0x00, 0x00, 0x00], //                                56  backing_filename_offset 64
  ...[0x08, 0x00, 0x00, 0x00], //                                60  backing_filename_size 8
  ...new TextEncoder().encode('base.raw'), //                    64  backing file name, no NUL
]);

const FIXTURE_HEADER: QedHeader = {
  clusterSize: 65536,
  tableSize: 4,
  headerSize: 1,
  features: FEATURE_BACKING_FILE | FEATURE_BACKING_FORMAT_NO_PROBE,
  compatFeatures: 0n,
  autoclearFeatures: 0n,
  l1TableOffset: 0x10000,
  imageSize: 1024 ** 3,
  backingFilenameOffset: 64,
  backingFilenameSize: 8,
};

/** qemu-img's file length for this image: header cluster + 4 L1 clusters. */
const FIXTURE_FILE_SIZE = 0x50000;

/** A copy of the fixture's 64 header bytes with `field` replaced by `value`. */
function withField(field: keyof typeof HEADER_FIELDS, value: number | bigint): Uint8Array {
  const bytes = FIXTURE.slice(0, 64);
  const { offset, size } = HEADER_FIELDS[field];
  bytes.set(le(value, size), offset);
  return bytes;
}

function validate(bytes: Uint8Array, fileSize = FIXTURE_FILE_SIZE) {
  return validateHeader(parseHeader(bytes), fileSize);
}

describe('QED header (byte fixtures)', () => {
  const tmp = tempDir('ic-qed-header-');
  afterAll(() => tmp.cleanup());

  it('the fixture is what qemu-img writes', () => {
    requireQemu();
    const path = tmp.path('fixture.qed');
    qemuCreate(tmp.path('base.raw'), 'raw', 0);
    qemuCreate(path, 'qed', 1024 ** 3, { backing: 'base.raw', backingFormat: 'raw', cwd: tmp.dir });
    const file = readFileSync(path);
    expect(file.length).toBe(FIXTURE_FILE_SIZE);
    expect([...file.subarray(0, FIXTURE.length)]).toEqual([...FIXTURE]);
  });

  it('parses every field', () => {
    expect(parseHeader(FIXTURE)).toEqual(FIXTURE_HEADER);
  });

  it('serializes back to the same 64 bytes', () => {
    expect([...serializeHeader(FIXTURE_HEADER)]).toEqual([...FIXTURE.subarray(0, 64)]);
  });

  it('derives the geometry', () => {
    expect(validate(FIXTURE)).toEqual({
      clusterSize: 65536,
      clusterBits: 16,
      tableSize: 4,
      tableBytes: 262144,
      tableEntries: 32768,
      l2Coverage: 2 * 1024 ** 3,
      headerRegionSize: 65536,
      validationFileSize: FIXTURE_FILE_SIZE,
      imageSize: 1024 ** 3,
    });
    // Bytes past the last whole cluster do not count (qemu rounds EOF down).
    expect(validate(FIXTURE, FIXTURE_FILE_SIZE + 65535).validationFileSize).toBe(FIXTURE_FILE_SIZE);
  });

  it('probes by magic only', () => {
    expect(qedDriver.probe(FIXTURE, FIXTURE_FILE_SIZE)).toBe(100);
    expect(qedDriver.probe(FIXTURE.subarray(0, 4), 4)).toBe(100);
    expect(qedDriver.probe(FIXTURE.subarray(0, 3), 3)).toBe(0);
    expect(qedDriver.probe(new Uint8Array([0x51, 0x46, 0x49, 0xfb]), 4)).toBe(0);
    expect(qedDriver.probe(new Uint8Array(0), 0)).toBe(0);
  });

  it('opens an in-memory image built from the fixture', async () => {
    const file = new Uint8Array(FIXTURE_FILE_SIZE);
    file.set(FIXTURE);
    const image = await qedDriver.open(new MemoryIO(file, 'fixture', { writable: false }));
    expect(image.info()).toEqual({ format: 'qed', virtualSize: 1024 ** 3, clusterSize: 65536, dirty: false, backing: { name: 'base.raw', format: 'raw' } });
    expect(await collectExtents(image.map())).toEqual([{ kind: 'unallocated', guestOffset: 0, length: 1024 ** 3 }]);
  });

  it('maximum image size is (table_size * cluster_size / 8)^2 * cluster_size', () => {
    expect(maxImageSize(65536, 4)).toBe(2n ** 46n);
    expect(maxImageSize(4096, 1)).toBe(512n * 512n * 4096n);
    expect(maxImageSize(64 * 1024 * 1024, 16)).toBe(2n ** 80n);
  });

  // Each row changes one field of the fixture; the code says how the image is refused.
  const refusals: [string, Uint8Array, string, RegExp][] = [
    ['cluster_size not a power of two', withField('clusterSize', 65535), 'CORRUPT', /cluster_size 65535/],
    ['cluster_size below 4 KiB', withField('clusterSize', 2048), 'CORRUPT', /cluster_size/],
    ['cluster_size above 64 MiB', withField('clusterSize', 128 * 1024 * 1024), 'CORRUPT', /cluster_size/],
    ['cluster_size 0', withField('clusterSize', 0), 'CORRUPT', /cluster_size/],
    ['table_size 0', withField('tableSize', 0), 'CORRUPT', /table_size/],
    ['table_size 3', withField('tableSize', 3), 'CORRUPT', /table_size/],
    ['table_size 32', withField('tableSize', 32), 'CORRUPT', /table_size/],
    ['header_size 0', withField('headerSize', 0), 'CORRUPT', /header_size/],
    ['header_size * cluster_size = 4 GiB', withField('headerSize', 65536), 'CORRUPT', /header_size/],
    ['unknown feature bit 3', withField('features', 0x8n), 'UNSUPPORTED', /unknown feature bits 0x8/],
    ['unknown feature bit 63', withField('features', 1n << 63n), 'UNSUPPORTED', /unknown feature/],
    ['image_size not a multiple of 512', withField('imageSize', 1024 ** 3 + 1), 'CORRUPT', /multiple of 512/],
    ['image_size past the addressable maximum', withField('imageSize', 2 ** 46 + 512), 'CORRUPT', /exceeds/],
    ['image_size past 2^53', withField('imageSize', 1n << 60n), 'LIMIT', /image_size/],
    ['l1_table_offset unaligned', withField('l1TableOffset', 0x10200), 'CORRUPT', /not aligned/],
    ['l1_table_offset 0 (the header)', withField('l1TableOffset', 0), 'CORRUPT', /header region/],
    ['L1 table running past EOF', withField('l1TableOffset', 0x20000), 'CORRUPT', /runs past the end/],
    ['l1_table_offset past EOF', withField('l1TableOffset', 0x50000), 'CORRUPT', /past the end/],
    ['l1_table_offset 2^64 - 65536', withField('l1TableOffset', 2n ** 64n - 65536n), 'CORRUPT', /l1_table_offset/],
    ['backing name past the header region', withField('backingFilenameOffset', 65536 - 4), 'CORRUPT', /header region/],
    ['backing name offset 2^32 - 1', withField('backingFilenameOffset', 2 ** 32 - 1), 'CORRUPT', /header region/],
  ];
  for (const [name, bytes, code, message] of refusals) {
    it(`refuses ${name} (${code})`, () => {
      let caught: unknown;
      try {
        validate(bytes);
      } catch (error) {
        caught = error;
      }
      expect(caught).toMatchObject({ code, message: expect.stringMatching(message) });
      expect((caught as Error).message).toMatch(/^qed: /);
    });
  }

  it('a backing name of 4096 bytes is refused even when the header region holds it', () => {
    const bytes = withField('backingFilenameSize', 4096);
    bytes.set(le(2, 4), HEADER_FIELDS.headerSize.offset); // two header clusters: 128 KiB
    bytes.set(le(0x20000, 8), HEADER_FIELDS.l1TableOffset.offset); // the L1 moves past them
    expect(() => validate(bytes, 0x60000)).toThrow(/not below 4096/);
    bytes.set(le(4095, 4), HEADER_FIELDS.backingFilenameSize.offset);
    expect(validate(bytes, 0x60000).headerRegionSize).toBe(0x20000);
  });

  it('backing name fields are ignored when the backing feature is off (as qemu does)', () => {
    const bytes = withField('features', 0n);
    bytes.set(le(2 ** 32 - 1, 4), HEADER_FIELDS.backingFilenameOffset.offset);
    expect(() => validate(bytes)).not.toThrow();
  });

  it('table_size 1 is read (valid by the specification, although qemu 7.2 refuses to open it)', () => {
    const bytes = withField('tableSize', 1);
    expect(validate(bytes, 0x20000).tableEntries).toBe(8192);
  });
});
