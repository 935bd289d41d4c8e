import { ByteView, IcError } from '@ic/core/sdk';

/** Name used in messages and as the qemu-img format name (qemu calls VHD "vpc", after Virtual PC). */
export const FORMAT = 'vpc';

/**
 * The hard disk footer: 512 big-endian bytes. A fixed disk has it only at the end of the file (after the guest
 * data); a dynamic disk has a copy at offset 0, which is the one qemu reads, and one at the end.
 */
export const FOOTER_FIELDS = {
  /** 8 bytes "conectix". */
  cookie: { offset: 0, size: 8 },
  /** u32 features (0x2, "reserved, always set"; not checked). */
  features: { offset: 8, size: 4 },
  /** u32 format version 0x00010000 (not checked by qemu). */
  version: { offset: 12, size: 4 },
  /** u64 offset of the dynamic disk header (0x200); all ones for a fixed disk. */
  dataOffset: { offset: 16, size: 8 },
  /** u32 seconds since 2000-01-01 00:00 UTC. */
  timestamp: { offset: 24, size: 4 },
  /** 4 bytes creator application: "qemu" (size from CHS) or "qem2" (size from current_size), "win ", "vpc "... */
  creatorApp: { offset: 28, size: 4 },
  /** u16 major, u16 minor creator version (qemu: 5.3, Virtual PC 2007). */
  creatorVersion: { offset: 32, size: 4 },
  /** 4 bytes creator host OS ("Wi2k"). */
  creatorOs: { offset: 36, size: 4 },
  /** u64 size at creation, bytes. */
  originalSize: { offset: 40, size: 8 },
  /** u64 current size, bytes. */
  currentSize: { offset: 48, size: 8 },
  /** u16 cylinders, u8 heads, u8 sectors per track. */
  cylinders: { offset: 56, size: 2 },
  heads: { offset: 58, size: 1 },
  sectorsPerTrack: { offset: 59, size: 1 },
  /** u32 2 fixed, 3 dynamic, 4 differencing. */
  diskType: { offset: 60, size: 4 },
  /** u32 one's complement of the sum of the footer's bytes, this field taken as zero. */
  checksum: { offset: 64, size: 4 },
  /** 16 bytes unique id. */
  uniqueId: { offset: 68, size: 16 },
  /** u8 saved state. */
  savedState: { offset: 84, size: 1 },
} as const;

export const FOOTER_LENGTH = 512;
export const SECTOR_SIZE = 512;
export const COOKIE = 'conectix';
export const FEATURES_RESERVED = 0x2;
export const FORMAT_VERSION = 0x00010000;
/** data_offset of a fixed disk (all 64 bits set, as qemu writes it). */
export const NO_DATA_OFFSET = 0xffff_ffff_ffff_ffffn;
export const DISK_TYPE_FIXED = 2;
export const DISK_TYPE_DYNAMIC = 3;
export const DISK_TYPE_DIFFERENCING = 4;
/** Seconds from the Unix epoch to 2000-01-01 00:00 UTC. */
export const VHD_TIMESTAMP_BASE = 946684800;
/** qemu's VHD_MAX_SECTORS: 2040 GiB. */
export const MAX_SECTORS = 0xff000000;
/** The largest CHS geometry, 65535 × 16 × 255: a disk with it takes its size from current_size. */
export const MAX_CHS = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 } as const;
export const MAX_GEOMETRY_SECTORS = MAX_CHS.cylinders * MAX_CHS.heads * MAX_CHS.sectorsPerTrack;
/** Creators whose size qemu takes from current_size rather than from the CHS geometry (vpc_ignore_current_size). */
export const CURRENT_SIZE_CREATORS = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'] as const;
/** What qemu writes: "qemu" when the size is a CHS product, "qem2" with force_size. */
export const CREATOR_CHS = 'qemu';
export const CREATOR_CURRENT_SIZE = 'qem2';

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

export interface VhdFooter extends Geometry {
  features: number;
  version: number;
  /** As a bigint: all ones on a fixed disk. */
  dataOffset: bigint;
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: string;
  originalSize: bigint;
  currentSize: bigint;
  diskType: number;
  checksum: number;
  uniqueId: Uint8Array;
  savedState: number;
}

function latin1(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes);
}

function fromLatin1(text: string, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < Math.min(length, text.length); i++) out[i] = text.charCodeAt(i) & 0xff;
  return out;
}

/** True when `bytes` start with the footer cookie. */
export function hasCookie(bytes: Uint8Array, at = 0): boolean {
  if (bytes.length < at + 8) return false;
  for (let i = 0; i < 8; i++) if (bytes[at + i] !== COOKIE.charCodeAt(i)) return false;
  return true;
}

/** One's complement of the byte sum of `bytes`, the 4 bytes at `checksumOffset` counted as zero. */
export function vhdChecksum(bytes: Uint8Array, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) if (i < checksumOffset || i >= checksumOffset + 4) sum += bytes[i]!;
  return ~sum >>> 0;
}

export function parseFooter(bytes: Uint8Array): VhdFooter {
  const view = new ByteView(bytes);
  const f = FOOTER_FIELDS;
  return {
    features: view.u32be(f.features.offset),
    version: view.u32be(f.version.offset),
    dataOffset: view.u64beBig(f.dataOffset.offset),
    timestamp: view.u32be(f.timestamp.offset),
    creatorApp: latin1(bytes.subarray(f.creatorApp.offset, f.creatorApp.offset + 4)),
    creatorVersion: view.u32be(f.creatorVersion.offset),
    creatorOs: latin1(bytes.subarray(f.creatorOs.offset, f.creatorOs.offset + 4)),
    originalSize: view.u64beBig(f.originalSize.offset),
    currentSize: view.u64beBig(f.currentSize.offset),
    cylinders: view.u16be(f.cylinders.offset),
    heads: view.u8(f.heads.offset),
    sectorsPerTrack: view.u8(f.sectorsPerTrack.offset),
    diskType: view.u32be(f.diskType.offset),
    checksum: view.u32be(f.checksum.offset),
    uniqueId: bytes.slice(f.uniqueId.offset, f.uniqueId.offset + 16),
    savedState: view.u8(f.savedState.offset),
  };
}

/** The 512 footer bytes, checksum computed. */
export function serializeFooter(footer: Omit<VhdFooter, 'checksum'>): Uint8Array {
  const view = ByteView.alloc(FOOTER_LENGTH);
  const f = FOOTER_FIELDS;
  view.bytes.set(fromLatin1(COOKIE, 8), f.cookie.offset);
  view.setU32be(f.features.offset, footer.features);
  view.setU32be(f.version.offset, footer.version);
  view.setU64be(f.dataOffset.offset, footer.dataOffset);
  view.setU32be(f.timestamp.offset, footer.timestamp);
  view.bytes.set(fromLatin1(footer.creatorApp, 4), f.creatorApp.offset);
  view.setU32be(f.creatorVersion.offset, footer.creatorVersion);
  view.bytes.set(fromLatin1(footer.creatorOs, 4), f.creatorOs.offset);
  view.setU64be(f.originalSize.offset, footer.originalSize);
  view.setU64be(f.currentSize.offset, footer.currentSize);
  view.setU16be(f.cylinders.offset, footer.cylinders);
  view.setU8(f.heads.offset, footer.heads);
  view.setU8(f.sectorsPerTrack.offset, footer.sectorsPerTrack);
  view.setU32be(f.diskType.offset, footer.diskType);
  view.bytes.set(footer.uniqueId.subarray(0, 16), f.uniqueId.offset);
  view.setU8(f.savedState.offset, footer.savedState);
  view.setU32be(f.checksum.offset, vhdChecksum(view.bytes, f.checksum.offset));
  return view.bytes;
}

/** The footer's checksum is right (qemu refuses the image otherwise: "Incorrect header checksum"). */
export function footerChecksumOk(bytes: Uint8Array): boolean {
  return new ByteView(bytes).u32be(FOOTER_FIELDS.checksum.offset) === vhdChecksum(bytes.subarray(0, FOOTER_LENGTH), FOOTER_FIELDS.checksum.offset);
}

/**
 * The disk size qemu sees (vpc_open): the CHS product, except for creators that record the size in current_size
 * and for the maximum geometry, where current_size (rounded down to a sector) counts. Past 2040 GiB is refused.
 */
export function virtualSizeOf(footer: VhdFooter): number {
  let sectors = footer.cylinders * footer.heads * footer.sectorsPerTrack;
  const useChs = !(CURRENT_SIZE_CREATORS as readonly string[]).includes(footer.creatorApp);
  if (!useChs || sectors === MAX_GEOMETRY_SECTORS) {
    const current = footer.currentSize / BigInt(SECTOR_SIZE);
    if (current > BigInt(MAX_SECTORS)) {
      throw new IcError('UNSUPPORTED', `${FORMAT}: current_size ${footer.currentSize} (footer offset 48) exceeds the 2040 GiB qemu opens`, { format: FORMAT });
    }
    sectors = Number(current);
  }
  if (sectors > MAX_SECTORS) throw new IcError('UNSUPPORTED', `${FORMAT}: the disk (${sectors} sectors) exceeds the 2040 GiB qemu opens`, { format: FORMAT });
  return sectors * SECTOR_SIZE;
}

/**
 * qemu's calculate_geometry(): the VHD specification's CHS algorithm, extended to 255 sectors per track past
 * 127 GiB. The product may be below `totalSectors` (it rounds down).
 */
export function calculateGeometry(totalSectors: number): Geometry {
  const total = Math.min(totalSectors, MAX_GEOMETRY_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylindersTimesHeads: number;
  if (total >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylindersTimesHeads = Math.floor(total / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylindersTimesHeads = Math.floor(total / sectorsPerTrack);
    heads = Math.max(4, Math.ceil(cylindersTimesHeads / 1024));
    if (cylindersTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylindersTimesHeads = Math.floor(total / sectorsPerTrack);
    }
    if (cylindersTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylindersTimesHeads = Math.floor(total / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylindersTimesHeads / heads), heads, sectorsPerTrack };
}

export interface SizedGeometry extends Geometry {
  /** The disk size in bytes the image will have. */
  virtualSize: number;
  /** "qemu" (the size is the CHS product) or "qem2" (current_size holds it; the geometry is the maximum). */
  creatorApp: string;
}

/**
 * The size and geometry qemu-img create gives a requested size (calculate_rounded_image_size): the size rounded up
 * to a sector, then up to the next CHS product, unless `forceSize` (or a size no CHS geometry reaches) keeps the
 * size exact with the maximum geometry and creator "qem2". Past 2040 GiB is refused.
 */
export function sizedGeometry(requestedSize: number, forceSize: boolean): SizedGeometry {
  const size = Math.ceil(requestedSize / SECTOR_SIZE) * SECTOR_SIZE;
  let geometry: Geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
  if (forceSize) geometry = { ...MAX_CHS };
  else {
    const total = Math.min(MAX_GEOMETRY_SECTORS, size / SECTOR_SIZE);
    // The gap between two CHS products is at most 16 × 255 sectors, so this ends quickly.
    for (let i = 0; total > geometry.cylinders * geometry.heads * geometry.sectorsPerTrack; i++) geometry = calculateGeometry(total + i);
  }
  const product = geometry.cylinders * geometry.heads * geometry.sectorsPerTrack;
  const exact = product === MAX_GEOMETRY_SECTORS;
  const sectors = exact ? size / SECTOR_SIZE : product;
  if (sectors > MAX_SECTORS) throw new IcError('INVALID', `${FORMAT}: Disk size is too large, max size is 2040 GiB`, { format: FORMAT });
  return { ...geometry, virtualSize: sectors * SECTOR_SIZE, creatorApp: forceSize ? CREATOR_CURRENT_SIZE : CREATOR_CHS };
}
