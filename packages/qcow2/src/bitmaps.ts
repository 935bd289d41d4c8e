import type { BlockIO } from '@ic/core/sdk';
import { corruptAt, hex } from './errors.js';
import type { BitmapsExtension } from './extensions.js';

/** Bitmap directory entry (big-endian), padded to a multiple of 8 bytes. */
export const BitmapDirectoryField = {
  /** u64 host offset of the bitmap table, cluster-aligned */
  tableOffset: 0,
  /** u32 entries of the bitmap table */
  tableSize: 8,
  /** u32 flags: bit 0 in use, bit 1 auto, bit 2 extra data compatible */
  flags: 12,
  /** u8 bitmap type: 1 = dirty tracking */
  type: 16,
  /** u8 log2 of the bytes covered by one bit, 9..31 */
  granularityBits: 17,
  /** u16 name length */
  nameSize: 18,
  /** u32 extra data length */
  extraDataSize: 20,
  fixedSize: 24,
} as const;

export const BitmapFlag = { inUse: 1, auto: 2, extraDataCompatible: 4 } as const;

/** Bitmap table entry: bits 9..55 data cluster offset; bit 0 "all ones" when the offset is 0. */
export const BitmapTableEntry = {
  offsetMask: 0x00fffffffffffe00n,
  reservedMask: 0xff000000000001fen,
  allOnes: 1n,
} as const;

/** qemu's limits. */
export const MAX_BITMAP_TABLE_ENTRIES = 0x8000000;
export const MAX_BITMAP_NAME_SIZE = 1023;

export interface BitmapEntry {
  name: string;
  flags: number;
  type: number;
  granularityBits: number;
  tableOffset: number;
  tableSize: number;
}

/** Reads and validates the bitmap directory named by the bitmaps extension. */
export async function readBitmapDirectory(io: BlockIO, extension: BitmapsExtension, clusterSize: number, fileSize: number): Promise<BitmapEntry[]> {
  const { directoryOffset, directorySize, count } = extension;
  if (directoryOffset < clusterSize || directoryOffset + directorySize > fileSize) {
    throw corruptAt(`bitmap directory ${hex(directoryOffset)}+${hex(directorySize)} is outside the file or in the header cluster`, directoryOffset);
  }
  const bytes = await io.read(directoryOffset, directorySize);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const decoder = new TextDecoder();
  const entries: BitmapEntry[] = [];
  let at = 0;
  for (let index = 0; index < count; index++) {
    if (at + BitmapDirectoryField.fixedSize > directorySize) throw corruptAt(`bitmap directory entry ${index} runs past the directory`, directoryOffset + at);
    const tableOffset = Number(view.getBigUint64(at + BitmapDirectoryField.tableOffset));
    const tableSize = view.getUint32(at + BitmapDirectoryField.tableSize);
    const flags = view.getUint32(at + BitmapDirectoryField.flags);
    const type = view.getUint8(at + BitmapDirectoryField.type);
    const granularityBits = view.getUint8(at + BitmapDirectoryField.granularityBits);
    const nameSize = view.getUint16(at + BitmapDirectoryField.nameSize);
    const extraDataSize = view.getUint32(at + BitmapDirectoryField.extraDataSize);
    const entryLength = BitmapDirectoryField.fixedSize + extraDataSize + nameSize;
    if (at + entryLength > directorySize) throw corruptAt(`bitmap directory entry ${index} runs past the directory`, directoryOffset + at);
    if (nameSize === 0 || nameSize > MAX_BITMAP_NAME_SIZE) throw corruptAt(`bitmap ${index} has a name of ${nameSize} bytes`, directoryOffset + at);
    if (tableSize > MAX_BITMAP_TABLE_ENTRIES) throw corruptAt(`bitmap ${index} table of ${tableSize} entries is too large`, directoryOffset + at);
    if (granularityBits < 9 || granularityBits > 31) throw corruptAt(`bitmap ${index} granularity_bits ${granularityBits} is outside 9..31`, directoryOffset + at);
    if (tableOffset % clusterSize !== 0) throw corruptAt(`bitmap ${index} table offset ${hex(tableOffset)} is not cluster-aligned`, directoryOffset + at);
    const nameStart = at + BitmapDirectoryField.fixedSize + extraDataSize;
    entries.push({
      name: decoder.decode(bytes.subarray(nameStart, nameStart + nameSize)),
      flags,
      type,
      granularityBits,
      tableOffset,
      tableSize,
    });
    at += Math.ceil(entryLength / 8) * 8;
  }
  return entries;
}

/** qemu-img info's "flags" list of one bitmap. */
export function bitmapFlagNames(flags: number): string[] {
  const names: string[] = [];
  if (flags & BitmapFlag.inUse) names.push('in-use');
  if (flags & BitmapFlag.auto) names.push('auto');
  return names;
}
