import { corruptAt, hex, limitExceeded, unsupportedFeature, FORMAT } from './errors.js';
import { IcError } from '@ic/core/sdk';

/** "QFI\xfb" */
export const QCOW2_MAGIC = 0x514649fb;

/**
 * Byte offsets of the header fields. All fields are big-endian; the header lies at file offset 0 and the
 * whole of cluster 0 belongs to it (header, extensions and backing file name).
 */
export const HeaderField = {
  /** u32 magic "QFI\xfb" */
  magic: 0,
  /** u32 format version: 2 or 3 */
  version: 4,
  /** u64 offset of the backing file name inside cluster 0; 0 = no backing file */
  backingFileOffset: 8,
  /** u32 length of the backing file name (not NUL-terminated), at most 1023 */
  backingFileSize: 16,
  /** u32 log2 of the cluster size; qemu accepts 9..21 (512 B..2 MiB) */
  clusterBits: 20,
  /** u64 virtual disk size in bytes (qemu uses size / 512 sectors) */
  size: 24,
  /** u32 0 none, 1 AES-CBC (legacy), 2 LUKS */
  cryptMethod: 32,
  /** u32 number of entries of the active L1 table */
  l1Size: 36,
  /** u64 host offset of the active L1 table, cluster-aligned */
  l1TableOffset: 40,
  /** u64 host offset of the refcount table, cluster-aligned */
  refcountTableOffset: 48,
  /** u32 length of the refcount table in clusters, at least 1 */
  refcountTableClusters: 56,
  /** u32 number of internal snapshots, at most 65536 */
  nbSnapshots: 60,
  /** u64 host offset of the snapshot table, cluster-aligned */
  snapshotsOffset: 64,
  // ---- version 3 only (a version 2 header ends here, at 72) ----
  /** u64 incompatible feature bits: an unknown one means "do not open" */
  incompatibleFeatures: 72,
  /** u64 compatible feature bits: unknown ones may be ignored */
  compatibleFeatures: 80,
  /** u64 autoclear feature bits: a writer that does not know one clears it */
  autoclearFeatures: 88,
  /** u32 refcount width: refcount_bits = 1 << refcount_order, order 0..6 */
  refcountOrder: 96,
  /** u32 length of the header structure (v3: >= 104, multiple of 8) */
  headerLength: 100,
  /** u8 compression type, present only when header_length > 104: 0 zlib, 1 zstd */
  compressionType: 104,
  // 105..111: padding to a multiple of 8
} as const;

/** Length of a version 2 header; its extensions start here. */
export const V2_HEADER_LENGTH = 72;
/** Shortest valid version 3 header (no compression type byte). */
export const V3_MIN_HEADER_LENGTH = 104;
/** What qemu 7.2 writes: the compression type byte plus 7 bytes of padding. */
export const V3_HEADER_LENGTH = 112;

/** Incompatible feature bits (header offset 72). */
export const IncompatibleFeature = {
  /** refcounts may be stale (lazy refcounts in use, image not closed cleanly) */
  dirty: 1n << 0n,
  /** the image is known to be corrupt; read-only use at most */
  corrupt: 1n << 1n,
  /** guest data lives in an external data file */
  externalDataFile: 1n << 2n,
  /** compression type field is not zlib */
  compressionType: 1n << 3n,
  /** L2 entries are 16 bytes with a subcluster bitmap */
  extendedL2: 1n << 4n,
} as const;
export const KNOWN_INCOMPATIBLE = 0x1fn;

/** Compatible feature bits (header offset 80). */
export const CompatibleFeature = {
  /** refcount updates may be delayed; the dirty bit then tells whether they are stale */
  lazyRefcounts: 1n << 0n,
} as const;

/** Autoclear feature bits (header offset 88). */
export const AutoclearFeature = {
  /** the bitmaps extension is consistent with the image */
  bitmaps: 1n << 0n,
  /** the external data file is a valid raw image on its own */
  dataFileRaw: 1n << 1n,
} as const;
export const KNOWN_AUTOCLEAR = 0x3n;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** Extended L2 entries need 32 subclusters of at least 512 bytes. */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;
export const MAX_BACKING_NAME_LENGTH = 1023;
/** qemu: at most 32 MiB of active L1 table. */
export const MAX_L1_ENTRIES = (32 * 1024 * 1024) / 8;
/** qemu: at most 8 MiB of refcount table. */
export const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_REFCOUNT_ORDER = 6;
/** Host offsets in L1/L2 entries have 56 bits. */
export const MAX_HOST_OFFSET = 2 ** 56;

export type CompressionType = 'zlib' | 'zstd';

/** The decoded header. Offsets are numbers (refused beyond 2^53); feature words stay bigint. */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** The size field as stored. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
}

export function clusterSizeOf(header: Pick<Qcow2Header, 'clusterBits'>): number {
  return 2 ** header.clusterBits;
}

/** qemu works in 512-byte sectors and drops a partial last sector of the size field. */
export function virtualSizeOf(header: Pick<Qcow2Header, 'size'>): number {
  return Math.floor(header.size / 512) * 512;
}

export function hasFeature(word: bigint, bit: bigint): boolean {
  return (word & bit) !== 0n;
}

export function isExtendedL2(header: Qcow2Header): boolean {
  return hasFeature(header.incompatibleFeatures, IncompatibleFeature.extendedL2);
}

/** Entries per L2 table: 8-byte entries, or 16-byte entries with extended L2. */
export function l2EntriesOf(header: Qcow2Header): number {
  return clusterSizeOf(header) / (isExtendedL2(header) ? 16 : 8);
}

/** L1 entries needed to map `size` bytes. */
export function l1EntriesNeeded(size: number, clusterBits: number, l2EntryBytes: number): number {
  const bytesPerL2 = 2 ** clusterBits * (2 ** clusterBits / l2EntryBytes);
  return Math.ceil(size / bytesPerL2);
}

function u64(view: DataView, offset: number): bigint {
  return view.getBigUint64(offset, false);
}

/** 64-bit offset field to number: anything past 2^53 lies past the end of any file we can open. */
function offsetField(view: DataView, offset: number, name: string): number {
  const value = u64(view, offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corruptAt(`header field ${name} (0x${value.toString(16)}) lies past any possible end of file`, offset);
  }
  return Number(value);
}

/**
 * Decodes the header fields from the first bytes of the file (at least 72; 112 or more for version 3).
 * Checks only what is needed to read the fields at all: magic, version and length. validateHeader does
 * the rest.
 */
export function decodeHeader(bytes: Uint8Array): Qcow2Header {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 4 || view.getUint32(HeaderField.magic) !== QCOW2_MAGIC) {
    throw new IcError('WRONG_FORMAT', `${FORMAT}: not a qcow2 image (bad magic)`, { format: FORMAT, offset: 0 });
  }
  if (bytes.length < V2_HEADER_LENGTH) {
    throw corruptAt(`file is too short for a header (${bytes.length} bytes, need ${V2_HEADER_LENGTH})`, 0);
  }
  const version = view.getUint32(HeaderField.version);
  if (version !== 2 && version !== 3) {
    throw unsupportedFeature(
      version === 1 ? 'version 1 (qcow) images are not supported' : `unsupported version ${version} (only 2 and 3 exist)`,
    );
  }
  const clusterBits = view.getUint32(HeaderField.clusterBits);
  const sizeValue = u64(view, HeaderField.size);
  if (sizeValue > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw limitExceeded(`virtual size 0x${sizeValue.toString(16)} exceeds 2^53 bytes`, HeaderField.size);
  }
  const header: Qcow2Header = {
    version,
    backingFileOffset: offsetField(view, HeaderField.backingFileOffset, 'backing_file_offset'),
    backingFileSize: view.getUint32(HeaderField.backingFileSize),
    clusterBits,
    size: Number(sizeValue),
    cryptMethod: view.getUint32(HeaderField.cryptMethod),
    l1Size: view.getUint32(HeaderField.l1Size),
    l1TableOffset: offsetField(view, HeaderField.l1TableOffset, 'l1_table_offset'),
    refcountTableOffset: offsetField(view, HeaderField.refcountTableOffset, 'refcount_table_offset'),
    refcountTableClusters: view.getUint32(HeaderField.refcountTableClusters),
    nbSnapshots: view.getUint32(HeaderField.nbSnapshots),
    snapshotsOffset: offsetField(view, HeaderField.snapshotsOffset, 'snapshots_offset'),
    // Version 2 has no feature words; its refcounts are always 16 bits.
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
  };
  if (version === 3) {
    if (bytes.length < V3_MIN_HEADER_LENGTH) {
      throw corruptAt(`file is too short for a version 3 header (${bytes.length} bytes)`, 0);
    }
    header.incompatibleFeatures = u64(view, HeaderField.incompatibleFeatures);
    header.compatibleFeatures = u64(view, HeaderField.compatibleFeatures);
    header.autoclearFeatures = u64(view, HeaderField.autoclearFeatures);
    header.refcountOrder = view.getUint32(HeaderField.refcountOrder);
    header.headerLength = view.getUint32(HeaderField.headerLength);
    if (header.headerLength > V3_MIN_HEADER_LENGTH && bytes.length > HeaderField.compressionType) {
      header.compressionType = view.getUint8(HeaderField.compressionType);
    }
  }
  return header;
}

function requireAligned(value: number, clusterSize: number, name: string, fieldOffset: number): void {
  if (value % clusterSize !== 0) throw corruptAt(`${name} ${hex(value)} is not cluster-aligned`, fieldOffset);
}

/** A table [offset, offset+length) must be cluster-aligned, past cluster 0 and inside the file. */
function requireTable(offset: number, length: number, clusterSize: number, fileSize: number, name: string, fieldOffset: number): void {
  requireAligned(offset, clusterSize, `${name} offset`, fieldOffset);
  if (offset < clusterSize) throw corruptAt(`${name} at ${hex(offset)} overlaps the header cluster`, fieldOffset);
  if (offset + length > fileSize) {
    throw corruptAt(`${name} ${hex(offset)}+${hex(length)} runs past the end of the file (${hex(fileSize)})`, fieldOffset);
  }
}

/**
 * Checks every header field against explicit bounds (qemu's open-time checks plus "inside the file"),
 * before anything is allocated or iterated from it.
 */
export function validateHeader(header: Qcow2Header, fileSize: number): void {
  const { clusterBits } = header;
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw corruptAt(`cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS} (512 B..2 MiB)`, HeaderField.clusterBits);
  }
  const clusterSize = 2 ** clusterBits;
  if (header.version === 3) {
    if (header.headerLength < V3_MIN_HEADER_LENGTH) {
      throw corruptAt(`header_length ${header.headerLength} is shorter than ${V3_MIN_HEADER_LENGTH}`, HeaderField.headerLength);
    }
    if (header.headerLength % 8 !== 0) {
      throw corruptAt(`header_length ${header.headerLength} is not a multiple of 8`, HeaderField.headerLength);
    }
  }
  if (header.headerLength > clusterSize) {
    throw corruptAt(`header_length ${header.headerLength} exceeds the cluster size ${clusterSize}`, HeaderField.headerLength);
  }
  if (fileSize < header.headerLength) {
    throw corruptAt(`file (${fileSize} bytes) is shorter than its header (${header.headerLength} bytes)`, 0);
  }
  const unknownIncompatible = header.incompatibleFeatures & ~KNOWN_INCOMPATIBLE;
  if (unknownIncompatible !== 0n) {
    throw unsupportedFeature(`unknown incompatible feature bits 0x${unknownIncompatible.toString(16)}`);
  }
  if (header.compressionType > 1) {
    throw unsupportedFeature(`unknown compression type ${header.compressionType}`);
  }
  if ((header.compressionType !== 0) !== hasFeature(header.incompatibleFeatures, IncompatibleFeature.compressionType)) {
    throw corruptAt(
      `compression type ${header.compressionType} does not match the compression-type incompatible bit`,
      HeaderField.compressionType,
    );
  }
  if (isExtendedL2(header) && clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw corruptAt(`extended L2 entries need clusters of at least 16 KiB (cluster_bits ${clusterBits})`, HeaderField.clusterBits);
  }
  if (header.refcountOrder > MAX_REFCOUNT_ORDER) {
    throw corruptAt(`refcount_order ${header.refcountOrder} exceeds ${MAX_REFCOUNT_ORDER} (64-bit refcounts)`, HeaderField.refcountOrder);
  }
  if (header.cryptMethod > 2) throw unsupportedFeature(`unknown encryption method ${header.cryptMethod}`);

  if (header.backingFileOffset !== 0) {
    const { backingFileOffset: offset, backingFileSize: length } = header;
    if (offset > clusterSize) {
      throw corruptAt(`backing file name offset ${hex(offset)} lies outside cluster 0`, HeaderField.backingFileOffset);
    }
    if (length > MAX_BACKING_NAME_LENGTH || offset + length > clusterSize) {
      throw corruptAt(`backing file name (${length} bytes at ${hex(offset)}) is too long or leaves cluster 0`, HeaderField.backingFileSize);
    }
    if (offset < header.headerLength) {
      throw corruptAt(`backing file name offset ${hex(offset)} overlaps the header fields`, HeaderField.backingFileOffset);
    }
    if (offset + length > fileSize) {
      throw corruptAt(`backing file name ${hex(offset)}+${length} runs past the end of the file`, HeaderField.backingFileOffset);
    }
  }

  if (header.refcountTableClusters === 0) {
    throw corruptAt('refcount_table_clusters is 0 (the image has no refcount table)', HeaderField.refcountTableClusters);
  }
  const refcountTableBytes = header.refcountTableClusters * clusterSize;
  if (refcountTableBytes > MAX_REFCOUNT_TABLE_BYTES) {
    throw limitExceeded(`refcount table of ${header.refcountTableClusters} clusters exceeds 8 MiB`, HeaderField.refcountTableClusters);
  }
  requireTable(header.refcountTableOffset, refcountTableBytes, clusterSize, fileSize, 'refcount table', HeaderField.refcountTableOffset);

  if (header.nbSnapshots > MAX_SNAPSHOTS) {
    throw limitExceeded(`nb_snapshots ${header.nbSnapshots} exceeds ${MAX_SNAPSHOTS}`, HeaderField.nbSnapshots);
  }
  if (header.nbSnapshots > 0) {
    // Each snapshot entry is at least 40 bytes; the exact length is known only once parsed.
    requireTable(header.snapshotsOffset, 40, clusterSize, fileSize, 'snapshot table', HeaderField.snapshotsOffset);
  }

  const l2EntryBytes = isExtendedL2(header) ? 16 : 8;
  const needed = l1EntriesNeeded(header.size, clusterBits, l2EntryBytes);
  if (needed > MAX_L1_ENTRIES) {
    throw limitExceeded(`virtual size ${header.size} needs ${needed} L1 entries (more than 32 MiB of L1 table)`, HeaderField.size);
  }
  if (header.l1Size > MAX_L1_ENTRIES) {
    throw limitExceeded(`l1_size ${header.l1Size} exceeds ${MAX_L1_ENTRIES} entries (32 MiB)`, HeaderField.l1Size);
  }
  if (header.l1Size < needed) {
    throw corruptAt(`l1_size ${header.l1Size} is too small for virtual size ${header.size} (needs ${needed})`, HeaderField.l1Size);
  }
  if (header.l1Size > 0) {
    requireTable(header.l1TableOffset, header.l1Size * 8, clusterSize, fileSize, 'L1 table', HeaderField.l1TableOffset);
  } else {
    requireAligned(header.l1TableOffset, clusterSize, 'L1 table offset', HeaderField.l1TableOffset);
  }
}

/** Decodes and validates. `bytes` is the start of the file (at least the header). */
export function parseHeader(bytes: Uint8Array, fileSize: number): Qcow2Header {
  const header = decodeHeader(bytes);
  validateHeader(header, fileSize);
  return header;
}

/** Encodes the header structure (72 bytes for version 2, header_length bytes for version 3). */
export function encodeHeader(header: Qcow2Header): Uint8Array {
  const length = header.version === 2 ? V2_HEADER_LENGTH : header.headerLength;
  const bytes = new Uint8Array(length);
  const view = new DataView(bytes.buffer);
  view.setUint32(HeaderField.magic, QCOW2_MAGIC);
  view.setUint32(HeaderField.version, header.version);
  view.setBigUint64(HeaderField.backingFileOffset, BigInt(header.backingFileOffset));
  view.setUint32(HeaderField.backingFileSize, header.backingFileSize);
  view.setUint32(HeaderField.clusterBits, header.clusterBits);
  view.setBigUint64(HeaderField.size, BigInt(header.size));
  view.setUint32(HeaderField.cryptMethod, header.cryptMethod);
  view.setUint32(HeaderField.l1Size, header.l1Size);
  view.setBigUint64(HeaderField.l1TableOffset, BigInt(header.l1TableOffset));
  view.setBigUint64(HeaderField.refcountTableOffset, BigInt(header.refcountTableOffset));
  view.setUint32(HeaderField.refcountTableClusters, header.refcountTableClusters);
  view.setUint32(HeaderField.nbSnapshots, header.nbSnapshots);
  view.setBigUint64(HeaderField.snapshotsOffset, BigInt(header.snapshotsOffset));
  if (header.version === 3) {
    view.setBigUint64(HeaderField.incompatibleFeatures, header.incompatibleFeatures);
    view.setBigUint64(HeaderField.compatibleFeatures, header.compatibleFeatures);
    view.setBigUint64(HeaderField.autoclearFeatures, header.autoclearFeatures);
    view.setUint32(HeaderField.refcountOrder, header.refcountOrder);
    view.setUint32(HeaderField.headerLength, header.headerLength);
    if (length > HeaderField.compressionType) view.setUint8(HeaderField.compressionType, header.compressionType);
  }
  return bytes;
}
