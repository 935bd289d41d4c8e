import { type BlockIO } from '@ic/core/sdk';
import { MiB } from './header.js';
import { SECTORS_PER_CHUNK } from './metadata.js';

/**
 * The BAT ([MS-VHDX] 2.5): u64 little-endian entries, bits 0-2 the state, bits 20-63 the file offset in MiB.
 * Payload block entries come in chunks of chunk_ratio, each chunk followed by the entry of its sector bitmap block
 * (used by differencing images only).
 */
export const BAT_ENTRY_SIZE = 8;
export const STATE_MASK = 0x7;

/** Payload block states. */
export const PAYLOAD_BLOCK_NOT_PRESENT = 0;
export const PAYLOAD_BLOCK_UNDEFINED = 1;
export const PAYLOAD_BLOCK_ZERO = 2;
export const PAYLOAD_BLOCK_UNMAPPED = 3;
/** The value "unmapped" had in the 0.95 draft of the specification; qemu reads it as unmapped. */
export const PAYLOAD_BLOCK_UNMAPPED_V095 = 5;
export const PAYLOAD_BLOCK_FULLY_PRESENT = 6;
export const PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7;
/** Sector bitmap block states. */
export const SB_BLOCK_NOT_PRESENT = 0;
export const SB_BLOCK_PRESENT = 6;

/** Entries read per I/O while streaming the BAT: 512 KiB. */
export const ENTRIES_PER_READ = 64 * 1024;

export interface BatGeometry {
  blockSize: number;
  /** Payload blocks per sector bitmap block: 2^23 * 512 / block size. */
  chunkRatio: number;
  /** Payload blocks covering the disk. */
  dataBlocks: number;
  /** BAT entries qemu reads (payload and sector bitmap entries). */
  batEntries: number;
}

/**
 * qemu's vhdx_calc_bat_entries, with its unsigned arithmetic: without a parent the sector bitmap entries stop
 * after the last payload chunk; with one every chunk has its own.
 */
export function batGeometry(virtualSize: number, blockSize: number, hasParent: boolean): BatGeometry {
  const chunkRatio = (SECTORS_PER_CHUNK * 512) / blockSize;
  const dataBlocks = Math.ceil(virtualSize / blockSize);
  const bitmapBlocks = Math.ceil(dataBlocks / chunkRatio);
  const batEntries = hasParent ? bitmapBlocks * (chunkRatio + 1) : dataBlocks + Math.floor(((dataBlocks - 1) >>> 0) / chunkRatio);
  return { blockSize, chunkRatio, dataBlocks, batEntries };
}

/** The BAT index of payload block `block`. */
export function payloadIndex(geometry: BatGeometry, block: number): number {
  return block + Math.floor(block / geometry.chunkRatio);
}

/** True when BAT index `index` is a sector bitmap entry. */
export function isBitmapIndex(geometry: BatGeometry, index: number): boolean {
  return index % (geometry.chunkRatio + 1) === geometry.chunkRatio;
}

/** The BAT region length qemu-img create gives a geometry: the entries rounded up to 1 MiB. */
export function batRegionLength(geometry: BatGeometry): number {
  return Math.ceil((geometry.batEntries * BAT_ENTRY_SIZE) / MiB) * MiB;
}

export interface BatChunk {
  firstIndex: number;
  count: number;
  view: DataView;
}

export async function* readBat(io: BlockIO, batOffset: number, firstIndex: number, count: number): AsyncGenerator<BatChunk> {
  let index = firstIndex;
  const end = firstIndex + count;
  while (index < end) {
    const chunk = Math.min(ENTRIES_PER_READ, end - index);
    const bytes = await io.read(batOffset + index * BAT_ENTRY_SIZE, chunk * BAT_ENTRY_SIZE);
    yield { firstIndex: index, count: chunk, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
    index += chunk;
  }
}

/** State of entry `i` of a chunk. */
export function entryState(view: DataView, i: number): number {
  return view.getUint32(i * BAT_ENTRY_SIZE, true) & STATE_MASK;
}

/** File offset of entry `i` of a chunk (bits 20-63), or -1 when it lies at or past 2^53. */
export function entryOffset(view: DataView, i: number): number {
  const low = view.getUint32(i * BAT_ENTRY_SIZE, true);
  const high = view.getUint32(i * BAT_ENTRY_SIZE + 4, true);
  if (high >= 2 ** 21) return -1;
  return high * 2 ** 32 + ((low & 0xfff00000) >>> 0);
}

/** Entry value for a state and a MiB-aligned offset. */
export function encodeEntry(view: DataView, i: number, state: number, offset: number): void {
  const high = Math.floor(offset / 2 ** 32);
  view.setUint32(i * BAT_ENTRY_SIZE, ((offset - high * 2 ** 32) | state) >>> 0, true);
  view.setUint32(i * BAT_ENTRY_SIZE + 4, high, true);
}
