import { alignUp, ByteView, IcError } from '@ic/core/sdk';

/** Name used in messages and as the qemu-img format name. */
export const FORMAT = 'parallels';

/**
 * The Parallels (ploop) image header: 64 little-endian bytes at offset 0 (QEMU docs/interop/parallels.txt,
 * block/parallels.h). The BAT follows it directly; data clusters start at data_off.
 */
export const HEADER_FIELDS = {
  /** 16 bytes: "WithoutFreeSpace" (BAT entries in sectors) or "WithouFreSpacExt" (BAT entries in clusters). */
  magic: { offset: 0, size: 16 },
  /** u32, must be 2. */
  version: { offset: 16, size: 4 },
  /** u32 geometry, unused by qemu (it writes 16). */
  heads: { offset: 20, size: 4 },
  /** u32 geometry, unused by qemu (it writes size / 512 / 16 / 32). */
  cylinders: { offset: 24, size: 4 },
  /** u32 sectors per cluster ("tracks"): the cluster size is tracks * 512. */
  tracks: { offset: 28, size: 4 },
  /** u32 number of BAT entries (one per cluster of the disk). */
  batEntries: { offset: 32, size: 4 },
  /** u64 virtual size in sectors ("WithoutFreeSpace": only the low 32 bits count). */
  nbSectors: { offset: 36, size: 8 },
  /** u32 0, or 0x746F6E59 while the image is open for writing (not closed cleanly). */
  inuse: { offset: 44, size: 4 },
  /** u32 sector where the data area starts (qemu: the BAT rounded up to a cluster). */
  dataOff: { offset: 48, size: 4 },
  /** u32 bit 0 "empty image"; qemu ignores it. */
  flags: { offset: 52, size: 4 },
  /** u64 sector of the format extension cluster (dirty bitmaps), 0 = none. */
  extOff: { offset: 56, size: 8 },
} as const;

export const HEADER_LENGTH = 64;
export const SECTOR_SIZE = 512;
/** Bytes of one BAT entry. */
export const BAT_ENTRY_SIZE = 4;
export const MAGIC_SECTORS = 'WithoutFreeSpace';
export const MAGIC_CLUSTERS = 'WithouFreSpacExt';
export const HEADER_VERSION = 2;
/** inuse while qemu has the image open read-write ("Ynot"). */
export const INUSE_MAGIC = 0x746f6e59;
/** The magic of the format extension cluster (parallels-ext.c). */
export const FORMAT_EXTENSION_MAGIC = 0xab234cef23dcea87n;
/** qemu's default cluster size. */
export const DEFAULT_CLUSTER_SIZE = 1024 * 1024;
/** qemu's geometry constants: heads, and sectors per cylinder per head. */
export const HEADS = 16;
export const SECTORS_PER_CYLINDER = 32;
/** qemu refuses tracks above INT32_MAX / 513 ("Too big cluster"). */
export const MAX_TRACKS = Math.floor(0x7fffffff / 513);
/** qemu refuses more BAT entries than INT_MAX / 4 ("Catalog too large"). */
export const MAX_BAT_ENTRIES = Math.floor(0x7fffffff / 4);

export type BatUnit = 'sectors' | 'clusters';

export interface ParallelsHeader {
  /** How BAT entries count: "WithoutFreeSpace" in sectors, "WithouFreSpacExt" in clusters. */
  batUnit: BatUnit;
  version: number;
  heads: number;
  cylinders: number;
  tracks: number;
  batEntries: number;
  /** Virtual size in sectors as qemu reads it (the low 32 bits for "WithoutFreeSpace"). */
  nbSectors: number;
  inuse: number;
  dataOff: number;
  flags: number;
  extOff: number;
}

/** Sizes derived from a validated header. */
export interface ParallelsGeometry {
  clusterSize: number;
  /** Bytes one BAT entry value step stands for: 512 or the cluster size. */
  entryUnit: number;
  virtualSize: number;
  batEntries: number;
  /** End of the BAT: 64 + 4 * bat_entries. */
  batEnd: number;
  /** Where the data area starts (data_off, or the BAT rounded up to a sector when data_off is 0, as qemu does). */
  dataStart: number;
  fileSize: number;
}

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

function error(code: 'CORRUPT' | 'UNSUPPORTED' | 'LIMIT' | 'WRONG_FORMAT', message: string, offset?: number): IcError {
  return new IcError(code, `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

function magicOf(head: Uint8Array): BatUnit | undefined {
  if (head.length < 16) return undefined;
  const text = String.fromCharCode(...head.subarray(0, 16));
  if (text === MAGIC_SECTORS) return 'sectors';
  if (text === MAGIC_CLUSTERS) return 'clusters';
  return undefined;
}

/** qemu's probe: one of the two magics and version 2 in a 64-byte header. */
export function looksLikeParallels(head: Uint8Array): boolean {
  return head.length >= HEADER_LENGTH && magicOf(head) !== undefined && new ByteView(head).u32le(HEADER_FIELDS.version.offset) === HEADER_VERSION;
}

/** Decodes the header; WRONG_FORMAT unless it carries a known magic and version 2 (qemu: "Image not in Parallels format"). */
export function parseHeader(bytes: Uint8Array): ParallelsHeader {
  const batUnit = magicOf(bytes);
  if (!batUnit) throw error('WRONG_FORMAT', 'no "WithoutFreeSpace" or "WithouFreSpacExt" magic at offset 0');
  if (bytes.length < HEADER_LENGTH) throw error('CORRUPT', `header truncated: ${bytes.length} of ${HEADER_LENGTH} bytes present`, 0);
  const view = new ByteView(bytes);
  const f = HEADER_FIELDS;
  const version = view.u32le(f.version.offset);
  if (version !== HEADER_VERSION) throw error('WRONG_FORMAT', `version ${version} (header offset ${f.version.offset}) is not 2`, f.version.offset);
  let nbSectors = view.u64leBig(f.nbSectors.offset);
  // "WithoutFreeSpace" images keep a 32-bit sector count; qemu ignores the high half.
  if (batUnit === 'sectors') nbSectors &= 0xffffffffn;
  if (nbSectors * 512n > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw error('LIMIT', `nb_sectors ${nbSectors} (header offset ${f.nbSectors.offset}) describes more than 2^53 bytes`, f.nbSectors.offset);
  }
  const extOff = view.u64leBig(f.extOff.offset);
  if (extOff * 512n > BigInt(Number.MAX_SAFE_INTEGER)) throw error('CORRUPT', `ext_off ${hex(extOff)} (header offset ${f.extOff.offset}) lies past any file`, f.extOff.offset);
  return {
    batUnit,
    version,
    heads: view.u32le(f.heads.offset),
    cylinders: view.u32le(f.cylinders.offset),
    tracks: view.u32le(f.tracks.offset),
    batEntries: view.u32le(f.batEntries.offset),
    nbSectors: Number(nbSectors),
    inuse: view.u32le(f.inuse.offset),
    dataOff: view.u32le(f.dataOff.offset),
    flags: view.u32le(f.flags.offset),
    extOff: Number(extOff),
  };
}

/**
 * qemu's open-time checks (parallels_open): tracks non-zero and at most INT32_MAX / 513, at most INT_MAX / 4 BAT
 * entries. ic also requires the BAT to lie inside the file (qemu would read the missing part as zeros).
 */
export function validateHeader(header: ParallelsHeader, fileSize: number): ParallelsGeometry {
  const f = HEADER_FIELDS;
  if (header.tracks === 0) throw error('CORRUPT', `tracks (sectors per cluster, header offset ${f.tracks.offset}) is 0`, f.tracks.offset);
  if (header.tracks > MAX_TRACKS) throw error('LIMIT', `tracks ${header.tracks} (header offset ${f.tracks.offset}) makes clusters larger than qemu accepts`, f.tracks.offset);
  if (header.batEntries > MAX_BAT_ENTRIES) throw error('LIMIT', `bat_entries ${header.batEntries} (header offset ${f.batEntries.offset}) is more than qemu accepts`, f.batEntries.offset);
  const clusterSize = header.tracks * SECTOR_SIZE;
  const batEnd = HEADER_LENGTH + BAT_ENTRY_SIZE * header.batEntries;
  if (batEnd > fileSize) throw error('CORRUPT', `the BAT (${header.batEntries} entries) ends at ${hex(batEnd)}, past the end of the file (${hex(fileSize)})`, f.batEntries.offset);
  const dataStart = header.dataOff === 0 ? alignUp(batEnd, SECTOR_SIZE) : header.dataOff * SECTOR_SIZE;
  return {
    clusterSize,
    entryUnit: header.batUnit === 'clusters' ? clusterSize : SECTOR_SIZE,
    virtualSize: header.nbSectors * SECTOR_SIZE,
    batEntries: header.batEntries,
    batEnd,
    dataStart,
    fileSize,
  };
}

/** The 64 header bytes. */
export function serializeHeader(header: ParallelsHeader): Uint8Array {
  const view = ByteView.alloc(HEADER_LENGTH);
  const f = HEADER_FIELDS;
  const magic = header.batUnit === 'clusters' ? MAGIC_CLUSTERS : MAGIC_SECTORS;
  for (let i = 0; i < 16; i++) view.setU8(i, magic.charCodeAt(i));
  view.setU32le(f.version.offset, header.version);
  view.setU32le(f.heads.offset, header.heads);
  view.setU32le(f.cylinders.offset, header.cylinders);
  view.setU32le(f.tracks.offset, header.tracks);
  view.setU32le(f.batEntries.offset, header.batEntries);
  view.setU64le(f.nbSectors.offset, header.nbSectors);
  view.setU32le(f.inuse.offset, header.inuse);
  view.setU32le(f.dataOff.offset, header.dataOff);
  view.setU32le(f.flags.offset, header.flags);
  view.setU64le(f.extOff.offset, header.extOff);
  return view.bytes;
}

/**
 * The header qemu-img create writes for `virtualSize` (a multiple of 512) and `clusterSize` (a multiple of 512):
 * "WithouFreSpacExt", 16 heads, the BAT rounded up to a whole cluster before the data.
 */
export function newHeader(virtualSize: number, clusterSize: number): ParallelsHeader {
  const batEntries = Math.ceil(virtualSize / clusterSize);
  const dataBytes = alignUp(HEADER_LENGTH + BAT_ENTRY_SIZE * batEntries, clusterSize);
  return {
    batUnit: 'clusters',
    version: HEADER_VERSION,
    heads: HEADS,
    cylinders: Math.floor(virtualSize / SECTOR_SIZE / HEADS / SECTORS_PER_CYLINDER),
    tracks: clusterSize / SECTOR_SIZE,
    batEntries,
    nbSectors: Math.ceil(virtualSize / SECTOR_SIZE),
    inuse: 0,
    dataOff: dataBytes / SECTOR_SIZE,
    flags: 0,
    extOff: 0,
  };
}
