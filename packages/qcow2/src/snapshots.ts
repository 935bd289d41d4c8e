import type { BlockIO } from '@ic/core/sdk';
import { corruptAt, hex, limitExceeded } from './errors.js';

/**
 * Internal snapshot table entry (big-endian), one after the other from snapshots_offset, each padded to
 * a multiple of 8 bytes.
 */
export const SnapshotField = {
  /** u64 host offset of the snapshot's L1 table */
  l1TableOffset: 0,
  /** u32 entries of that L1 table */
  l1Size: 8,
  /** u16 length of the id string */
  idSize: 12,
  /** u16 length of the name */
  nameSize: 14,
  /** u32 creation time, seconds */
  dateSeconds: 16,
  /** u32 creation time, nanoseconds */
  dateNanoseconds: 20,
  /** u64 guest clock at creation, nanoseconds */
  vmClockNanoseconds: 24,
  /** u32 size of the saved VM state (legacy 32-bit field) */
  vmStateSize: 32,
  /** u32 bytes of extra data that follow the fixed part (v3: at least 16) */
  extraDataSize: 36,
  /** fixed part ends here; then extra data, id string, name, padding */
  fixedSize: 40,
} as const;

/** qemu's limits for the snapshot table. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
export const MAX_SNAPSHOT_TABLE_SIZE = 64 * 1024 * 1024;

export interface Snapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  /** Bytes of extra data (version 3 needs at least 16: the 64-bit VM state size and the disk size). */
  extraDataSize: number;
  /** Host offset of this entry. */
  entryOffset: number;
}

export interface SnapshotTable {
  snapshots: Snapshot[];
  offset: number;
  /** Bytes the table occupies. */
  size: number;
}

const decoder = new TextDecoder();

/** Reads the snapshot table entry by entry, in chunks, never past the end of the file or 64 MiB. */
export async function readSnapshotTable(io: BlockIO, offset: number, count: number, fileSize: number): Promise<SnapshotTable> {
  const limit = Math.min(fileSize, offset + MAX_SNAPSHOT_TABLE_SIZE);
  let buffer: Uint8Array = new Uint8Array(0);
  let bufferStart = offset;
  const ensure = async (at: number, length: number, what: string): Promise<DataView> => {
    if (at + length > limit) {
      if (at + length > fileSize) throw corruptAt(`snapshot table: ${what} runs past the end of the file`, at);
      throw limitExceeded(`snapshot table exceeds ${MAX_SNAPSHOT_TABLE_SIZE} bytes`, offset);
    }
    if (at < bufferStart || at + length > bufferStart + buffer.length) {
      const chunk = Math.min(limit - at, Math.max(length, 64 * 1024));
      buffer = await io.read(at, chunk);
      bufferStart = at;
    }
    return new DataView(buffer.buffer, buffer.byteOffset + (at - bufferStart), length);
  };
  const snapshots: Snapshot[] = [];
  let at = offset;
  let end = offset;
  for (let index = 0; index < count; index++) {
    const fixed = await ensure(at, SnapshotField.fixedSize, `entry ${index}`);
    const l1High = fixed.getBigUint64(SnapshotField.l1TableOffset);
    const l1Size = fixed.getUint32(SnapshotField.l1Size);
    const idSize = fixed.getUint16(SnapshotField.idSize);
    const nameSize = fixed.getUint16(SnapshotField.nameSize);
    const extraDataSize = fixed.getUint32(SnapshotField.extraDataSize);
    if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw corruptAt(`snapshot ${index} has ${extraDataSize} bytes of extra data (max ${MAX_SNAPSHOT_EXTRA_DATA})`, at + SnapshotField.extraDataSize);
    }
    const variable = extraDataSize + idSize + nameSize;
    const names = await ensure(at + SnapshotField.fixedSize, variable, `entry ${index}`);
    const bytes = new Uint8Array(names.buffer, names.byteOffset, names.byteLength);
    snapshots.push({
      l1TableOffset: l1High > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(l1High),
      l1Size,
      id: decoder.decode(bytes.subarray(extraDataSize, extraDataSize + idSize)),
      name: decoder.decode(bytes.subarray(extraDataSize + idSize)),
      extraDataSize,
      entryOffset: at,
    });
    // The padding of the last entry need not exist in the file (qemu does not write it).
    end = at + SnapshotField.fixedSize + variable;
    at += Math.ceil((SnapshotField.fixedSize + variable) / 8) * 8;
  }
  if (end > fileSize) throw corruptAt(`snapshot table ${hex(offset)}..${hex(end)} runs past the end of the file`, offset);
  return { snapshots, offset, size: at - offset };
}
