import { type BlockIO } from '@ic/core/sdk';
import { BAT_ENTRY_SIZE, HEADER_LENGTH } from './header.js';

/**
 * The block allocation table: bat_entries little-endian u32 values right after the 64-byte header, one per guest
 * cluster. 0 = unallocated (reads the backing file or zeros); otherwise the cluster's host offset divided by 512
 * ("WithoutFreeSpace") or by the cluster size ("WithouFreSpacExt").
 */

/** Entries read per I/O while streaming the BAT: 256 KiB. */
export const ENTRIES_PER_READ = 64 * 1024;

/** File offset of BAT entry `index`. */
export function batEntryOffset(index: number): number {
  return HEADER_LENGTH + BAT_ENTRY_SIZE * index;
}

export interface BatChunk {
  firstIndex: number;
  count: number;
  entries: Uint32Array;
}

/** Streams entries [firstIndex, firstIndex + count) of the BAT in bounded chunks. */
export async function* readBat(io: BlockIO, firstIndex: number, count: number): AsyncGenerator<BatChunk> {
  let index = firstIndex;
  const end = firstIndex + count;
  while (index < end) {
    const chunk = Math.min(ENTRIES_PER_READ, end - index);
    const bytes = await io.read(batEntryOffset(index), chunk * BAT_ENTRY_SIZE);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const entries = new Uint32Array(chunk);
    for (let i = 0; i < chunk; i++) entries[i] = view.getUint32(i * BAT_ENTRY_SIZE, true);
    yield { firstIndex: index, count: chunk, entries };
    index += chunk;
  }
}

/** The BAT bytes for `entries` (values already divided by the entry unit). */
export function encodeBat(entries: Uint32Array): Uint8Array {
  const out = new Uint8Array(entries.length * BAT_ENTRY_SIZE);
  const view = new DataView(out.buffer);
  for (let i = 0; i < entries.length; i++) view.setUint32(i * BAT_ENTRY_SIZE, entries[i]!, true);
  return out;
}
