/**
 * L1 and L2 table entries. Both tables hold big-endian u64 entries; with extended L2 each L2 entry is
 * followed by a u64 subcluster bitmap. Entries are decoded from their two 32-bit halves so that the hot
 * loops stay in plain numbers.
 *
 * L1 entry:  bit 63 COPIED (refcount of the L2 table is exactly 1)
 *            bits 9..55 L2 table offset (0 = no L2 table: everything under it is unallocated)
 *            bits 0..8 and 56..62 reserved (zero)
 * L2 entry:  bit 63 COPIED (refcount of the data cluster is exactly 1; never set on compressed clusters)
 *            bit 62 COMPRESSED
 *   standard descriptor (bit 62 clear):
 *            bit 0 ZERO (reads as zeros; v3 without extended L2)
 *            bits 1..8 reserved, bits 9..55 host cluster offset, bits 56..61 reserved
 *   compressed descriptor (bit 62 set), x = 62 - (cluster_bits - 8):
 *            bits 0..x-1 host byte offset, bits x..61 number of additional 512-byte sectors
 * Extended L2 bitmap (second u64): bits 0..31 subcluster allocated, bits 32..63 subcluster reads as zero.
 */

export const L1Entry = {
  copied: 1n << 63n,
  offsetMask: 0x00fffffffffffe00n,
  reservedMask: 0x7f000000000001ffn,
} as const;

export const L2Entry = {
  copied: 1n << 63n,
  compressed: 1n << 62n,
  zero: 1n,
  offsetMask: 0x00fffffffffffe00n,
  standardReservedMask: 0x3f000000000001fen,
} as const;

/** Refcount table entry: bits 9..63 refcount block offset, bits 0..8 reserved. */
export const RefcountTableEntry = {
  offsetMask: 0xfffffffffffffe00n,
  reservedMask: 0x1ffn,
} as const;

export const SUBCLUSTERS_PER_CLUSTER = 32;
const TWO_32 = 2 ** 32;

/** The geometry every table decoder needs. */
export interface TableGeometry {
  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  l2EntrySize: number;
  l2Entries: number;
  /** Guest bytes covered by one L2 table. */
  l2Coverage: number;
  subclusterSize: number;
  /** Version 3 images may use the zero flag; qemu refuses it in version 2 images when reading. */
  zeroFlagAllowed: boolean;
  hasDataFile: boolean;
}

export function tableGeometry(clusterBits: number, options: { extendedL2?: boolean; version?: number; hasDataFile?: boolean } = {}): TableGeometry {
  const clusterSize = 2 ** clusterBits;
  const extendedL2 = options.extendedL2 ?? false;
  const l2EntrySize = extendedL2 ? 16 : 8;
  const l2Entries = clusterSize / l2EntrySize;
  return {
    clusterBits,
    clusterSize,
    extendedL2,
    l2EntrySize,
    l2Entries,
    l2Coverage: l2Entries * clusterSize,
    subclusterSize: extendedL2 ? clusterSize / SUBCLUSTERS_PER_CLUSTER : clusterSize,
    zeroFlagAllowed: (options.version ?? 3) >= 3,
    hasDataFile: options.hasDataFile ?? false,
  };
}

/** 56-bit offset from the halves of an entry (bits 9..55). Past 2^53 the value is approximate but always huge. */
function offsetFromHalves(high: number, low: number): number {
  return (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0);
}

/** The u64 entry at `byteOffset` of a table in hex digits (no prefix), for messages. */
export function entryHex(table: DataView, byteOffset: number): string {
  return table.getBigUint64(byteOffset).toString(16);
}

export interface DecodedL1Entry {
  l2Offset: number;
  copied: boolean;
  reservedBitsSet: boolean;
  /** The whole entry is zero. */
  empty: boolean;
}

export function decodeL1Entry(table: DataView, index: number): DecodedL1Entry {
  const high = table.getUint32(index * 8);
  const low = table.getUint32(index * 8 + 4);
  return {
    l2Offset: offsetFromHalves(high, low),
    copied: (high & 0x80000000) !== 0,
    reservedBitsSet: (high & 0x7f000000) !== 0 || (low & 0x1ff) !== 0,
    empty: high === 0 && low === 0,
  };
}

export function encodeL1Entry(table: DataView, index: number, l2Offset: number, copied: boolean): void {
  table.setBigUint64(index * 8, BigInt(l2Offset) | (copied ? L1Entry.copied : 0n), false);
}

/** Cluster types as qemu classifies them. */
export type ClusterType = 'unallocated' | 'zero-plain' | 'zero-alloc' | 'normal' | 'compressed';

export interface DecodedL2Entry {
  type: ClusterType;
  /** Host cluster offset for 'normal' and 'zero-alloc' (0 otherwise, except with a data file). */
  hostOffset: number;
  copied: boolean;
  /** Reserved bits of a standard descriptor are set. */
  reservedBitsSet: boolean;
  /** The standard descriptor has the zero flag. */
  zeroFlag: boolean;
  /** Compressed: host byte offset of the compressed stream. */
  compressedOffset: number;
  /** Compressed: bytes to read (whole sectors minus the offset into the first one). */
  compressedLength: number;
  /** Extended L2: subclusters allocated (bits 0..31) and reading as zero (bits 32..63). */
  allocatedBitmap: number;
  zeroBitmap: number;
}

export function decodeL2Entry(table: DataView, index: number, geometry: TableGeometry): DecodedL2Entry {
  const at = index * geometry.l2EntrySize;
  const high = table.getUint32(at);
  const low = table.getUint32(at + 4);
  const copied = (high & 0x80000000) !== 0;
  const entry: DecodedL2Entry = {
    type: 'unallocated',
    hostOffset: 0,
    copied,
    reservedBitsSet: false,
    zeroFlag: false,
    compressedOffset: 0,
    compressedLength: 0,
    allocatedBitmap: 0,
    zeroBitmap: 0,
  };
  if (geometry.extendedL2) {
    entry.zeroBitmap = table.getUint32(at + 8);
    entry.allocatedBitmap = table.getUint32(at + 12);
  }
  if ((high & 0x40000000) !== 0) {
    entry.type = 'compressed';
    const raw = (BigInt(high) << 32n) | BigInt(low);
    const offsetBits = BigInt(62 - (geometry.clusterBits - 8));
    const sectorMask = (1n << BigInt(geometry.clusterBits - 8)) - 1n;
    const offset = Number(raw & ((1n << offsetBits) - 1n));
    const sectors = Number((raw >> offsetBits) & sectorMask) + 1;
    entry.compressedOffset = offset;
    entry.compressedLength = sectors * 512 - (offset % 512);
    return entry;
  }
  entry.hostOffset = offsetFromHalves(high, low);
  entry.reservedBitsSet = (high & 0x3f000000) !== 0 || (low & 0x1fe) !== 0;
  entry.zeroFlag = (low & 1) !== 0;
  if (entry.zeroFlag && !geometry.extendedL2) {
    entry.type = entry.hostOffset !== 0 ? 'zero-alloc' : 'zero-plain';
  } else if (entry.hostOffset === 0) {
    // Offset 0 is ambiguous with a data file (guest offset 0 maps there); COPIED disambiguates.
    entry.type = geometry.hasDataFile && copied ? 'normal' : 'unallocated';
  } else {
    entry.type = 'normal';
  }
  return entry;
}

/** Writes a standard L2 entry (and an all-zero bitmap for extended L2). */
export function encodeL2Entry(table: DataView, index: number, geometry: TableGeometry, entry: { hostOffset: number; copied: boolean; zero?: boolean }): void {
  let raw = BigInt(entry.hostOffset);
  if (entry.copied) raw |= L2Entry.copied;
  if (entry.zero) raw |= L2Entry.zero;
  table.setBigUint64(index * geometry.l2EntrySize, raw, false);
}

/** Subcluster types of extended L2 entries (and, per cluster, of ordinary ones), as qemu names them. */
export type SubclusterType =
  | 'normal'
  | 'zero-alloc'
  | 'zero-plain'
  | 'unallocated-alloc'
  | 'unallocated-plain'
  | 'compressed'
  | 'invalid';

/** The type of subcluster `index` (0..31) of an entry. Without extended L2 every subcluster has the cluster's type. */
export function subclusterType(entry: DecodedL2Entry, index: number, geometry: TableGeometry): SubclusterType {
  if (!geometry.extendedL2) {
    switch (entry.type) {
      case 'normal':
        return 'normal';
      case 'zero-alloc':
        return 'zero-alloc';
      case 'zero-plain':
        return 'zero-plain';
      case 'compressed':
        return 'compressed';
      case 'unallocated':
        return 'unallocated-plain';
    }
  }
  const allocated = ((entry.allocatedBitmap >>> index) & 1) !== 0;
  const zero = ((entry.zeroBitmap >>> index) & 1) !== 0;
  switch (entry.type) {
    case 'compressed':
      return 'compressed';
    case 'normal':
      if ((entry.zeroBitmap & entry.allocatedBitmap) !== 0) return 'invalid';
      if (zero) return 'zero-alloc';
      if (allocated) return 'normal';
      return 'unallocated-alloc';
    default:
      // With extended L2 a cluster without host offset is 'unallocated' (the zero flag is not used).
      if (entry.allocatedBitmap !== 0) return 'invalid';
      return zero ? 'zero-plain' : 'unallocated-plain';
  }
}

/** Reads the L1 entry index and L2 index of a guest offset. */
export function guestIndices(guestOffset: number, geometry: TableGeometry): { l1Index: number; l2Index: number } {
  const cluster = Math.floor(guestOffset / geometry.clusterSize);
  return { l1Index: Math.floor(cluster / geometry.l2Entries), l2Index: cluster % geometry.l2Entries };
}
