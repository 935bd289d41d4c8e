import { ByteView } from '@ic/core/sdk';
import { corruptAt, limitAt, vmdkError } from './errors.js';

/**
 * The hosted sparse extent header ("KDMV"), versions 1 to 3. It fills sector 0 of a monolithicSparse or
 * streamOptimized file; every binary field is little-endian and every offset or size is in 512-byte sectors.
 */
export const SECTOR_SIZE = 512;

/** Byte offset of each field in the 512-byte header sector (VMware names; qemu's in brackets). */
export const HEADER_FIELDS = {
  /** u32: bytes "KDMV". */
  magicNumber: 0,
  /** u32: 1; 2 when zeroed-grain GTEs are in use; 3 for streamOptimized. qemu refuses > 3. */
  version: 4,
  /** u32: FLAG_* bits below. */
  flags: 8,
  /** u64: virtual disk size in sectors. */
  capacity: 12,
  /** u64 [granularity]: sectors per grain (qemu: 1..0x200000; VMware: a power of two > 8). */
  grainSize: 20,
  /** u64: sector of the embedded descriptor (1 in qemu images). */
  descriptorOffset: 28,
  /** u64: sectors reserved for the embedded descriptor (20 in qemu images). */
  descriptorSize: 36,
  /** u32: entries per grain table (qemu: 1..512; VMware: 512). */
  numGTEsPerGT: 44,
  /** u64: sector of the redundant grain directory; used only with FLAG_REDUNDANT_GD. */
  rgdOffset: 48,
  /** u64: sector of the grain directory; GD_AT_END means "read the footer near the end of the file". */
  gdOffset: 56,
  /** u64 [grain_offset]: sectors of metadata before the first grain. qemu only requires file size >= this. */
  overHead: 64,
  /** u8 [filler]: set by VMware while the disk is open; qemu neither sets nor reads it. */
  uncleanShutdown: 72,
  /** 4 bytes: '\n', ' ', '\r', '\n' to detect text-mode line-ending corruption. */
  newlineCheck: 73,
  /** u16: 0 none, 1 deflate (zlib streams; qemu then reports the image as streamOptimized). */
  compressAlgorithm: 77,
  /** Bytes 79..511 are zero padding. */
  padding: 79,
} as const;

export const MAGIC_BYTES = new Uint8Array([0x4b, 0x44, 0x4d, 0x56]); // "KDMV"
/** "COWD": the older VMDK3 / vmfsSparse extent header, which this driver recognises but does not read. */
export const COWD_MAGIC_BYTES = new Uint8Array([0x43, 0x4f, 0x57, 0x44]);
export const NEWLINE_CHECK_BYTES = new Uint8Array([0x0a, 0x20, 0x0d, 0x0a]);

export const FLAG_NEWLINE_DETECT = 1 << 0;
export const FLAG_REDUNDANT_GD = 1 << 1;
/** A GTE of 1 means "zeroed grain" only when this bit is set; otherwise it is a grain at sector 1. */
export const FLAG_ZEROED_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;

export const COMPRESSION_NONE = 0;
export const COMPRESSION_DEFLATE = 1;

/** gdOffset value meaning "the grain directory is described by the footer at the end of the file". */
export const GD_AT_END = 0xffffffffffffffffn;

export const MAX_VERSION = 3;
/** qemu: more than 512 entries per grain table is refused ("L2 table size too big"). */
export const MAX_GTES_PER_GT = 512;
/** qemu: a grain above 0x200000 sectors (1 GiB) is refused ("Invalid granularity"). */
export const MAX_GRAIN_SECTORS = 0x200000;
/** qemu: more than 32 Mi grain directory entries is refused ("L1 size too big"). */
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** Grain and grain table offsets are u32 sector numbers: everything must start below 2 TiB. */
export const MAX_EXTENT_SECTORS = 2 ** 32;

/** The header as read from disk, numbers in their on-disk units (sectors). */
export interface SparseHeader {
  version: number;
  flags: number;
  capacity: number;
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** undefined when the header says GD_AT_END (only meaningful before the footer replaced it). */
  gdOffset: number | undefined;
  overHead: number;
  uncleanShutdown: number;
  newlineCheck: Uint8Array;
  compressAlgorithm: number;
}

export function hasMagic(bytes: Uint8Array, magic: Uint8Array = MAGIC_BYTES): boolean {
  if (bytes.length < 4) return false;
  for (let i = 0; i < 4; i++) if (bytes[i] !== magic[i]) return false;
  return true;
}

/** Reads a u64 sector field, refusing values that cannot be byte offsets in a safe integer. */
function sectorField(view: ByteView, offset: number, field: string, base: number): number {
  const value = view.u64leBig(offset);
  if (value > BigInt(Math.floor(Number.MAX_SAFE_INTEGER / SECTOR_SIZE))) {
    throw limitAt(`header field ${field} = ${value} sectors is beyond any addressable size`, base + offset);
  }
  return Number(value);
}

/**
 * Parses the 512-byte header sector. Only the magic and field ranges that make the numbers usable are checked
 * here; validateSparseHeader() applies qemu's open-time rules.
 * `base` is the file offset of the sector (0, or the footer's position) for messages.
 */
export function parseSparseHeader(sector: Uint8Array, base = 0): SparseHeader {
  if (sector.length < SECTOR_SIZE) throw corruptAt(`header is truncated (${sector.length} bytes, need ${SECTOR_SIZE})`, base);
  if (!hasMagic(sector)) throw vmdkError('WRONG_FORMAT', 'no "KDMV" sparse extent magic', base);
  const view = new ByteView(sector.subarray(0, SECTOR_SIZE));
  const gdRaw = view.u64leBig(HEADER_FIELDS.gdOffset);
  return {
    version: view.u32le(HEADER_FIELDS.version),
    flags: view.u32le(HEADER_FIELDS.flags),
    capacity: sectorField(view, HEADER_FIELDS.capacity, 'capacity', base),
    grainSize: sectorField(view, HEADER_FIELDS.grainSize, 'grainSize', base),
    descriptorOffset: sectorField(view, HEADER_FIELDS.descriptorOffset, 'descriptorOffset', base),
    descriptorSize: sectorField(view, HEADER_FIELDS.descriptorSize, 'descriptorSize', base),
    numGTEsPerGT: view.u32le(HEADER_FIELDS.numGTEsPerGT),
    rgdOffset: sectorField(view, HEADER_FIELDS.rgdOffset, 'rgdOffset', base),
    gdOffset: gdRaw === GD_AT_END ? undefined : sectorField(view, HEADER_FIELDS.gdOffset, 'gdOffset', base),
    overHead: sectorField(view, HEADER_FIELDS.overHead, 'overHead', base),
    uncleanShutdown: view.u8(HEADER_FIELDS.uncleanShutdown),
    newlineCheck: sector.slice(HEADER_FIELDS.newlineCheck, HEADER_FIELDS.newlineCheck + 4),
    compressAlgorithm: view.u16le(HEADER_FIELDS.compressAlgorithm),
  };
}

/** Serialises a header into one 512-byte sector (zero padding included). */
export function serializeSparseHeader(header: SparseHeader): Uint8Array {
  const view = ByteView.alloc(SECTOR_SIZE);
  view.bytes.set(MAGIC_BYTES, HEADER_FIELDS.magicNumber);
  view.setU32le(HEADER_FIELDS.version, header.version);
  view.setU32le(HEADER_FIELDS.flags, header.flags >>> 0);
  view.setU64le(HEADER_FIELDS.capacity, header.capacity);
  view.setU64le(HEADER_FIELDS.grainSize, header.grainSize);
  view.setU64le(HEADER_FIELDS.descriptorOffset, header.descriptorOffset);
  view.setU64le(HEADER_FIELDS.descriptorSize, header.descriptorSize);
  view.setU32le(HEADER_FIELDS.numGTEsPerGT, header.numGTEsPerGT);
  view.setU64le(HEADER_FIELDS.rgdOffset, header.rgdOffset);
  view.setU64le(HEADER_FIELDS.gdOffset, header.gdOffset === undefined ? GD_AT_END : BigInt(header.gdOffset));
  view.setU64le(HEADER_FIELDS.overHead, header.overHead);
  view.setU8(HEADER_FIELDS.uncleanShutdown, header.uncleanShutdown);
  view.bytes.set(header.newlineCheck.subarray(0, 4), HEADER_FIELDS.newlineCheck);
  view.setU16le(HEADER_FIELDS.compressAlgorithm, header.compressAlgorithm);
  return view.bytes;
}

/** The facts derived from a validated header that every reader needs. */
export interface SparseGeometry {
  capacitySectors: number;
  virtualSize: number;
  grainSectors: number;
  grainBytes: number;
  gtesPerGT: number;
  /** Bytes of one grain table (numGTEsPerGT × 4). */
  gtBytes: number;
  /** Sectors a grain table occupies (rounded up). */
  gtSectors: number;
  /** Guest bytes one grain table covers. */
  gtCoverage: number;
  gdEntries: number;
  compressed: boolean;
  hasMarkers: boolean;
  zeroedGrains: boolean;
  redundant: boolean;
}

/**
 * qemu's open-time checks on a KDMV header (block/vmdk.c vmdk_open_vmdk4 and vmdk_add_extent), plus the limits
 * that keep our own arithmetic exact. Throws CORRUPT / UNSUPPORTED / LIMIT; returns the derived geometry.
 */
export function validateSparseHeader(header: SparseHeader, fileSize: number, base = 0): SparseGeometry {
  if (header.version > MAX_VERSION) {
    throw vmdkError('UNSUPPORTED', `sparse extent version ${header.version} is not supported (1 to 3 are)`, base + HEADER_FIELDS.version);
  }
  if (header.numGTEsPerGT === 0 || header.numGTEsPerGT > MAX_GTES_PER_GT) {
    throw corruptAt(`numGTEsPerGT ${header.numGTEsPerGT} is outside 1..${MAX_GTES_PER_GT}`, base + HEADER_FIELDS.numGTEsPerGT);
  }
  if (header.grainSize === 0 || header.grainSize > MAX_GRAIN_SECTORS) {
    throw corruptAt(`grainSize ${header.grainSize} sectors is outside 1..${MAX_GRAIN_SECTORS}`, base + HEADER_FIELDS.grainSize);
  }
  const virtualSize = header.capacity * SECTOR_SIZE; // exact: parseSparseHeader bounded capacity
  const gtCoverageSectors = header.numGTEsPerGT * header.grainSize;
  const gdEntries = Math.ceil(header.capacity / gtCoverageSectors);
  if (gdEntries > MAX_GD_ENTRIES) {
    throw limitAt(`capacity ${header.capacity} sectors needs ${gdEntries} grain directory entries (more than ${MAX_GD_ENTRIES})`, base + HEADER_FIELDS.capacity);
  }
  if (header.overHead * SECTOR_SIZE > fileSize) {
    throw corruptAt(`file is truncated: overHead says ${header.overHead * SECTOR_SIZE} bytes of metadata, the file has ${fileSize}`, base + HEADER_FIELDS.overHead);
  }
  const gtBytes = header.numGTEsPerGT * 4;
  const compressed = header.compressAlgorithm === COMPRESSION_DEFLATE;
  return {
    capacitySectors: header.capacity,
    virtualSize,
    grainSectors: header.grainSize,
    grainBytes: header.grainSize * SECTOR_SIZE,
    gtesPerGT: header.numGTEsPerGT,
    gtBytes,
    gtSectors: Math.ceil(gtBytes / SECTOR_SIZE),
    gtCoverage: gtCoverageSectors * SECTOR_SIZE,
    gdEntries,
    compressed,
    hasMarkers: (header.flags & FLAG_MARKERS) !== 0,
    zeroedGrains: (header.flags & FLAG_ZEROED_GRAIN) !== 0,
    redundant: (header.flags & FLAG_REDUNDANT_GD) !== 0 && header.rgdOffset !== 0,
  };
}
