import { ByteView, type BackingReference, type BlockIO } from '@ic/core/sdk';
import {
  FILE_PARAMETERS_GUID,
  GUID_LENGTH,
  guidEqual,
  guidText,
  LOGICAL_SECTOR_SIZE_GUID,
  PAGE_83_GUID,
  PARENT_LOCATOR_GUID,
  PHYSICAL_SECTOR_SIZE_GUID,
  VHDX_PARENT_LOCATOR_TYPE,
  VIRTUAL_DISK_SIZE_GUID,
} from './guid.js';
import { BLOCK_64K, MiB, vhdxError } from './header.js';
import type { RegionEntry } from './region.js';

/**
 * The metadata region ([MS-VHDX] 2.6): a 64 KiB table ("metadata", u16 reserved, u16 entry count, 20 reserved
 * bytes, then 32-byte entries: item GUID, u32 offset from the region's start, u32 length, u32 flags) followed by
 * the items. Flags: bit 0 user, bit 1 virtual disk, bit 2 required.
 */
export const METADATA_SIGNATURE = 'metadata';
export const METADATA_TABLE_SIZE = BLOCK_64K;
export const METADATA_HEADER_LENGTH = 32;
export const METADATA_ENTRY_LENGTH = 32;
export const MAX_METADATA_ENTRIES = 2047;
export const META_IS_USER = 0x1;
export const META_IS_VIRTUAL_DISK = 0x2;
export const META_IS_REQUIRED = 0x4;

/** File parameters flags. */
export const LEAVE_BLOCKS_ALLOCATED = 0x1;
export const HAS_PARENT = 0x2;

export const MIN_BLOCK_SIZE = MiB;
export const MAX_BLOCK_SIZE = 256 * MiB;
/** The 2^23 sectors of one chunk that a sector bitmap block describes. */
export const SECTORS_PER_CHUNK = 2 ** 23;

export interface MetadataItem {
  offset: number;
  length: number;
  flags: number;
}

export interface VhdxMetadata {
  blockSize: number;
  /** File parameter flags: LEAVE_BLOCKS_ALLOCATED (fixed), HAS_PARENT (differencing). */
  fileFlags: number;
  /** The virtual disk size as stored. */
  virtualDiskSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  page83: Uint8Array;
  /** Parent locator key/value pairs (differencing images only). */
  parent?: Map<string, string>;
  /** Where each item lies, relative to the region's start (for messages and host ranges). */
  items: Map<string, MetadataItem>;
}

const hex = (value: number): string => `0x${value.toString(16)}`;

/** The metadata items this driver knows, by name and GUID (the first five are required). */
export const METADATA_ITEMS: readonly [string, Uint8Array][] = [
  ['file parameters', FILE_PARAMETERS_GUID],
  ['virtual disk size', VIRTUAL_DISK_SIZE_GUID],
  ['page 83 data', PAGE_83_GUID],
  ['logical sector size', LOGICAL_SECTOR_SIZE_GUID],
  ['physical sector size', PHYSICAL_SECTOR_SIZE_GUID],
  ['parent locator', PARENT_LOCATOR_GUID],
];
const MINIMUM_LENGTH: Readonly<Record<string, number>> = {
  'file parameters': 8,
  'virtual disk size': 8,
  'page 83 data': 16,
  'logical sector size': 4,
  'physical sector size': 4,
  'parent locator': 20,
};
/** Largest item ic reads (the specification caps items at 1 MiB). */
export const MAX_ITEM_LENGTH = MiB;

/**
 * Reads and validates the metadata table and its items as qemu's vhdx_parse_metadata does (signature, entry
 * count, each known item once, no unknown required item, the five required items present; block size a power of
 * two in [1 MiB, 256 MiB]; logical sector size 512). ic also requires every item to lie inside the region.
 */
export async function readMetadata(io: BlockIO, region: RegionEntry): Promise<VhdxMetadata> {
  const base = region.fileOffset;
  if (region.length < METADATA_TABLE_SIZE) throw vhdxError('CORRUPT', `the metadata region at ${hex(base)} is ${region.length} bytes, smaller than its 64 KiB table`, base);
  const table = await io.read(base, METADATA_TABLE_SIZE);
  const view = new ByteView(table);
  if (view.text(0, 8) !== METADATA_SIGNATURE) throw vhdxError('CORRUPT', `the metadata table at ${hex(base)} has no "metadata" signature`, base);
  const count = view.u16le(10);
  if (count > MAX_METADATA_ENTRIES) throw vhdxError('CORRUPT', `the metadata table at ${hex(base)} claims ${count} entries (at most ${MAX_METADATA_ENTRIES})`, base + 10);
  const items = new Map<string, MetadataItem>();
  for (let i = 0; i < count; i++) {
    const at = METADATA_HEADER_LENGTH + i * METADATA_ENTRY_LENGTH;
    const id = table.subarray(at, at + GUID_LENGTH);
    const item: MetadataItem = { offset: view.u32le(at + 16), length: view.u32le(at + 20), flags: view.u32le(at + 24) };
    const known = METADATA_ITEMS.find(([, value]) => guidEqual(value, id))?.[0];
    if (!known) {
      if ((item.flags & META_IS_REQUIRED) !== 0) throw vhdxError('UNSUPPORTED', `metadata item ${guidText(id)} (entry at ${hex(base + at)}) is marked required and is not known`, base + at);
      continue;
    }
    if (items.has(known)) throw vhdxError('CORRUPT', `the metadata table lists the ${known} item twice (entry at ${hex(base + at)})`, base + at);
    if (item.length < MINIMUM_LENGTH[known]! || item.length > MAX_ITEM_LENGTH || item.offset + item.length > region.length) {
      throw vhdxError('CORRUPT', `the ${known} item at ${hex(item.offset)}+${item.length} (entry at ${hex(base + at)}) does not lie inside the ${region.length}-byte metadata region`, base + at);
    }
    items.set(known, item);
  }
  for (const [name] of METADATA_ITEMS.slice(0, 5)) {
    if (!items.has(name)) throw vhdxError('UNSUPPORTED', `the metadata table has no ${name} item`, base);
  }
  const read = async (name: string, length: number) => new ByteView(await io.read(base + items.get(name)!.offset, length));
  const parameters = await read('file parameters', 8);
  const metadata: VhdxMetadata = {
    blockSize: parameters.u32le(0),
    fileFlags: parameters.u32le(4),
    virtualDiskSize: (await read('virtual disk size', 8)).u64le(0, 'virtual disk size'),
    logicalSectorSize: (await read('logical sector size', 4)).u32le(0),
    physicalSectorSize: (await read('physical sector size', 4)).u32le(0),
    page83: (await read('page 83 data', 16)).bytes,
    items,
  };
  const where = (name: string) => base + items.get(name)!.offset;
  if ((metadata.fileFlags & HAS_PARENT) !== 0) {
    const locator = items.get('parent locator');
    if (!locator) throw vhdxError('CORRUPT', 'the file parameters say the image has a parent, but there is no parent locator', where('file parameters'));
    metadata.parent = parseParentLocator(await io.read(base + locator.offset, locator.length), base + locator.offset);
  }
  const { blockSize, logicalSectorSize } = metadata;
  if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw vhdxError('CORRUPT', `block size ${blockSize} (file parameters at ${hex(where('file parameters'))}) is not a power of two from 1 MiB to 256 MiB`, where('file parameters'));
  }
  if (logicalSectorSize !== 512) {
    throw vhdxError('UNSUPPORTED', `logical sector size ${logicalSectorSize} (at ${hex(where('logical sector size'))}): only 512 is supported (as in qemu)`, where('logical sector size'));
  }
  return metadata;
}

/**
 * A parent locator ([MS-VHDX] 2.6.2.6): GUID locator type, u16 reserved, u16 key/value count, then 12-byte entries
 * (u32 key offset, u32 value offset, u16 key length, u16 value length) pointing at UTF-16LE strings inside the item.
 */
export function parseParentLocator(bytes: Uint8Array, at: number): Map<string, string> {
  const view = new ByteView(bytes);
  if (!guidEqual(bytes.subarray(0, GUID_LENGTH), VHDX_PARENT_LOCATOR_TYPE)) {
    throw vhdxError('UNSUPPORTED', `the parent locator at ${hex(at)} is of type ${guidText(bytes.subarray(0, GUID_LENGTH))}, not a VHDX parent`, at);
  }
  const count = view.u16le(18);
  if (20 + count * 12 > bytes.length) throw vhdxError('CORRUPT', `the parent locator at ${hex(at)} claims ${count} entries that do not fit in it`, at);
  const text = (offset: number, length: number, what: string): string => {
    if (length === 0 || length % 2 !== 0 || offset + length > bytes.length) throw vhdxError('CORRUPT', `parent locator ${what} at ${offset}+${length} does not lie inside the locator at ${hex(at)}`, at);
    let out = '';
    for (let i = 0; i < length; i += 2) out += String.fromCharCode(view.u16le(offset + i));
    return out;
  };
  const pairs = new Map<string, string>();
  for (let i = 0; i < count; i++) {
    const e = 20 + i * 12;
    const key = text(view.u32le(e), view.u16le(e + 8), 'key');
    pairs.set(key, text(view.u32le(e + 4), view.u16le(e + 10), `value of ${key}`));
  }
  return pairs;
}

/** The backing reference a differencing image names: the relative path if there is one, else an absolute one. */
export function backingOf(parent: Map<string, string>): BackingReference | undefined {
  const name = parent.get('relative_path') ?? parent.get('absolute_win32_path') ?? parent.get('volume_path');
  return name === undefined || name === '' ? undefined : { name, format: 'vhdx' };
}

/**
 * The metadata region qemu-img create writes: the table (five entries, items from offset 64 KiB) and the items.
 * Returns the table block and the items block (written at 64 KiB into the region).
 */
export function serializeMetadata(metadata: { blockSize: number; fileFlags: number; virtualDiskSize: number; sectorSize: number; page83: Uint8Array }): { table: Uint8Array; items: Uint8Array } {
  const table = new Uint8Array(METADATA_TABLE_SIZE);
  const view = new ByteView(table);
  for (let i = 0; i < 8; i++) view.setU8(i, METADATA_SIGNATURE.charCodeAt(i));
  view.setU16le(10, 5);
  const entries: [Uint8Array, number, number][] = [
    [FILE_PARAMETERS_GUID, 8, META_IS_REQUIRED],
    [VIRTUAL_DISK_SIZE_GUID, 8, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [PAGE_83_GUID, 16, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [LOGICAL_SECTOR_SIZE_GUID, 4, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
    [PHYSICAL_SECTOR_SIZE_GUID, 4, META_IS_REQUIRED | META_IS_VIRTUAL_DISK],
  ];
  let offset = METADATA_TABLE_SIZE;
  entries.forEach(([id, length, flags], i) => {
    const at = METADATA_HEADER_LENGTH + i * METADATA_ENTRY_LENGTH;
    table.set(id, at);
    view.setU32le(at + 16, offset);
    view.setU32le(at + 20, length);
    view.setU32le(at + 24, flags);
    offset += length;
  });
  const items = new ByteView(new Uint8Array(40));
  items.setU32le(0, metadata.blockSize);
  items.setU32le(4, metadata.fileFlags);
  items.setU64le(8, metadata.virtualDiskSize);
  items.bytes.set(metadata.page83, 16);
  items.setU32le(32, metadata.sectorSize);
  items.setU32le(36, metadata.sectorSize);
  return { table, items: items.bytes };
}
