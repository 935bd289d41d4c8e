import { ByteView, IcError } from '@ic/core/sdk';

/** Name used in messages and as the qemu-img format name. */
export const FORMAT = 'vdi';

/**
 * The VDI header (version 1.1): 512 little-endian bytes at file offset 0, as qemu's block/vdi.c reads them.
 * Offsets are from the start of the file.
 */
export const HEADER_FIELDS = {
  /** 64 bytes of text ("<<< QEMU VM Virtual Disk Image >>>\n"; VirtualBox writes its own). Not checked. */
  text: { offset: 0x000, size: 64 },
  /** u32 0xBEDA107F (bytes 7F 10 DA BE). */
  signature: { offset: 0x040, size: 4 },
  /** u32 0x00010001 (1.1); qemu refuses every other version. */
  version: { offset: 0x044, size: 4 },
  /** u32 bytes of the header after the first 72 (qemu writes 0x180; not checked). */
  headerSize: { offset: 0x048, size: 4 },
  /** u32 1 dynamic, 2 static (pre-allocated); qemu treats every value but 2 as dynamic. */
  imageType: { offset: 0x04c, size: 4 },
  /** u32 flags (0; not checked). */
  imageFlags: { offset: 0x050, size: 4 },
  /** 256 bytes of description (not checked). */
  description: { offset: 0x054, size: 256 },
  /** u32 byte offset of the block map: a multiple of 512. */
  offsetBmap: { offset: 0x154, size: 4 },
  /** u32 byte offset of block index 0: a multiple of 512. */
  offsetData: { offset: 0x158, size: 4 },
  /** u32 ×3 legacy geometry (qemu writes 0; not checked). */
  cylinders: { offset: 0x15c, size: 4 },
  heads: { offset: 0x160, size: 4 },
  sectors: { offset: 0x164, size: 4 },
  /** u32 must be 512. */
  sectorSize: { offset: 0x168, size: 4 },
  /** u32 unused. */
  unused1: { offset: 0x16c, size: 4 },
  /** u64 guest size in bytes; qemu rounds an odd size up to a whole sector. */
  diskSize: { offset: 0x170, size: 8 },
  /** u32 bytes per block: qemu accepts only 1 MiB. */
  blockSize: { offset: 0x178, size: 4 },
  /** u32 extra bytes per block (0; not checked). */
  blockExtra: { offset: 0x17c, size: 4 },
  /** u32 entries in the block map; × block_size must cover disk_size. */
  blocksInImage: { offset: 0x180, size: 4 },
  /** u32 blocks in the data area: a new block goes to index blocks_allocated. */
  blocksAllocated: { offset: 0x184, size: 4 },
  /** 16 bytes each. Link and parent must be null for qemu (a differencing image names another file). */
  uuidImage: { offset: 0x188, size: 16 },
  uuidLastSnap: { offset: 0x198, size: 16 },
  uuidLink: { offset: 0x1a8, size: 16 },
  uuidParent: { offset: 0x1b8, size: 16 },
} as const;

/** Bytes of the header (one sector). */
export const HEADER_LENGTH = 512;
export const SECTOR_SIZE = 512;
export const VDI_SIGNATURE = 0xbeda107f;
export const VDI_VERSION_1_1 = 0x00010001;
/** What qemu writes in header_size. */
export const VDI_HEADER_SIZE_FIELD = 0x180;
export const VDI_TYPE_DYNAMIC = 1;
export const VDI_TYPE_STATIC = 2;
export const VDI_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';
/** The only block size qemu accepts. */
export const BLOCK_SIZE = 1024 * 1024;
/**
 * qemu 7.2's VDI_BLOCKS_IN_IMAGE_MAX: (INT_MAX + 1 - 512) / 4, so that the block map rounded up to a sector stays
 * below 2 GiB. Verified: 536870785 is refused with "too many blocks 536870785, max is 536870784".
 */
export const MAX_BLOCKS_IN_IMAGE = (2 ** 31 - SECTOR_SIZE) / 4;
/** qemu's VDI_DISK_SIZE_MAX. */
export const MAX_DISK_SIZE = MAX_BLOCKS_IN_IMAGE * BLOCK_SIZE;

export interface VdiHeader {
  text: Uint8Array;
  signature: number;
  version: number;
  headerSize: number;
  imageType: number;
  imageFlags: number;
  description: Uint8Array;
  offsetBmap: number;
  offsetData: number;
  sectorSize: number;
  /** As stored (validateHeader rounds it up to a sector). */
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocksInImage: number;
  blocksAllocated: number;
  uuidImage: Uint8Array;
  uuidLastSnap: Uint8Array;
  uuidLink: Uint8Array;
  uuidParent: Uint8Array;
}

/** Sizes derived from a validated header; every walk of the block map uses these. */
export interface VdiGeometry {
  /** disk_size rounded up to 512, as qemu does. */
  virtualSize: number;
  blockSize: number;
  blocksInImage: number;
  /** Block map entries that map some part of the disk: ceil(virtualSize / blockSize). */
  blocksInDisk: number;
  offsetBmap: number;
  /** Bytes qemu reads for the block map: blocks_in_image × 4 rounded up to a sector. */
  bmapBytes: number;
  offsetData: number;
  isStatic: boolean;
  fileSize: number;
}

function error(code: 'CORRUPT' | 'UNSUPPORTED' | 'LIMIT' | 'WRONG_FORMAT', message: string, offset?: number): IcError {
  return new IcError(code, `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

const hex = (value: number): string => `0x${value.toString(16)}`;

export function hasVdiSignature(head: Uint8Array): boolean {
  // qemu's vdi_probe wants a whole header and the signature; nothing else.
  if (head.length < HEADER_LENGTH) return false;
  return new ByteView(head).u32le(HEADER_FIELDS.signature.offset) === VDI_SIGNATURE;
}

/** Decodes the 512 header bytes (disk_size past 2^53 is refused: it is above qemu's maximum anyway). */
export function parseHeader(bytes: Uint8Array): VdiHeader {
  if (bytes.length < HEADER_LENGTH) throw error('WRONG_FORMAT', `the file is shorter than the ${HEADER_LENGTH}-byte VDI header`);
  const view = new ByteView(bytes);
  const f = HEADER_FIELDS;
  const signature = view.u32le(f.signature.offset);
  if (signature !== VDI_SIGNATURE) throw error('WRONG_FORMAT', `no VDI signature at offset 0x40 (found ${hex(signature)})`);
  const diskSize = view.u64leBig(f.diskSize.offset);
  if (diskSize > BigInt(MAX_DISK_SIZE)) {
    throw error('UNSUPPORTED', `disk_size ${diskSize} (header offset ${hex(f.diskSize.offset)}) exceeds qemu's maximum of ${MAX_DISK_SIZE} bytes`, f.diskSize.offset);
  }
  const slice = (field: { offset: number; size: number }) => bytes.slice(field.offset, field.offset + field.size);
  return {
    text: slice(f.text),
    signature,
    version: view.u32le(f.version.offset),
    headerSize: view.u32le(f.headerSize.offset),
    imageType: view.u32le(f.imageType.offset),
    imageFlags: view.u32le(f.imageFlags.offset),
    description: slice(f.description),
    offsetBmap: view.u32le(f.offsetBmap.offset),
    offsetData: view.u32le(f.offsetData.offset),
    sectorSize: view.u32le(f.sectorSize.offset),
    diskSize: Number(diskSize),
    blockSize: view.u32le(f.blockSize.offset),
    blockExtra: view.u32le(f.blockExtra.offset),
    blocksInImage: view.u32le(f.blocksInImage.offset),
    blocksAllocated: view.u32le(f.blocksAllocated.offset),
    uuidImage: slice(f.uuidImage),
    uuidLastSnap: slice(f.uuidLastSnap),
    uuidLink: slice(f.uuidLink),
    uuidParent: slice(f.uuidParent),
  };
}

function isNullUuid(uuid: Uint8Array): boolean {
  return uuid.every((byte) => byte === 0);
}

/** Bytes qemu reads (and writes) for a block map of `blocks` entries. */
export function bmapBytesFor(blocks: number): number {
  return Math.ceil((blocks * 4) / SECTOR_SIZE) * SECTOR_SIZE;
}

/**
 * qemu's vdi_open checks, in its order (version, alignment of both offsets, sector size, block size, room for the
 * disk, null link and parent UUIDs, block count), plus what qemu leaves to chance: the block map must lie past the
 * header and inside the file (qemu would read zeros past the end and take them for block index 0).
 */
export function validateHeader(header: VdiHeader, fileSize: number): VdiGeometry {
  const f = HEADER_FIELDS;
  const unsupported = (message: string, offset: number) => error('UNSUPPORTED', `unsupported VDI image (${message})`, offset);
  if (header.version !== VDI_VERSION_1_1) throw unsupported(`version ${header.version >>> 16}.${header.version & 0xffff}`, f.version.offset);
  if (header.offsetBmap % SECTOR_SIZE !== 0) throw unsupported(`unaligned block map offset ${hex(header.offsetBmap)}`, f.offsetBmap.offset);
  if (header.offsetData % SECTOR_SIZE !== 0) throw unsupported(`unaligned data offset ${hex(header.offsetData)}`, f.offsetData.offset);
  if (header.sectorSize !== SECTOR_SIZE) throw unsupported(`sector size ${header.sectorSize} is not ${SECTOR_SIZE}`, f.sectorSize.offset);
  if (header.blockSize !== BLOCK_SIZE) throw unsupported(`block size ${header.blockSize} is not ${BLOCK_SIZE}`, f.blockSize.offset);
  const virtualSize = Math.ceil(header.diskSize / SECTOR_SIZE) * SECTOR_SIZE;
  if (virtualSize > header.blocksInImage * header.blockSize) {
    throw unsupported(`disk size ${virtualSize}, image bitmap has room for ${header.blocksInImage * header.blockSize}`, f.blocksInImage.offset);
  }
  if (!isNullUuid(header.uuidLink)) throw unsupported('non-NULL link UUID: a differencing image, whose data depends on another file', f.uuidLink.offset);
  if (!isNullUuid(header.uuidParent)) throw unsupported('non-NULL parent UUID: a differencing image, whose data depends on another file', f.uuidParent.offset);
  if (header.blocksInImage > MAX_BLOCKS_IN_IMAGE) {
    throw unsupported(`too many blocks ${header.blocksInImage}, max is ${MAX_BLOCKS_IN_IMAGE}`, f.blocksInImage.offset);
  }
  const bmapBytes = bmapBytesFor(header.blocksInImage);
  if (header.offsetBmap < HEADER_LENGTH) {
    throw error('CORRUPT', `the block map at offset_bmap ${hex(header.offsetBmap)} (header offset ${hex(f.offsetBmap.offset)}) overlaps the ${HEADER_LENGTH}-byte header`, f.offsetBmap.offset);
  }
  if (header.offsetBmap + bmapBytes > fileSize) {
    throw error('CORRUPT', `the ${bmapBytes}-byte block map at offset_bmap ${hex(header.offsetBmap)} runs past the end of the file (${fileSize} bytes): the image is truncated`, f.offsetBmap.offset);
  }
  return {
    virtualSize,
    blockSize: header.blockSize,
    blocksInImage: header.blocksInImage,
    blocksInDisk: Math.ceil(virtualSize / header.blockSize),
    offsetBmap: header.offsetBmap,
    bmapBytes,
    offsetData: header.offsetData,
    isStatic: header.imageType === VDI_TYPE_STATIC,
    fileSize,
  };
}

/** The 512 header bytes for `header` (fields qemu leaves at zero stay zero). */
export function serializeHeader(header: VdiHeader): Uint8Array {
  const view = ByteView.alloc(HEADER_LENGTH);
  const f = HEADER_FIELDS;
  const put = (field: { offset: number; size: number }, bytes: Uint8Array) => view.bytes.set(bytes.subarray(0, field.size), field.offset);
  put(f.text, header.text);
  view.setU32le(f.signature.offset, header.signature);
  view.setU32le(f.version.offset, header.version);
  view.setU32le(f.headerSize.offset, header.headerSize);
  view.setU32le(f.imageType.offset, header.imageType);
  view.setU32le(f.imageFlags.offset, header.imageFlags);
  put(f.description, header.description);
  view.setU32le(f.offsetBmap.offset, header.offsetBmap);
  view.setU32le(f.offsetData.offset, header.offsetData);
  view.setU32le(f.sectorSize.offset, header.sectorSize);
  view.setU64le(f.diskSize.offset, header.diskSize);
  view.setU32le(f.blockSize.offset, header.blockSize);
  view.setU32le(f.blockExtra.offset, header.blockExtra);
  view.setU32le(f.blocksInImage.offset, header.blocksInImage);
  view.setU32le(f.blocksAllocated.offset, header.blocksAllocated);
  put(f.uuidImage, header.uuidImage);
  put(f.uuidLastSnap, header.uuidLastSnap);
  put(f.uuidLink, header.uuidLink);
  put(f.uuidParent, header.uuidParent);
  return view.bytes;
}
