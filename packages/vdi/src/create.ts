import { alignUp, encodeText, IcError, type BlockIO, type CreateSpec, type OptionDescriptor } from '@ic/core/sdk';
import { encodeBlockMap, ENTRY_SIZE, ENTRY_UNALLOCATED } from './blockmap.js';
import {
  BLOCK_SIZE,
  bmapBytesFor,
  FORMAT,
  HEADER_LENGTH,
  MAX_DISK_SIZE,
  SECTOR_SIZE,
  serializeHeader,
  VDI_HEADER_SIZE_FIELD,
  VDI_SIGNATURE,
  VDI_TEXT,
  VDI_TYPE_DYNAMIC,
  VDI_TYPE_STATIC,
  VDI_VERSION_1_1,
  type VdiHeader,
} from './header.js';

/** Block map entries per write while creating an image (1 MiB). */
const BMAP_WRITE_ENTRIES = 256 * 1024;

/** qemu-img's VDI creation options (block size is fixed at 1 MiB in qemu builds). */
export const VDI_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'static', type: 'boolean', default: false, help: 'Static (pre-allocated) image: every block allocated, in disk order' },
];

/** Where qemu puts the block map: right after the header. */
export const DEFAULT_OFFSET_BMAP = HEADER_LENGTH;

/** The data offset qemu uses for a disk of `blocks` blocks: header, then the block map rounded up to a sector. */
export function defaultOffsetData(blocks: number): number {
  return DEFAULT_OFFSET_BMAP + bmapBytesFor(blocks);
}

/**
 * A random UUID as qemu stores it: RFC 4122 version 4, its first three fields byte-swapped to little-endian
 * (VirtualBox's layout).
 */
export function randomStoredUuid(): Uint8Array {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: { getRandomValues?: (array: Uint8Array) => Uint8Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  bytes.subarray(0, 4).reverse();
  bytes.subarray(4, 6).reverse();
  bytes.subarray(6, 8).reverse();
  return bytes;
}

/** The disk size qemu-img create records: the requested size rounded up to a sector; refused past qemu's maximum. */
export function creationSize(requested: number): number {
  if (!Number.isSafeInteger(requested) || requested < 0) throw new IcError('INVALID', `${FORMAT}: invalid virtual size ${requested}`);
  const size = alignUp(requested, SECTOR_SIZE);
  if (size > MAX_DISK_SIZE) {
    throw new IcError('INVALID', `${FORMAT}: Unsupported VDI image size (size is 0x${size.toString(16)}, max supported is 0x${MAX_DISK_SIZE.toString(16)})`);
  }
  return size;
}

/** Header fields of a fresh image, laid out as qemu lays them: block map at 512, data right after it. */
export function newHeader(fields: { diskSize: number; imageType: number; blocksAllocated: number; offsetData?: number }): VdiHeader {
  const blocks = Math.ceil(fields.diskSize / BLOCK_SIZE);
  const text = new Uint8Array(64);
  text.set(encodeText(VDI_TEXT));
  return {
    text,
    signature: VDI_SIGNATURE,
    version: VDI_VERSION_1_1,
    headerSize: VDI_HEADER_SIZE_FIELD,
    imageType: fields.imageType,
    imageFlags: 0,
    description: new Uint8Array(256),
    offsetBmap: DEFAULT_OFFSET_BMAP,
    offsetData: fields.offsetData ?? defaultOffsetData(blocks),
    sectorSize: SECTOR_SIZE,
    diskSize: fields.diskSize,
    blockSize: BLOCK_SIZE,
    blockExtra: 0,
    blocksInImage: blocks,
    blocksAllocated: fields.blocksAllocated,
    uuidImage: randomStoredUuid(),
    uuidLastSnap: randomStoredUuid(),
    uuidLink: new Uint8Array(16),
    uuidParent: new Uint8Array(16),
  };
}

/**
 * An empty image laid out like `qemu-img create -f vdi [-o static=on]`: the header, the block map (all
 * unallocated; static: block k at index k), and for a static image a file extended over every block.
 * Only the UUIDs differ from qemu's (both are random).
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  if (spec.backing) throw new IcError('UNSUPPORTED', `${FORMAT}: Backing file not supported for file format 'vdi'`, { format: FORMAT });
  const isStatic = spec.options['static'] ?? false;
  if (typeof isStatic !== 'boolean') throw new IcError('INVALID', `${FORMAT}: static must be on or off (got ${String(isStatic)})`);
  const diskSize = creationSize(spec.virtualSize);
  const blocks = Math.ceil(diskSize / BLOCK_SIZE);
  const header = newHeader({ diskSize, imageType: isStatic ? VDI_TYPE_STATIC : VDI_TYPE_DYNAMIC, blocksAllocated: isStatic ? blocks : 0 });
  await io.truncate(0);
  await io.write(0, serializeHeader(header));
  // The map is written a piece at a time: a disk at qemu's maximum size has a 2 GiB map.
  const bmapBytes = bmapBytesFor(blocks);
  for (let first = 0; first * ENTRY_SIZE < bmapBytes; first += BMAP_WRITE_ENTRIES) {
    const entries = new Uint32Array(Math.max(0, Math.min(BMAP_WRITE_ENTRIES, blocks - first)));
    for (let i = 0; i < entries.length; i++) entries[i] = isStatic ? first + i : ENTRY_UNALLOCATED;
    await io.write(header.offsetBmap + first * ENTRY_SIZE, encodeBlockMap(entries, Math.min(BMAP_WRITE_ENTRIES * ENTRY_SIZE, bmapBytes - first * ENTRY_SIZE)));
  }
  if (isStatic) await io.truncate(header.offsetData + blocks * BLOCK_SIZE);
  await io.flush();
}
