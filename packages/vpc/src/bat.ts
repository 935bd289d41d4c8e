import type { BlockIO } from '@ic/core/sdk';

/**
 * The block allocation table: one big-endian u32 per block, the *sector* number of the block's bitmap;
 * 0xFFFFFFFF = not allocated (reads as zeros on a dynamic disk). A block is its bitmap (bitmaps.ts) followed by
 * block_size bytes of data; qemu ignores the bitmap when reading and writes it all ones.
 */
export const BAT_ENTRY_SIZE = 4;
export const BAT_UNALLOCATED = 0xffffffff;
/** BAT entries count sectors. */
export const BAT_UNIT = 512;

/** Entries read per I/O while streaming the table: 256 KiB, whatever max_table_entries claims. */
export const BAT_ENTRIES_PER_READ = 64 * 1024;

export interface BatChunk {
  /** Block number of the first entry in `entries`. */
  firstBlock: number;
  entries: Uint32Array;
}

/** Streams entries [firstBlock, firstBlock + count) of the BAT at `tableOffset` in bounded chunks. */
export async function* readBat(io: BlockIO, tableOffset: number, firstBlock: number, count: number): AsyncGenerator<BatChunk> {
  const end = firstBlock + count;
  for (let block = firstBlock; block < end; ) {
    const chunk = Math.min(BAT_ENTRIES_PER_READ, end - block);
    const bytes = await io.read(tableOffset + block * BAT_ENTRY_SIZE, chunk * BAT_ENTRY_SIZE);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const entries = new Uint32Array(chunk);
    for (let i = 0; i < chunk; i++) entries[i] = view.getUint32(i * BAT_ENTRY_SIZE, false);
    yield { firstBlock: block, entries };
    block += chunk;
  }
}

/** Bytes of a table of `entries` entries as qemu lays it out: rounded up to a sector, the padding all ones. */
export function batBytesFor(entries: number): number {
  return Math.ceil((entries * BAT_ENTRY_SIZE) / 512) * 512;
}

/** Encodes entries (padding all ones, as qemu's create writes 0xFF sectors) into `bytes` bytes. */
export function encodeBat(entries: ArrayLike<number>, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes).fill(0xff);
  const view = new DataView(out.buffer);
  for (let i = 0; i < entries.length; i++) view.setUint32(i * BAT_ENTRY_SIZE, entries[i]!, false);
  return out;
}
