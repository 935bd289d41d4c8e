import type { BlockIO } from '@ic/core/sdk';
import type { VdiGeometry } from './header.js';

/**
 * The block map: one little-endian u32 per block of the disk, at offset_bmap. An entry holds a block *index*, not
 * an offset: block k of the disk lives at offset_data + entry × block_size.
 *   0xFFFFFFFF  never allocated (qemu reads zeros)
 *   0xFFFFFFFE  discarded (reads zeros)
 *   anything else an index into the data area; qemu's check wants it below blocks_in_image and used once.
 * New blocks get index blocks_allocated (the data area grows densely from offset_data).
 */
export const ENTRY_SIZE = 4;
export const ENTRY_UNALLOCATED = 0xffffffff;
export const ENTRY_DISCARDED = 0xfffffffe;

/** True for an entry that names a block in the data area (qemu's VDI_IS_ALLOCATED). */
export function isAllocated(entry: number): boolean {
  return entry < ENTRY_DISCARDED;
}

/** Entries read per I/O while streaming the map: 256 KiB, whatever blocks_in_image claims. */
export const ENTRIES_PER_READ = 64 * 1024;

export interface BlockMapChunk {
  /** Block number of the first entry in `entries`. */
  firstBlock: number;
  entries: Uint32Array;
}

/** Streams entries [firstBlock, firstBlock + count) of the block map in bounded chunks. */
export async function* readBlockMap(io: BlockIO, geometry: VdiGeometry, firstBlock: number, count: number): AsyncGenerator<BlockMapChunk> {
  const end = firstBlock + count;
  for (let block = firstBlock; block < end; ) {
    const chunk = Math.min(ENTRIES_PER_READ, end - block);
    const bytes = await io.read(geometry.offsetBmap + block * ENTRY_SIZE, chunk * ENTRY_SIZE);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const entries = new Uint32Array(chunk);
    for (let i = 0; i < chunk; i++) entries[i] = view.getUint32(i * ENTRY_SIZE, true);
    yield { firstBlock: block, entries };
    block += chunk;
  }
}

/** Host offset of block index `entry`. */
export function blockHostOffset(geometry: Pick<VdiGeometry, 'offsetData' | 'blockSize'>, entry: number): number {
  return geometry.offsetData + entry * geometry.blockSize;
}

/** Host offset of the map entry for disk block `block` (for messages). */
export function entryHostOffset(geometry: Pick<VdiGeometry, 'offsetBmap'>, block: number): number {
  return geometry.offsetBmap + block * ENTRY_SIZE;
}

/** Encodes a block map, padded with zero bytes to `bytes` (a whole sector), as qemu writes it. */
export function encodeBlockMap(entries: ArrayLike<number>, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  for (let i = 0; i < entries.length; i++) view.setUint32(i * ENTRY_SIZE, entries[i]!, true);
  return out;
}
