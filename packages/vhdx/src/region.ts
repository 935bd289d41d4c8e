import { ByteView, type BlockIO } from '@ic/core/sdk';
import { BAT_REGION_GUID, GUID_LENGTH, guidEqual, guidText, METADATA_REGION_GUID } from './guid.js';
import { checksumValid, REGION_SIGNATURE, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE, setChecksum, vhdxError } from './header.js';

/**
 * The region table ([MS-VHDX] 2.2.3): a 16-byte header ("regi", CRC-32C over the 64 KiB table, entry count,
 * reserved) and 32-byte entries: GUID, u64 file offset, u32 length, u32 flags (bit 0 required).
 */
export const REGION_HEADER_LENGTH = 16;
export const REGION_ENTRY_LENGTH = 32;
export const MAX_REGION_ENTRIES = 2047;
export const REGION_REQUIRED = 0x1;

export interface RegionEntry {
  guid: Uint8Array;
  fileOffset: number;
  length: number;
  required: boolean;
}

export interface RegionTable {
  bat: RegionEntry;
  metadata: RegionEntry;
  /** Regions qemu does not know but may skip (not required). */
  others: RegionEntry[];
}

/** A byte range of the file that one structure owns; they must not overlap (qemu's vhdx_region_check). */
export interface OwnedRange {
  start: number;
  end: number;
  what: string;
}

const hex = (value: number): string => `0x${value.toString(16)}`;

/** The first owned range that [start, end) overlaps, or undefined. */
export function overlapping(ranges: readonly OwnedRange[], start: number, end: number): OwnedRange | undefined {
  return ranges.find((range) => start < range.end && end > range.start);
}

/**
 * Reads region table 1 as qemu does (vhdx_open_region_tables): CRC, signature, at most 2047 entries, no overlap
 * with the log or with each other, BAT and metadata regions present once each, no unknown required region.
 * Every entry is registered in `owned`.
 */
export async function readRegionTable(io: BlockIO, owned: OwnedRange[]): Promise<RegionTable> {
  const at = REGION_TABLE_OFFSETS[0];
  const bytes = await io.read(at, REGION_TABLE_SIZE);
  if (!checksumValid(bytes, 4)) throw vhdxError('CORRUPT', `region table at ${hex(at)} fails its CRC-32C`, at);
  const view = new ByteView(bytes);
  if (view.u32le(0) !== REGION_SIGNATURE) throw vhdxError('CORRUPT', `region table at ${hex(at)} has no "regi" signature`, at);
  const count = view.u32le(8);
  if (count > MAX_REGION_ENTRIES) throw vhdxError('CORRUPT', `region table at ${hex(at)} claims ${count} entries (at most ${MAX_REGION_ENTRIES})`, at + 8);
  let bat: RegionEntry | undefined;
  let metadata: RegionEntry | undefined;
  const others: RegionEntry[] = [];
  for (let i = 0; i < count; i++) {
    const base = REGION_HEADER_LENGTH + i * REGION_ENTRY_LENGTH;
    const entryAt = at + base;
    const offset = view.u64leBig(base + 16);
    const entry: RegionEntry = {
      guid: bytes.slice(base, base + GUID_LENGTH),
      fileOffset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset),
      length: view.u32le(base + 24),
      required: (view.u32le(base + 28) & REGION_REQUIRED) !== 0,
    };
    const end = entry.fileOffset + entry.length;
    if (!Number.isSafeInteger(end)) throw vhdxError('CORRUPT', `region ${guidText(entry.guid)} (entry at ${hex(entryAt)}) lies past any file`, entryAt);
    const clash = overlapping(owned, entry.fileOffset, end);
    if (clash) throw vhdxError('CORRUPT', `region ${guidText(entry.guid)} at ${hex(entry.fileOffset)}+${hex(entry.length)} (entry at ${hex(entryAt)}) overlaps the ${clash.what}`, entryAt);
    const known = guidEqual(entry.guid, BAT_REGION_GUID) ? 'BAT' : guidEqual(entry.guid, METADATA_REGION_GUID) ? 'metadata region' : undefined;
    owned.push({ start: entry.fileOffset, end, what: known ?? `region ${guidText(entry.guid)}` });
    if (known === 'BAT') {
      if (bat) throw vhdxError('CORRUPT', `region table at ${hex(at)} lists the BAT twice`, entryAt);
      bat = entry;
    } else if (known) {
      if (metadata) throw vhdxError('CORRUPT', `region table at ${hex(at)} lists the metadata region twice`, entryAt);
      metadata = entry;
    } else if (entry.required) {
      throw vhdxError('UNSUPPORTED', `region ${guidText(entry.guid)} (entry at ${hex(entryAt)}) is marked required and is not known`, entryAt);
    } else {
      others.push(entry);
    }
  }
  if (!bat || !metadata) throw vhdxError('CORRUPT', `region table at ${hex(at)} lacks the ${bat ? 'metadata region' : 'BAT'}`, at);
  return { bat, metadata, others };
}

/** A 64 KiB region table holding `entries`, checksummed. */
export function serializeRegionTable(entries: readonly RegionEntry[]): Uint8Array {
  const bytes = new Uint8Array(REGION_TABLE_SIZE);
  const view = new ByteView(bytes);
  view.setU32le(0, REGION_SIGNATURE);
  view.setU32le(8, entries.length);
  entries.forEach((entry, i) => {
    const base = REGION_HEADER_LENGTH + i * REGION_ENTRY_LENGTH;
    bytes.set(entry.guid, base);
    view.setU64le(base + 16, entry.fileOffset);
    view.setU32le(base + 24, entry.length);
    view.setU32le(base + 28, entry.required ? REGION_REQUIRED : 0);
  });
  setChecksum(bytes, 4);
  return bytes;
}
