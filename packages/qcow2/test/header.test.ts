/** Byte-level parser tests on small annotated fixtures (no qemu needed). */
import { describe, expect, it } from 'vitest';
import {
  decodeHeader,
  encodeExtensions,
  encodeHeader,
  ExtensionType,
  featureNameTableExtension,
  parseExtensions,
  parseHeader,
  validateHeader,
  type Qcow2Header,
} from '../src/index.js';
import { u32be, u64be } from './helpers.js';

/** A version 3 header of a 1 GiB image with 64 KiB clusters, as qemu-img create writes it (0x70 bytes). */
function v3HeaderBytes(overrides: Partial<Record<string, number[]>> = {}): Uint8Array {
  const fields: [string, number[]][] = [
    ['magic', [0x51, 0x46, 0x49, 0xfb]], //         0x00 "QFI\xfb"
    ['version', u32be(3)], //                       0x04
    ['backing_file_offset', u64be(0)], //           0x08 no backing file
    ['backing_file_size', u32be(0)], //             0x10
    ['cluster_bits', u32be(16)], //                 0x14 64 KiB clusters
    ['size', u64be(0x40000000)], //                 0x18 1 GiB
    ['crypt_method', u32be(0)], //                  0x20 not encrypted
    ['l1_size', u32be(2)], //                       0x24 2 entries x 512 MiB
    ['l1_table_offset', u64be(0x30000)], //         0x28 cluster 3
    ['refcount_table_offset', u64be(0x10000)], //   0x30 cluster 1
    ['refcount_table_clusters', u32be(1)], //       0x38
    ['nb_snapshots', u32be(0)], //                  0x3c
    ['snapshots_offset', u64be(0)], //              0x40
    ['incompatible_features', u64be(0)], //         0x48
    ['compatible_features', u64be(0)], //           0x50
    ['autoclear_features', u64be(0)], //            0x58
    ['refcount_order', u32be(4)], //                0x60 16-bit refcounts
    ['header_length', u32be(0x70)], //              0x64 112
    ['compression_type+padding', [0, 0, 0, 0, 0, 0, 0, 0]], // 0x68 zlib
  ];
  const bytes = fields.flatMap(([name, value]) => overrides[name] ?? value);
  expect(bytes.length).toBe(0x70);
  return Uint8Array.from(bytes);
}

/** The same image as version 2 (compat=0.10): the header ends at 0x48. */
function v2HeaderBytes(): Uint8Array {
  const bytes = v3HeaderBytes({ version: u32be(2) }).slice(0, 0x48);
  return bytes;
}

const FILE_SIZE = 0x30010; // what qemu-img create leaves: the file ends with the L1 table

describe('header', () => {
  it('decodes every version 3 field', () => {
    const header = parseHeader(v3HeaderBytes(), FILE_SIZE);
    expect(header).toEqual<Qcow2Header>({
      version: 3,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: 16,
      size: 0x40000000,
      cryptMethod: 0,
      l1Size: 2,
      l1TableOffset: 0x30000,
      refcountTableOffset: 0x10000,
      refcountTableClusters: 1,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatibleFeatures: 0n,
      compatibleFeatures: 0n,
      autoclearFeatures: 0n,
      refcountOrder: 4,
      headerLength: 112,
      compressionType: 0,
    });
  });

  it('decodes a version 2 header with the implied v3 fields', () => {
    const header = parseHeader(v2HeaderBytes(), FILE_SIZE);
    expect(header.version).toBe(2);
    expect(header.headerLength).toBe(72);
    expect(header.refcountOrder).toBe(4);
    expect(header.incompatibleFeatures).toBe(0n);
  });

  it('encodes back to the same bytes', () => {
    expect(encodeHeader(parseHeader(v3HeaderBytes(), FILE_SIZE))).toEqual(v3HeaderBytes());
    expect(encodeHeader(parseHeader(v2HeaderBytes(), FILE_SIZE))).toEqual(v2HeaderBytes());
  });

  it('accepts the 104-byte minimum version 3 header', () => {
    const bytes = v3HeaderBytes({ header_length: u32be(104) });
    expect(parseHeader(bytes, FILE_SIZE).compressionType).toBe(0);
  });

  const code = (fn: () => unknown): string | undefined => {
    try {
      fn();
    } catch (error) {
      return (error as { code?: string }).code;
    }
    return undefined;
  };

  const invalid: [string, Partial<Record<string, number[]>>, string][] = [
    ['bad magic', { magic: [0x51, 0x46, 0x49, 0x00] }, 'WRONG_FORMAT'],
    ['version 1', { version: u32be(1) }, 'UNSUPPORTED'],
    ['version 4', { version: u32be(4) }, 'UNSUPPORTED'],
    ['cluster_bits 8', { cluster_bits: u32be(8) }, 'CORRUPT'],
    ['cluster_bits 22', { cluster_bits: u32be(22) }, 'CORRUPT'],
    ['cluster_bits 0xffffffff', { cluster_bits: u32be(0xffffffff) }, 'CORRUPT'],
    ['header_length 96', { header_length: u32be(96) }, 'CORRUPT'],
    ['header_length 108 (not a multiple of 8)', { header_length: u32be(108) }, 'CORRUPT'],
    ['header_length past the cluster', { header_length: u32be(0x10008) }, 'CORRUPT'],
    ['unknown incompatible bit 5', { incompatible_features: u64be(1n << 5n) }, 'UNSUPPORTED'],
    ['unknown incompatible bit 63', { incompatible_features: u64be(1n << 63n) }, 'UNSUPPORTED'],
    ['compression type zstd without its incompatible bit', { 'compression_type+padding': [1, 0, 0, 0, 0, 0, 0, 0] }, 'CORRUPT'],
    ['compression type 7', { 'compression_type+padding': [7, 0, 0, 0, 0, 0, 0, 0], incompatible_features: u64be(8) }, 'UNSUPPORTED'],
    ['extended L2 with 4 KiB clusters', { cluster_bits: u32be(12), incompatible_features: u64be(16), l1_size: u32be(512), l1_table_offset: u64be(0x3000), refcount_table_offset: u64be(0x1000) }, 'CORRUPT'],
    ['refcount_order 7', { refcount_order: u32be(7) }, 'CORRUPT'],
    ['crypt_method 3', { crypt_method: u32be(3) }, 'UNSUPPORTED'],
    ['backing name offset past cluster 0', { backing_file_offset: u64be(0x10001), backing_file_size: u32be(4) }, 'CORRUPT'],
    ['backing name of 1024 bytes', { backing_file_offset: u64be(0x200), backing_file_size: u32be(1024) }, 'CORRUPT'],
    ['backing name leaving cluster 0', { backing_file_offset: u64be(0xfff0), backing_file_size: u32be(0x20) }, 'CORRUPT'],
    ['backing name inside the header fields', { backing_file_offset: u64be(0x40), backing_file_size: u32be(4) }, 'CORRUPT'],
    ['refcount_table_clusters 0', { refcount_table_clusters: u32be(0) }, 'CORRUPT'],
    ['refcount table over 8 MiB', { refcount_table_clusters: u32be(129) }, 'LIMIT'],
    ['refcount table not aligned', { refcount_table_offset: u64be(0x10200) }, 'CORRUPT'],
    ['refcount table in the header cluster', { refcount_table_offset: u64be(0) }, 'CORRUPT'],
    ['refcount table past EOF', { refcount_table_offset: u64be(0x100000) }, 'CORRUPT'],
    ['nb_snapshots over 65536', { nb_snapshots: u32be(65537), snapshots_offset: u64be(0x20000) }, 'LIMIT'],
    ['snapshot table past EOF', { nb_snapshots: u32be(1), snapshots_offset: u64be(0x40000) }, 'CORRUPT'],
    ['snapshot table not aligned', { nb_snapshots: u32be(1), snapshots_offset: u64be(0x20008) }, 'CORRUPT'],
    ['l1_size too small for the size', { l1_size: u32be(1) }, 'CORRUPT'],
    ['l1_size over 32 MiB of entries', { l1_size: u32be(0x400001) }, 'LIMIT'],
    ['L1 not aligned', { l1_table_offset: u64be(0x30008) }, 'CORRUPT'],
    ['L1 past EOF', { l1_table_offset: u64be(0x40000) }, 'CORRUPT'],
    ['L1 offset past 2^53', { l1_table_offset: u64be(0x00f0000000000000n) }, 'CORRUPT'],
    ['virtual size past 2^53', { size: u64be(1n << 60n) }, 'LIMIT'],
    ['virtual size needing more than 32 MiB of L1', { size: u64be(1n << 52n), l1_size: u32be(0x400000) }, 'LIMIT'],
  ];
  for (const [label, overrides, expected] of invalid) {
    it(`refuses ${label} with ${expected}`, () => {
      expect(code(() => parseHeader(v3HeaderBytes(overrides), FILE_SIZE))).toBe(expected);
    });
  }

  it('refuses a file shorter than the header', () => {
    expect(code(() => decodeHeader(v3HeaderBytes().slice(0, 40)))).toBe('CORRUPT');
    expect(code(() => validateHeader(decodeHeader(v3HeaderBytes()), 100))).toBe('CORRUPT');
    expect(code(() => decodeHeader(new Uint8Array(2)))).toBe('WRONG_FORMAT');
  });
});

describe('header extensions', () => {
  /** Cluster 0 of `qemu-img create -b base.qcow2 -F qcow2` (extensions from 0x70, name at 0x210). */
  function cluster0WithBacking(): Uint8Array {
    const bytes = new Uint8Array(0x220);
    bytes.set(v3HeaderBytes({ backing_file_offset: u64be(0x210), backing_file_size: u32be(7) }));
    const ext = encodeExtensions([
      { type: ExtensionType.backingFormat, data: new TextEncoder().encode('qcow2') }, // 0x70: len 5, padded to 8
      featureNameTableExtension(), // 0x80: 8 entries of 48 bytes (0x180)
    ]);
    bytes.set(ext, 0x70); // end marker at 0x208
    bytes.set(new TextEncoder().encode('a.qcow2'), 0x210);
    return bytes;
  }

  it('parses backing format, feature table and the end marker where qemu puts them', () => {
    const bytes = cluster0WithBacking();
    const view = new DataView(bytes.buffer);
    expect(view.getUint32(0x70)).toBe(0xe2792aca);
    expect(view.getUint32(0x74)).toBe(5);
    expect(view.getUint32(0x80)).toBe(0x6803f857);
    expect(view.getUint32(0x84)).toBe(0x180);
    const extensions = parseExtensions(bytes, 0x70, 0x210, 0x10000);
    expect(extensions.backingFormat).toBe('qcow2');
    expect(extensions.featureNames).toHaveLength(8);
    expect(extensions.featureNames[0]).toEqual({ type: 0, bit: 0, name: 'dirty bit' });
    expect(extensions.featureNames[7]).toEqual({ type: 2, bit: 1, name: 'raw external data' });
    expect(extensions.end).toBe(0x210);
    expect(extensions.unknown).toEqual([]);
  });

  it('keeps unknown extensions byte for byte and parses bitmaps, encryption and data file extensions', () => {
    const bitmaps = Uint8Array.from([...u32be(2), ...u32be(0), ...u64be(0x40), ...u64be(0x50000)]);
    const encryption = Uint8Array.from([...u64be(0x40000), ...u64be(0x1f9000)]);
    const bytes = new Uint8Array(0x400);
    bytes.set(
      encodeExtensions([
        { type: 0x12345678, data: Uint8Array.from([1, 2, 3]) },
        { type: ExtensionType.bitmaps, data: bitmaps },
        { type: ExtensionType.fullDiskEncryption, data: encryption },
        { type: ExtensionType.externalDataFile, data: new TextEncoder().encode('data.raw') },
      ]),
      0x70,
    );
    const extensions = parseExtensions(bytes, 0x70, 0x400, 0x10000);
    expect(extensions.unknown).toEqual([{ type: 0x12345678, data: Uint8Array.from([1, 2, 3]) }]);
    expect(extensions.bitmaps).toEqual({ count: 2, directorySize: 0x40, directoryOffset: 0x50000 });
    expect(extensions.encryption).toEqual({ offset: 0x40000, length: 0x1f9000 });
    expect(extensions.dataFile).toBe('data.raw');
    expect(extensions.all.map((ext) => ext.type)).toEqual([0x12345678, ExtensionType.bitmaps, ExtensionType.fullDiskEncryption, ExtensionType.externalDataFile]);
  });

  it('re-encodes every extension, unknown ones included, byte for byte', () => {
    const original = encodeExtensions([
      { type: ExtensionType.backingFormat, data: new TextEncoder().encode('raw') },
      { type: 0x0badcafe, data: Uint8Array.from([9, 8, 7, 6, 5, 4, 3, 2, 1]) },
      featureNameTableExtension(),
    ]);
    const area = new Uint8Array(0x70 + original.length + 64);
    area.set(original, 0x70);
    const parsed = parseExtensions(area, 0x70, area.length, 0x10000);
    expect(parsed.end).toBe(0x70 + original.length);
    expect(encodeExtensions(parsed.all)).toEqual(original);
  });

  it('an area without end marker ends at its end', () => {
    const bytes = new Uint8Array(0x100);
    bytes.set([...u32be(0x12345678), ...u32be(8)], 0x70);
    bytes.fill(0x41, 0x78, 0x80);
    expect(parseExtensions(bytes, 0x70, 0x80, 0x10000).end).toBe(0x80);
  });

  const bad: [string, number[], string][] = [
    ['length past the area', [...u32be(0x12345678), ...u32be(0x1000)], 'CORRUPT'],
    ['backing format of 16 bytes', [...u32be(ExtensionType.backingFormat), ...u32be(16)], 'CORRUPT'],
    ['bitmaps extension of 16 bytes', [...u32be(ExtensionType.bitmaps), ...u32be(16)], 'CORRUPT'],
    ['bitmaps with zero bitmaps', [...u32be(ExtensionType.bitmaps), ...u32be(24), ...u32be(0), ...u32be(0), ...u64be(8), ...u64be(0x50000)], 'CORRUPT'],
    ['bitmap directory unaligned', [...u32be(ExtensionType.bitmaps), ...u32be(24), ...u32be(1), ...u32be(0), ...u64be(8), ...u64be(0x50008)], 'CORRUPT'],
    ['bitmap directory over 64 MiB', [...u32be(ExtensionType.bitmaps), ...u32be(24), ...u32be(1), ...u32be(0), ...u64be(1 << 27), ...u64be(0x50000)], 'LIMIT'],
    ['encryption extension of 8 bytes', [...u32be(ExtensionType.fullDiskEncryption), ...u32be(8)], 'CORRUPT'],
  ];
  for (const [label, fields, expected] of bad) {
    it(`refuses ${label}`, () => {
      const bytes = new Uint8Array(0x100);
      bytes.set(fields, 0x70);
      let code: string | undefined;
      try {
        parseExtensions(bytes, 0x70, 0x100, 0x10000);
      } catch (error) {
        code = (error as { code?: string }).code;
      }
      expect(code).toBe(expected);
    });
  }

  it('refuses an extension header cut by the end of the area', () => {
    const bytes = new Uint8Array(0x100);
    bytes.set(u32be(0x12345678), 0x70);
    expect(() => parseExtensions(bytes, 0x70, 0x74, 0x10000)).toThrow(expect.objectContaining({ code: 'CORRUPT' }));
  });
});
