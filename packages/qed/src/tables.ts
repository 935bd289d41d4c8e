import { isAllZero, readInto, type BlockIO } from '@ic/core/sdk';
import type { QedGeometry } from './header.js';

/**
 * L1 and L2 tables: table_size contiguous clusters of little-endian u64 entries.
 *   L1 entry: 0 = no L2 table (the whole range is unallocated), else the byte offset of an L2 table.
 *   L2 entry: 0 = unallocated (read the backing file or zeros), 1 = zero cluster (reads zero and hides
 *             the backing file), else the byte offset of a data cluster.
 * Every offset is cluster-aligned, at or past the header region and inside the file (see header.ts).
 */
export const ENTRY_SIZE = 8;
export const ENTRY_UNALLOCATED = 0;
export const ENTRY_ZERO = 1;

/** Entries read per I/O while streaming a table: 512 KiB, whatever the table size. */
export const ENTRIES_PER_READ = 64 * 1024;

/**
 * Decodes entry `index` of `bytes` as a number. Values of 2^53 and above cannot be valid offsets (no file is
 * that large), so they come back as an approximate float that fails every bounds check.
 */
export function decodeEntry(view: DataView, index: number): number {
  const low = view.getUint32(index * ENTRY_SIZE, true);
  const high = view.getUint32(index * ENTRY_SIZE + 4, true);
  return high * 2 ** 32 + low;
}

/** Entry value for messages: exact even past 2^53. */
export function entryHex(view: DataView, index: number): string {
  return `0x${view.getBigUint64(index * ENTRY_SIZE, true).toString(16)}`;
}

export interface TableChunk {
  /** Index (inside the table) of the first entry in `view`. */
  firstIndex: number;
  count: number;
  view: DataView;
  /** The chunk holds only zero entries (common: tables are mostly empty), so callers can skip it whole. */
  allZero: boolean;
}

/**
 * Streams entries [firstIndex, firstIndex + count) of the table at `tableOffset`, at most ENTRIES_PER_READ
 * at a time, so memory stays bounded whatever table_size * cluster_size claims. With `scratch` (a walk that
 * finishes each chunk before it asks for the next, of any table), the chunks are read into it while it is large
 * enough, instead of into a new buffer each.
 */
export async function* readTableEntries(io: BlockIO, tableOffset: number, firstIndex: number, count: number, scratch?: Uint8Array): AsyncGenerator<TableChunk> {
  let index = firstIndex;
  const end = firstIndex + count;
  while (index < end) {
    const chunk = Math.min(ENTRIES_PER_READ, end - index);
    const at = tableOffset + index * ENTRY_SIZE;
    const bytes = scratch && scratch.length >= chunk * ENTRY_SIZE ? await readInto(io, at, scratch.subarray(0, chunk * ENTRY_SIZE)) : await io.read(at, chunk * ENTRY_SIZE);
    yield { firstIndex: index, count: chunk, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), allZero: isAllZero(bytes) };
    index += chunk;
  }
}

/** A scratch buffer for readTableEntries() over the tables of `geometry`: one chunk of entries. */
export function tableScratch(geometry: QedGeometry): Uint8Array {
  return new Uint8Array(Math.min(geometry.tableEntries, ENTRIES_PER_READ) * ENTRY_SIZE);
}

/** Host offset of entry `index` of the table at `tableOffset` (for messages). */
export function entryHostOffset(tableOffset: number, index: number): number {
  return tableOffset + index * ENTRY_SIZE;
}

/** Number of L1 entries that map some part of [0, imageSize). */
export function l1EntriesInUse(geometry: QedGeometry): number {
  return Math.ceil(geometry.imageSize / geometry.l2Coverage);
}

/** Largest single write a table is split into. */
export const MAX_TABLE_WRITE = 4 * 1024 * 1024;

/**
 * One table (L1 or L2) being filled for writing: table_size clusters, kept as pieces of at most
 * MAX_TABLE_WRITE bytes that are allocated only when an entry lands in them, so a huge, mostly empty
 * table costs little memory. The untouched pieces are never written: the space a table goes to reads as zeros.
 */
export class TableBuilder {
  private readonly pieces = new Map<number, DataView>();
  /** Pieces of the tables filled before (zeroed by clear()), used again before new ones are made. */
  private readonly spare: DataView[] = [];
  private readonly pieceBytes: number;
  private lastIndex = -1;
  private last: DataView | undefined;

  constructor(
    readonly hostOffset: number,
    readonly tableBytes: number,
  ) {
    this.pieceBytes = Math.min(tableBytes, MAX_TABLE_WRITE);
  }

  set(index: number, value: number): void {
    this.setRun(index, 1, value, 0);
  }

  /** Piece `pieceIndex` of the table (made on first use). */
  private pieceAt(pieceIndex: number): DataView {
    let piece = pieceIndex === this.lastIndex ? this.last : this.pieces.get(pieceIndex);
    if (!piece) {
      piece = this.spare.pop() ?? new DataView(new ArrayBuffer(this.pieceBytes));
      this.pieces.set(pieceIndex, piece);
    }
    this.lastIndex = pieceIndex;
    this.last = piece;
    return piece;
  }

  /** Sets `count` entries from `index`: `value`, `value + step`, ... (a run of data clusters, or zero entries with step 0). */
  setRun(index: number, count: number, value: number, step: number): void {
    let at = index * ENTRY_SIZE;
    let entry = value;
    const end = (index + count) * ENTRY_SIZE;
    while (at < end) {
      const pieceIndex = Math.floor(at / this.pieceBytes);
      const piece = this.pieceAt(pieceIndex);
      const pieceEnd = Math.min(end, (pieceIndex + 1) * this.pieceBytes);
      for (let offset = at - pieceIndex * this.pieceBytes; at < pieceEnd; at += ENTRY_SIZE, offset += ENTRY_SIZE) {
        const high = Math.floor(entry / 4294967296);
        piece.setUint32(offset, entry - high * 4294967296, true);
        piece.setUint32(offset + 4, high, true);
        entry += step;
      }
    }
  }

  /** Empties the table for the next one (once its pieces are written), keeping their memory for it. */
  clear(): void {
    for (const piece of this.pieces.values()) {
      new Uint8Array(piece.buffer).fill(0);
      this.spare.push(piece);
    }
    this.pieces.clear();
    this.lastIndex = -1;
    this.last = undefined;
  }

  /** The pieces that hold entries, as [byte offset in the table, bytes], in order. */
  touched(): [number, Uint8Array][] {
    return [...this.pieces.entries()].sort((a, b) => a[0] - b[0]).map(([index, view]) => [index * this.pieceBytes, new Uint8Array(view.buffer)]);
  }
}
