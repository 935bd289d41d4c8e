import { alignDown, ByteView, IcError, isPowerOfTwo, log2 } from '@ic/core/sdk';

/** Name used in messages and as the qemu-img format name. */
export const FORMAT = 'qed';

/**
 * The QED header: 64 little-endian bytes at file offset 0 (QEMU docs/interop/qed_spec.txt).
 * Every field is present in every image, whatever the feature bits say.
 */
export const HEADER_FIELDS = {
  /** u32 "QED\0" (bytes 51 45 44 00). */
  magic: { offset: 0, size: 4 },
  /** u32 bytes per cluster: a power of two in [4 KiB, 64 MiB]. */
  clusterSize: { offset: 4, size: 4 },
  /** u32 clusters per L1 or L2 table: a power of two in [1, 16]. */
  tableSize: { offset: 8, size: 4 },
  /** u32 clusters at offset 0 that belong to the header (qemu writes 1). */
  headerSize: { offset: 12, size: 4 },
  /** u64 incompatible features: an unknown bit means the image must not be opened. */
  features: { offset: 16, size: 8 },
  /** u64 compatible features: none defined, unknown bits are ignored. */
  compatFeatures: { offset: 24, size: 8 },
  /** u64 auto-clear features: none defined, a writer clears unknown bits. */
  autoclearFeatures: { offset: 32, size: 8 },
  /** u64 byte offset of the L1 table (cluster-aligned, table_size clusters long). */
  l1TableOffset: { offset: 40, size: 8 },
  /** u64 guest size in bytes (a multiple of 512). */
  imageSize: { offset: 48, size: 8 },
  /** u32 byte offset of the backing file name (qemu writes 64). */
  backingFilenameOffset: { offset: 56, size: 4 },
  /** u32 length of the backing file name, no NUL terminator. */
  backingFilenameSize: { offset: 60, size: 4 },
} as const;

/** Bytes of the fixed header. */
export const HEADER_LENGTH = 64;
/** "QED\0" read as a little-endian u32. */
export const QED_MAGIC = 0x00444551;

/** features bit 0: the image has a backing file whose name is in the header region. */
export const FEATURE_BACKING_FILE = 0x1n;
/** features bit 1: the image was not closed cleanly; tables must be checked before trusting them. */
export const FEATURE_NEED_CHECK = 0x2n;
/** features bit 2: the backing file is raw and must not be probed. */
export const FEATURE_BACKING_FORMAT_NO_PROBE = 0x4n;
export const KNOWN_FEATURES = FEATURE_BACKING_FILE | FEATURE_NEED_CHECK | FEATURE_BACKING_FORMAT_NO_PROBE;

export const MIN_CLUSTER_SIZE = 4 * 1024;
export const MAX_CLUSTER_SIZE = 64 * 1024 * 1024;
export const DEFAULT_CLUSTER_SIZE = 64 * 1024;
export const MIN_TABLE_SIZE = 1;
export const MAX_TABLE_SIZE = 16;
export const DEFAULT_TABLE_SIZE = 4;
/** qemu reads the backing name into a PATH_MAX (4096) buffer that must also hold the NUL. */
export const MAX_BACKING_NAME_LENGTH = 4095;
/** The image size must be a whole number of 512-byte sectors. */
export const SECTOR_SIZE = 512;

export interface QedHeader {
  clusterSize: number;
  tableSize: number;
  /** In clusters. */
  headerSize: number;
  features: bigint;
  compatFeatures: bigint;
  autoclearFeatures: bigint;
  l1TableOffset: number;
  imageSize: number;
  backingFilenameOffset: number;
  backingFilenameSize: number;
}

/** Sizes derived from a validated header; every table walk uses these. */
export interface QedGeometry {
  clusterSize: number;
  clusterBits: number;
  tableSize: number;
  /** Bytes of one L1 or L2 table (table_size clusters). */
  tableBytes: number;
  /** 8-byte entries per table. */
  tableEntries: number;
  /** Guest bytes one L2 table maps (a power of two, at most 2^53). */
  l2Coverage: number;
  /** Bytes at offset 0 owned by the header (header_size clusters). */
  headerRegionSize: number;
  /** EOF rounded down to a cluster: qemu validates every offset against this. */
  validationFileSize: number;
  imageSize: number;
}

function error(code: 'CORRUPT' | 'UNSUPPORTED' | 'LIMIT' | 'WRONG_FORMAT', message: string, offset?: number): IcError {
  return new IcError(code, `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

export function hasQedMagic(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x51 && head[1] === 0x45 && head[2] === 0x44 && head[3] === 0x00;
}

/** Largest image size a geometry can address: (entries per table)^2 clusters. Exact, as a bigint. */
export function maxImageSize(clusterSize: number, tableSize: number): bigint {
  const entries = (BigInt(tableSize) * BigInt(clusterSize)) / 8n;
  return entries * entries * BigInt(clusterSize);
}

const TWO_64 = 1n << 64n;

/**
 * qemu 7.2's qed_max_image_size(): the same product computed the way qemu computes it, in unsigned 64-bit
 * arithmetic that wraps. Every factor is a power of two, so whenever (entries^2 x cluster_size) reaches 2^64 the
 * result is 0, and qemu then accepts only empty images: with the default table_size=4 that is every cluster_size
 * from 4 MiB, and with 2 MiB clusters table_size=16 ("QED image size must be ... less than 0 bytes").
 */
export function qemuMaxImageSize(clusterSize: number, tableSize: number): bigint {
  // table_size * cluster_size is a uint32 product in qemu; it never exceeds 2^30 for valid fields.
  const entries = BigInt((Math.imul(tableSize, clusterSize) >>> 0) / 8);
  return (((entries * BigInt(clusterSize)) % TWO_64) * entries) % TWO_64;
}

/**
 * Why qemu 7.2 cannot create, or cannot then open, a QED image of `imageSize` bytes (a multiple of 512) with this
 * geometry; undefined when it can. Found by running qemu-img create / info / qemu-io write over the whole option
 * grid (packages/qed/test/limits.test.ts) and by reading block/qed.c and block/qed.h:
 *  - cluster_size a power of two in [4 KiB, 64 MiB], table_size a power of two in [1, 16] (qed_is_*_size_valid);
 *  - table_size >= 2: qed_check_table_offset() computes the offset of a table's last cluster and treats
 *    "end <= start" as an overflow, which a one-cluster table always is ("QED table offset is invalid" on open);
 *  - image_size <= qemuMaxImageSize() (qed_is_image_size_valid), whose 64-bit product wraps to 0 when
 *    (table_size x cluster_size / 8)^2 x cluster_size reaches 2^64.
 */
export function qemuGeometryProblem(clusterSize: number, tableSize: number, imageSize: number): string | undefined {
  if (!isValidClusterSize(clusterSize)) return `cluster_size must be a power of two from 4096 to 67108864 bytes (got ${clusterSize})`;
  if (!isValidTableSize(tableSize)) return `table_size must be a power of two from 1 to 16 clusters (got ${tableSize})`;
  if (tableSize === 1) return 'table_size=1 makes images that qemu 7.2 cannot open (its table bounds check rejects a one-cluster table); use 2 or more';
  const limit = qemuMaxImageSize(clusterSize, tableSize);
  if (BigInt(imageSize) <= limit) return undefined;
  const geometry = `cluster_size=${clusterSize} and table_size=${tableSize}`;
  const alternative = qemuGeometryFor(imageSize, clusterSize, tableSize);
  const hint = alternative ? `; use ${alternative}` : '';
  if (limit < maxImageSize(clusterSize, tableSize)) {
    return `qemu 7.2 refuses ${imageSize}-byte QED images with ${geometry}: its maximum-size arithmetic overflows 64 bits for this geometry and allows ${limit} bytes${hint}`;
  }
  return `the size ${imageSize} exceeds the ${limit} bytes a QED image with ${geometry} can address${hint}`;
}

/** A geometry close to the one asked for that qemu accepts for `imageSize`: first another table_size, then another cluster_size. */
function qemuGeometryFor(imageSize: number, clusterSize: number, tableSize: number): string | undefined {
  const size = BigInt(imageSize);
  for (const candidate of [2, 4, 8, 16].filter((t) => t !== tableSize)) {
    if (size <= qemuMaxImageSize(clusterSize, candidate)) return `table_size=${candidate}`;
  }
  const clusterSizes: number[] = [];
  for (let candidate = MIN_CLUSTER_SIZE; candidate <= MAX_CLUSTER_SIZE; candidate *= 2) if (candidate !== clusterSize) clusterSizes.push(candidate);
  // The nearest cluster size first (smaller before larger at the same distance).
  clusterSizes.sort((a, b) => Math.abs(Math.log2(a / clusterSize)) - Math.abs(Math.log2(b / clusterSize)) || a - b);
  const fitting = clusterSizes.find((candidate) => size <= qemuMaxImageSize(candidate, tableSize));
  return fitting === undefined ? undefined : `cluster_size=${fitting}`;
}

export function isValidClusterSize(value: number): boolean {
  return isPowerOfTwo(value) && value >= MIN_CLUSTER_SIZE && value <= MAX_CLUSTER_SIZE;
}

export function isValidTableSize(value: number): boolean {
  return isPowerOfTwo(value) && value >= MIN_TABLE_SIZE && value <= MAX_TABLE_SIZE;
}

/**
 * Decodes the 64 header bytes. Only the magic, the length and the two 64-bit sizes are judged here (values
 * past 2^53 cannot be represented as numbers); validateHeader() checks everything else.
 */
export function parseHeader(bytes: Uint8Array): QedHeader {
  if (!hasQedMagic(bytes)) throw error('WRONG_FORMAT', 'no QED magic at offset 0');
  if (bytes.length < HEADER_LENGTH) {
    throw error('CORRUPT', `header truncated: ${bytes.length} of ${HEADER_LENGTH} bytes present`, 0);
  }
  const view = new ByteView(bytes);
  const f = HEADER_FIELDS;
  const l1TableOffset = view.u64leBig(f.l1TableOffset.offset);
  const imageSize = view.u64leBig(f.imageSize.offset);
  if (l1TableOffset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw error('CORRUPT', `l1_table_offset ${hex(l1TableOffset)} (header offset ${f.l1TableOffset.offset}) lies past any file`, f.l1TableOffset.offset);
  }
  if (imageSize > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw error('LIMIT', `image_size ${imageSize} (header offset ${f.imageSize.offset}) exceeds 2^53 bytes`, f.imageSize.offset);
  }
  return {
    clusterSize: view.u32le(f.clusterSize.offset),
    tableSize: view.u32le(f.tableSize.offset),
    headerSize: view.u32le(f.headerSize.offset),
    features: view.u64leBig(f.features.offset),
    compatFeatures: view.u64leBig(f.compatFeatures.offset),
    autoclearFeatures: view.u64leBig(f.autoclearFeatures.offset),
    l1TableOffset: Number(l1TableOffset),
    imageSize: Number(imageSize),
    backingFilenameOffset: view.u32le(f.backingFilenameOffset.offset),
    backingFilenameSize: view.u32le(f.backingFilenameSize.offset),
  };
}

/** Why `offset` cannot hold a cluster (qemu's qed_check_cluster_offset), or undefined when it can. */
export function clusterOffsetProblem(geometry: QedGeometry, offset: number): string | undefined {
  if (offset % geometry.clusterSize !== 0) return `is not aligned to the ${geometry.clusterSize}-byte cluster size`;
  if (offset < geometry.headerRegionSize) return `lies inside the ${geometry.headerRegionSize}-byte header region`;
  if (offset >= geometry.validationFileSize) return `lies past the end of the file (${hex(geometry.validationFileSize)}, rounded down to a cluster)`;
  return undefined;
}

/** Why a table (table_size clusters) cannot start at `offset` (qemu's qed_check_table_offset), or undefined. */
export function tableOffsetProblem(geometry: QedGeometry, offset: number): string | undefined {
  const first = clusterOffsetProblem(geometry, offset);
  if (first) return first;
  const lastCluster = offset + geometry.tableBytes - geometry.clusterSize;
  if (lastCluster >= geometry.validationFileSize) {
    return `runs past the end of the file (${hex(geometry.validationFileSize)}, rounded down to a cluster)`;
  }
  return undefined;
}

/**
 * The open-time checks of qemu's bdrv_qed_do_open, plus header_size >= 1. `fileSize` is the real EOF.
 * Returns the geometry every later walk uses.
 */
export function validateHeader(header: QedHeader, fileSize: number): QedGeometry {
  const f = HEADER_FIELDS;
  const unknown = header.features & ~KNOWN_FEATURES;
  if (unknown !== 0n) {
    throw error('UNSUPPORTED', `unknown feature bits ${hex(unknown)} in features (header offset ${f.features.offset})`, f.features.offset);
  }
  if (!isValidClusterSize(header.clusterSize)) {
    throw error('CORRUPT', `cluster_size ${header.clusterSize} (header offset ${f.clusterSize.offset}) is not a power of two in [4 KiB, 64 MiB]`, f.clusterSize.offset);
  }
  if (!isValidTableSize(header.tableSize)) {
    throw error('CORRUPT', `table_size ${header.tableSize} (header offset ${f.tableSize.offset}) is not a power of two in [1, 16]`, f.tableSize.offset);
  }
  if (header.headerSize < 1 || header.headerSize * header.clusterSize >= 2 ** 32) {
    throw error('CORRUPT', `header_size ${header.headerSize} clusters (header offset ${f.headerSize.offset}) must be at least 1 and describe less than 4 GiB`, f.headerSize.offset);
  }
  if (header.imageSize % SECTOR_SIZE !== 0) {
    throw error('CORRUPT', `image_size ${header.imageSize} (header offset ${f.imageSize.offset}) is not a multiple of 512`, f.imageSize.offset);
  }
  const maximum = maxImageSize(header.clusterSize, header.tableSize);
  if (BigInt(header.imageSize) > maximum) {
    throw error('CORRUPT', `image_size ${header.imageSize} (header offset ${f.imageSize.offset}) exceeds the ${maximum} bytes that cluster_size ${header.clusterSize} and table_size ${header.tableSize} can address`, f.imageSize.offset);
  }
  const tableBytes = header.tableSize * header.clusterSize;
  const tableEntries = tableBytes / 8;
  const geometry: QedGeometry = {
    clusterSize: header.clusterSize,
    clusterBits: log2(header.clusterSize),
    tableSize: header.tableSize,
    tableBytes,
    tableEntries,
    l2Coverage: tableEntries * header.clusterSize,
    headerRegionSize: header.headerSize * header.clusterSize,
    validationFileSize: alignDown(fileSize, header.clusterSize),
    imageSize: header.imageSize,
  };
  const l1Problem = tableOffsetProblem(geometry, header.l1TableOffset);
  if (l1Problem) {
    throw error('CORRUPT', `L1 table at l1_table_offset ${hex(header.l1TableOffset)} (header offset ${f.l1TableOffset.offset}) ${l1Problem}`, f.l1TableOffset.offset);
  }
  if ((header.features & FEATURE_BACKING_FILE) !== 0n) {
    const end = header.backingFilenameOffset + header.backingFilenameSize;
    if (end > geometry.headerRegionSize) {
      throw error('CORRUPT', `backing file name at ${header.backingFilenameOffset}+${header.backingFilenameSize} (header offsets 56, 60) runs past the ${geometry.headerRegionSize}-byte header region`, f.backingFilenameOffset.offset);
    }
    if (header.backingFilenameSize > MAX_BACKING_NAME_LENGTH) {
      throw error('CORRUPT', `backing_filename_size ${header.backingFilenameSize} (header offset ${f.backingFilenameSize.offset}) is not below 4096`, f.backingFilenameSize.offset);
    }
  }
  return geometry;
}

/** The 64 header bytes for `header`. */
export function serializeHeader(header: QedHeader): Uint8Array {
  const view = ByteView.alloc(HEADER_LENGTH);
  const f = HEADER_FIELDS;
  view.setU32le(f.magic.offset, QED_MAGIC);
  view.setU32le(f.clusterSize.offset, header.clusterSize);
  view.setU32le(f.tableSize.offset, header.tableSize);
  view.setU32le(f.headerSize.offset, header.headerSize);
  view.setU64le(f.features.offset, header.features);
  view.setU64le(f.compatFeatures.offset, header.compatFeatures);
  view.setU64le(f.autoclearFeatures.offset, header.autoclearFeatures);
  view.setU64le(f.l1TableOffset.offset, header.l1TableOffset);
  view.setU64le(f.imageSize.offset, header.imageSize);
  view.setU32le(f.backingFilenameOffset.offset, header.backingFilenameOffset);
  view.setU32le(f.backingFilenameSize.offset, header.backingFilenameSize);
  return view.bytes;
}

/** Decodes a stored backing name the way qemu does: the bytes up to the first NUL, as UTF-8. */
export function decodeBackingName(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}
