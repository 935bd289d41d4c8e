import { corruptAt, hex, limitExceeded } from './errors.js';

/**
 * Header extensions follow the header (v3: at header_length, v2: at 72). Each is
 *   u32 type, u32 length, `length` bytes of data, zero padding to a multiple of 8.
 * Type 0 ends the list. The area runs to the backing file name when there is one, else to the end of
 * cluster 0. Unknown types are skipped (and preserved by qemu).
 */
export const ExtensionType = {
  end: 0x00000000,
  /** backing file format name, shorter than 16 bytes (e.g. "raw") */
  backingFormat: 0xe2792aca,
  /** 48-byte entries naming feature bits: u8 type, u8 bit, char name[46] */
  featureNameTable: 0x6803f857,
  /** u32 nb_bitmaps, u32 reserved, u64 bitmap_directory_size, u64 bitmap_directory_offset */
  bitmaps: 0x23852875,
  /** full disk encryption header: u64 offset, u64 length (LUKS header and key slots) */
  fullDiskEncryption: 0x0537be77,
  /** external data file name ("DATA") */
  externalDataFile: 0x44415441,
} as const;

/** Byte layout of one entry of the feature name table. */
export const FeatureNameEntry = { type: 0, bit: 1, name: 2, nameLength: 46, size: 48 } as const;
export const FeatureType = { incompatible: 0, compatible: 1, autoclear: 2 } as const;

/** Byte layout of the bitmaps extension data. */
export const BitmapsExtensionField = { count: 0, reserved: 4, directorySize: 8, directoryOffset: 16, size: 24 } as const;

/** qemu: backing format names are shorter than 16 bytes. */
export const MAX_BACKING_FORMAT_LENGTH = 15;
export const MAX_BITMAPS = 65535;
/** qemu: bitmap directory of at most 64 MiB. */
export const MAX_BITMAP_DIRECTORY_SIZE = 64 * 1024 * 1024;

export interface FeatureName {
  type: number;
  bit: number;
  name: string;
}

export interface BitmapsExtension {
  count: number;
  directorySize: number;
  directoryOffset: number;
}

export interface EncryptionExtension {
  offset: number;
  length: number;
}

export interface RawExtension {
  type: number;
  data: Uint8Array;
}

export interface HeaderExtensions {
  backingFormat?: string;
  featureNames: FeatureName[];
  bitmaps?: BitmapsExtension;
  encryption?: EncryptionExtension;
  dataFile?: string;
  /** Extensions of types we do not know, kept byte for byte. */
  unknown: RawExtension[];
  /** Every extension in file order (including known ones), for re-serialisation. */
  all: RawExtension[];
  /** Host offset just past the end marker (or the end of the area when there is none). */
  end: number;
}

const decoder = new TextDecoder('utf-8', { fatal: false });

/** Bytes up to the first NUL, as UTF-8: how qemu's C strings read a stored name. */
export function cString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decoder.decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

function u64Number(view: DataView, offset: number, what: string, at: number): number {
  const value = view.getBigUint64(offset, false);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw corruptAt(`${what} 0x${value.toString(16)} lies past any possible end of file`, at);
  return Number(value);
}

/**
 * Parses the extension area [start, areaEnd) of `head` (the first bytes of the file, indexable by host
 * offset). Every length is checked against the area before it is used.
 */
export function parseExtensions(head: Uint8Array, start: number, areaEnd: number, clusterSize: number): HeaderExtensions {
  const out: HeaderExtensions = { featureNames: [], unknown: [], all: [], end: areaEnd };
  if (areaEnd > head.length) throw corruptAt(`header extension area ends at ${hex(areaEnd)}, past the bytes read`, start);
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  let offset = start;
  while (offset < areaEnd) {
    if (offset + 8 > areaEnd) throw corruptAt('header extension header runs past the extension area', offset);
    const type = view.getUint32(offset);
    const length = view.getUint32(offset + 4);
    const dataStart = offset + 8;
    if (type === ExtensionType.end) {
      out.end = dataStart;
      return out;
    }
    if (length > areaEnd - dataStart) {
      throw corruptAt(`header extension 0x${type.toString(16)} of ${length} bytes runs past the extension area (${hex(areaEnd)})`, offset);
    }
    const data = head.slice(dataStart, dataStart + length);
    const dataView = new DataView(data.buffer);
    out.all.push({ type, data });
    switch (type) {
      case ExtensionType.backingFormat:
        if (length > MAX_BACKING_FORMAT_LENGTH) throw corruptAt(`backing format extension of ${length} bytes is too long (max 15)`, offset);
        out.backingFormat = cString(data);
        break;
      case ExtensionType.featureNameTable:
        for (let at = 0; at + FeatureNameEntry.size <= length; at += FeatureNameEntry.size) {
          out.featureNames.push({
            type: data[at + FeatureNameEntry.type]!,
            bit: data[at + FeatureNameEntry.bit]!,
            name: cString(data.subarray(at + FeatureNameEntry.name, at + FeatureNameEntry.name + FeatureNameEntry.nameLength)),
          });
        }
        break;
      case ExtensionType.bitmaps: {
        if (length !== BitmapsExtensionField.size) throw corruptAt(`bitmaps extension has length ${length}, expected 24`, offset);
        const count = dataView.getUint32(BitmapsExtensionField.count);
        const reserved = dataView.getUint32(BitmapsExtensionField.reserved);
        const directorySize = u64Number(dataView, BitmapsExtensionField.directorySize, 'bitmap directory size', offset);
        const directoryOffset = u64Number(dataView, BitmapsExtensionField.directoryOffset, 'bitmap directory offset', offset);
        if (count === 0 || count > MAX_BITMAPS) throw corruptAt(`bitmaps extension claims ${count} bitmaps (1..${MAX_BITMAPS})`, offset);
        if (reserved !== 0) throw corruptAt('bitmaps extension reserved field is not zero', offset);
        if (directorySize > MAX_BITMAP_DIRECTORY_SIZE) throw limitExceeded(`bitmap directory of ${directorySize} bytes exceeds 64 MiB`, offset);
        if (directoryOffset % clusterSize !== 0) throw corruptAt(`bitmap directory offset ${hex(directoryOffset)} is not cluster-aligned`, offset);
        out.bitmaps = { count, directorySize, directoryOffset };
        break;
      }
      case ExtensionType.fullDiskEncryption: {
        if (length !== 16) throw corruptAt(`encryption header extension has length ${length}, expected 16`, offset);
        const encryptionOffset = u64Number(dataView, 0, 'encryption header offset', offset);
        const encryptionLength = u64Number(dataView, 8, 'encryption header length', offset);
        if (encryptionOffset % clusterSize !== 0) throw corruptAt(`encryption header offset ${hex(encryptionOffset)} is not cluster-aligned`, offset);
        out.encryption = { offset: encryptionOffset, length: encryptionLength };
        break;
      }
      case ExtensionType.externalDataFile:
        out.dataFile = cString(data);
        break;
      default:
        out.unknown.push({ type, data });
    }
    offset = dataStart + Math.ceil(length / 8) * 8;
  }
  out.end = Math.min(offset, areaEnd);
  return out;
}

/** Encodes extensions followed by the end marker; each one padded to 8 bytes. */
export function encodeExtensions(extensions: readonly RawExtension[]): Uint8Array {
  const total = extensions.reduce((sum, ext) => sum + 8 + Math.ceil(ext.data.length / 8) * 8, 0) + 8;
  const bytes = new Uint8Array(total);
  const view = new DataView(bytes.buffer);
  let offset = 0;
  for (const ext of extensions) {
    view.setUint32(offset, ext.type);
    view.setUint32(offset + 4, ext.data.length);
    bytes.set(ext.data, offset + 8);
    offset += 8 + Math.ceil(ext.data.length / 8) * 8;
  }
  // End marker: type 0, length 0 (already zero).
  return bytes;
}

export function backingFormatExtension(format: string): RawExtension {
  return { type: ExtensionType.backingFormat, data: new TextEncoder().encode(format) };
}

/** The feature names qemu 7.2 writes into every version 3 image it creates. */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  { type: FeatureType.incompatible, bit: 0, name: 'dirty bit' },
  { type: FeatureType.incompatible, bit: 1, name: 'corrupt bit' },
  { type: FeatureType.incompatible, bit: 2, name: 'external data file' },
  { type: FeatureType.incompatible, bit: 3, name: 'compression type' },
  { type: FeatureType.incompatible, bit: 4, name: 'extended L2 entries' },
  { type: FeatureType.compatible, bit: 0, name: 'lazy refcounts' },
  { type: FeatureType.autoclear, bit: 0, name: 'bitmaps' },
  { type: FeatureType.autoclear, bit: 1, name: 'raw external data' },
];

export function featureNameTableExtension(names: readonly FeatureName[] = QEMU_FEATURE_NAMES): RawExtension {
  const data = new Uint8Array(names.length * FeatureNameEntry.size);
  names.forEach((feature, index) => {
    const at = index * FeatureNameEntry.size;
    data[at + FeatureNameEntry.type] = feature.type;
    data[at + FeatureNameEntry.bit] = feature.bit;
    data.set(new TextEncoder().encode(feature.name).subarray(0, FeatureNameEntry.nameLength), at + FeatureNameEntry.name);
  });
  return { type: ExtensionType.featureNameTable, data };
}
