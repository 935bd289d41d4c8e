import { ByteView } from '@ic/core/sdk';
import { vhdChecksum } from './footer.js';

/** The dynamic disk header: 1024 big-endian bytes at the footer's data_offset (qemu: 0x200). */
export const DYNAMIC_HEADER_FIELDS = {
  /** 8 bytes "cxsparse". */
  cookie: { offset: 0, size: 8 },
  /** u64 next structure: all ones (the specification says 0xFFFFFFFF; Microsoft's tools want 64 bits set). */
  dataOffset: { offset: 8, size: 8 },
  /** u64 byte offset of the block allocation table. */
  tableOffset: { offset: 16, size: 8 },
  /** u32 0x00010000. */
  version: { offset: 24, size: 4 },
  /** u32 BAT entries (qemu: one per block of the disk). */
  maxTableEntries: { offset: 28, size: 4 },
  /** u32 bytes per block: a power of two of at least 512 for qemu (it writes 2 MiB). */
  blockSize: { offset: 32, size: 4 },
  /** u32 one's complement of the byte sum, this field taken as zero (qemu does not check it). */
  checksum: { offset: 36, size: 4 },
  /** Differencing disks only: parent UUID, timestamp, UTF-16BE name and eight locators. */
  parentUuid: { offset: 40, size: 16 },
  parentTimestamp: { offset: 56, size: 4 },
  parentName: { offset: 64, size: 512 },
  parentLocators: { offset: 576, size: 192 },
} as const;

export const DYNAMIC_HEADER_LENGTH = 1024;
export const DYNAMIC_COOKIE = 'cxsparse';
export const DYNAMIC_HEADER_VERSION = 0x00010000;
/** qemu's create_dynamic_disk(): 2 MiB blocks. */
export const DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
/** qemu refuses max_table_entries above INT_MAX / 4 ("Max Table Entries too large"). */
export const MAX_TABLE_ENTRIES = Math.floor(0x7fffffff / 4);

export interface DynamicHeader {
  cookieOk: boolean;
  tableOffset: bigint;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  parentName: string;
}

export function parseDynamicHeader(bytes: Uint8Array): DynamicHeader {
  const view = new ByteView(bytes);
  const f = DYNAMIC_HEADER_FIELDS;
  let cookieOk = true;
  for (let i = 0; i < 8; i++) if (bytes[i] !== DYNAMIC_COOKIE.charCodeAt(i)) cookieOk = false;
  // The parent name is UTF-16 big-endian, NUL-padded.
  let parentName = '';
  for (let at = f.parentName.offset; at < f.parentName.offset + f.parentName.size; at += 2) {
    const unit = view.u16be(at);
    if (unit === 0) break;
    parentName += String.fromCharCode(unit);
  }
  return {
    cookieOk,
    tableOffset: view.u64beBig(f.tableOffset.offset),
    version: view.u32be(f.version.offset),
    maxTableEntries: view.u32be(f.maxTableEntries.offset),
    blockSize: view.u32be(f.blockSize.offset),
    parentName,
  };
}

/** The 1024 bytes of a dynamic (not differencing) disk header, as qemu writes it, checksum computed. */
export function serializeDynamicHeader(fields: { tableOffset: number; maxTableEntries: number; blockSize: number }): Uint8Array {
  const view = ByteView.alloc(DYNAMIC_HEADER_LENGTH);
  const f = DYNAMIC_HEADER_FIELDS;
  for (let i = 0; i < 8; i++) view.setU8(i, DYNAMIC_COOKIE.charCodeAt(i));
  view.setU64be(f.dataOffset.offset, 0xffff_ffff_ffff_ffffn);
  view.setU64be(f.tableOffset.offset, fields.tableOffset);
  view.setU32be(f.version.offset, DYNAMIC_HEADER_VERSION);
  view.setU32be(f.maxTableEntries.offset, fields.maxTableEntries);
  view.setU32be(f.blockSize.offset, fields.blockSize);
  view.setU32be(f.checksum.offset, vhdChecksum(view.bytes, f.checksum.offset));
  return view.bytes;
}
