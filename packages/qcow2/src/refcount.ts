import { IcError, type BlockIO } from '@ic/core/sdk';
import { FORMAT, limitExceeded } from './errors.js';
import { MAX_REFCOUNT_TABLE_BYTES } from './header.js';
import { RefcountTableEntry } from './tables.js';

/**
 * Refcounts: a contiguous refcount table of u64 entries (bits 9..63 refcount block offset, 0 = no block,
 * all counts zero), each refcount block one cluster of refcount_bits-wide entries. Widths of 8 bits and
 * more are big-endian; narrower ones are packed LSB-first inside each byte.
 *
 *   block_entries = cluster_size * 8 / refcount_bits
 *   table index   = host_cluster / block_entries, block index = host_cluster % block_entries
 */
export interface RefcountGeometry {
  order: number;
  bits: number;
  clusterSize: number;
  entriesPerBlock: number;
  /** Largest storable count (approximate for 64-bit widths). */
  maxValue: number;
}

export function refcountGeometry(clusterBits: number, order: number): RefcountGeometry {
  const bits = 2 ** order;
  const clusterSize = 2 ** clusterBits;
  return { order, bits, clusterSize, entriesPerBlock: (clusterSize * 8) / bits, maxValue: 2 ** bits - 1 };
}

/** Reads entry `index` of a refcount block. */
export function getRefcountEntry(block: Uint8Array, index: number, order: number): number {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 2 ** order;
      const bitOffset = index * bits;
      return (block[bitOffset >>> 3]! >>> (bitOffset & 7)) & ((1 << bits) - 1);
    }
    case 3:
      return block[index]!;
    case 4:
      return (block[index * 2]! << 8) | block[index * 2 + 1]!;
    case 5:
      return new DataView(block.buffer, block.byteOffset, block.byteLength).getUint32(index * 4);
    default:
      return Number(new DataView(block.buffer, block.byteOffset, block.byteLength).getBigUint64(index * 8));
  }
}

/**
 * Every entry of a refcount block into `out` (entries_per_block values), one typed loop per width: the check
 * compares whole blocks, so it decodes them once instead of entry by entry.
 */
export function decodeRefcountValues(block: Uint8Array, order: number, out: Float64Array): void {
  const count = Math.min(out.length, (block.length * 8) >>> order);
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 2 ** order;
      const perByte = 8 / bits;
      const mask = (1 << bits) - 1;
      for (let index = 0; index < count; index++) out[index] = (block[(index / perByte) | 0]! >>> ((index % perByte) * bits)) & mask;
      break;
    }
    case 3:
      for (let index = 0; index < count; index++) out[index] = block[index]!;
      break;
    case 4:
      for (let index = 0; index < count; index++) out[index] = (block[index * 2]! << 8) | block[index * 2 + 1]!;
      break;
    case 5: {
      const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      for (let index = 0; index < count; index++) out[index] = view.getUint32(index * 4);
      break;
    }
    default: {
      // 64-bit counts: exact up to 2^53, approximate (but never small) beyond, like getRefcountEntry().
      const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      for (let index = 0; index < count; index++) out[index] = view.getUint32(index * 8) * 2 ** 32 + view.getUint32(index * 8 + 4);
    }
  }
  out.fill(0, count);
}

/** Writes entry `index` of a refcount block. */
export function setRefcountEntry(block: Uint8Array, index: number, order: number, value: number): void {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 2 ** order;
      const bitOffset = index * bits;
      const mask = ((1 << bits) - 1) << (bitOffset & 7);
      const byte = bitOffset >>> 3;
      block[byte] = (block[byte]! & ~mask) | ((value << (bitOffset & 7)) & mask);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      block[index * 2] = (value >>> 8) & 0xff;
      block[index * 2 + 1] = value & 0xff;
      return;
    case 5:
      new DataView(block.buffer, block.byteOffset, block.byteLength).setUint32(index * 4, value);
      return;
    default:
      new DataView(block.buffer, block.byteOffset, block.byteLength).setBigUint64(index * 8, BigInt(value));
  }
}

export interface RefcountTableSlot {
  /** Refcount block offset (masked), 0 when there is none. */
  blockOffset: number;
  reservedBitsSet: boolean;
}

/** Decodes a refcount table. Offsets past 2^53 become Infinity-like huge numbers, never wrapped. */
export function decodeRefcountTable(bytes: Uint8Array): RefcountTableSlot[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const slots: RefcountTableSlot[] = [];
  for (let index = 0; index + 8 <= bytes.length; index += 8) {
    const high = view.getUint32(index);
    const low = view.getUint32(index + 4);
    slots.push({
      blockOffset: high * 2 ** 32 + ((low & 0xfffffe00) >>> 0),
      reservedBitsSet: (low & 0x1ff) !== 0,
    });
  }
  return slots;
}

/** A run of host clusters [start, end) by cluster index. */
export interface ClusterRun {
  start: number;
  end: number;
  role: string;
}

export interface RefcountLayout {
  tableOffset: number;
  tableClusters: number;
  /** Refcount block index -> host offset of that block. */
  blocks: Map<number, number>;
}

/**
 * Places refcount blocks and the refcount table for a set of used cluster runs, asking `allocate` for
 * `clusters` contiguous clusters (returns a host offset). The structures count themselves, so this
 * iterates until nothing new is needed.
 */
export function layoutRefcounts(
  used: readonly ClusterRun[],
  geometry: RefcountGeometry,
  allocate: (clusters: number) => number,
): { layout: RefcountLayout; runs: ClusterRun[] } {
  const { entriesPerBlock, clusterSize } = geometry;
  const runs = [...used];
  const needed = new Set<number>();
  const addRun = (run: ClusterRun): void => {
    runs.push(run);
    for (let block = Math.floor(run.start / entriesPerBlock); block <= Math.floor((run.end - 1) / entriesPerBlock); block++) needed.add(block);
  };
  for (const run of used) {
    if (run.end <= run.start) continue;
    for (let block = Math.floor(run.start / entriesPerBlock); block <= Math.floor((run.end - 1) / entriesPerBlock); block++) needed.add(block);
  }
  const blocks = new Map<number, number>();
  let table: { offset: number; clusters: number } | undefined;
  for (let round = 0; round < 64; round++) {
    let changed = false;
    for (const blockIndex of [...needed].sort((a, b) => a - b)) {
      if (blocks.has(blockIndex)) continue;
      const offset = allocate(1);
      blocks.set(blockIndex, offset);
      addRun({ start: offset / clusterSize, end: offset / clusterSize + 1, role: 'refcount block' });
      changed = true;
    }
    let highestBlock = 0;
    for (const blockIndex of needed) highestBlock = Math.max(highestBlock, blockIndex);
    const tableClusters = Math.max(1, Math.ceil(((highestBlock + 1) * 8) / clusterSize));
    if (!table || table.clusters < tableClusters) {
      // A table that turns out too small stays behind unreferenced: free space, refcount 0.
      if (table) runs.splice(runs.findIndex((run) => run.role === 'refcount table'), 1);
      const offset = allocate(tableClusters);
      table = { offset, clusters: tableClusters };
      addRun({ start: offset / clusterSize, end: offset / clusterSize + tableClusters, role: 'refcount table' });
      changed = true;
    }
    if (!changed) return { layout: { tableOffset: table.offset, tableClusters: table.clusters, blocks }, runs };
  }
  throw new IcError('INTERNAL', `${FORMAT}: refcount layout did not converge`);
}

/**
 * Encodes the refcount table and blocks of a layout, every cluster of `runs` counted once. Overlapping
 * runs would mean a cluster used twice: that is a bug in the caller and is refused.
 */
export function encodeRefcounts(layout: RefcountLayout, runs: readonly ClusterRun[], geometry: RefcountGeometry): { offset: number; data: Uint8Array }[] {
  const { entriesPerBlock, clusterSize, order } = geometry;
  const sorted = [...runs].filter((run) => run.end > run.start).sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]!.start < sorted[i - 1]!.end) {
      throw new IcError('INTERNAL', `${FORMAT}: ${sorted[i]!.role} overlaps ${sorted[i - 1]!.role} at host cluster ${sorted[i]!.start}`);
    }
  }
  const blockBytes = new Map<number, Uint8Array>();
  for (const [blockIndex] of layout.blocks) blockBytes.set(blockIndex, new Uint8Array(clusterSize));
  for (const run of sorted) {
    for (let cluster = run.start; cluster < run.end; cluster++) {
      const block = blockBytes.get(Math.floor(cluster / entriesPerBlock));
      if (!block) throw new IcError('INTERNAL', `${FORMAT}: no refcount block covers host cluster ${cluster}`);
      setRefcountEntry(block, cluster % entriesPerBlock, order, 1);
    }
  }
  const table = new Uint8Array(layout.tableClusters * clusterSize);
  const tableView = new DataView(table.buffer);
  const writes: { offset: number; data: Uint8Array }[] = [];
  for (const [blockIndex, offset] of layout.blocks) {
    tableView.setBigUint64(blockIndex * 8, BigInt(offset) & RefcountTableEntry.offsetMask);
    writes.push({ offset, data: blockBytes.get(blockIndex)! });
  }
  writes.push({ offset: layout.tableOffset, data: table });
  return writes;
}

/** Contiguous new refcount blocks are written in pieces of at most this many bytes. */
const APPEND_WRITE_CHUNK = 4 * 1024 * 1024;

/**
 * Where a new refcount structure goes when it is appended at cluster `start`: the blocks `used` needs plus those
 * covering the new blocks and table themselves (at start, start + 1...), the table right after them. Grows until
 * stable; refuses a table past qemu's 8 MiB.
 */
export function appendedLayout(used: Iterable<number>, start: number, geometry: RefcountGeometry, what: string): { blocks: number[]; tableClusters: number } {
  const { entriesPerBlock, clusterSize } = geometry;
  let blocks: number[] = [];
  let blockCount = 0;
  let tableClusters = 1;
  for (;;) {
    const end = start + blockCount + tableClusters;
    const all = new Set(used);
    for (let index = Math.floor(start / entriesPerBlock); index <= Math.floor((end - 1) / entriesPerBlock); index++) all.add(index);
    blocks = [...all].sort((a, b) => a - b);
    const nextTable = Math.max(1, Math.ceil(((blocks[blocks.length - 1]! + 1) * 8) / clusterSize));
    if (blocks.length === blockCount && nextTable === tableClusters) break;
    blockCount = blocks.length;
    tableClusters = nextTable;
  }
  if (tableClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
    throw limitExceeded(`${what}: the new refcount table would take ${tableClusters * clusterSize} bytes, more than qemu's ${MAX_REFCOUNT_TABLE_BYTES}`);
  }
  return { blocks, tableClusters };
}

/**
 * Writes an appended layout: block `blocks[i]` (its bytes from `encode`) at cluster start + i, in large writes,
 * then the table after them, then flushes. Returns the table's host offset. Nothing points at any of it yet.
 */
export async function writeAppendedRefcounts(
  io: BlockIO,
  start: number,
  layout: { blocks: readonly number[]; tableClusters: number },
  clusterSize: number,
  encode: (blockIndex: number) => Promise<Uint8Array> | Uint8Array,
): Promise<number> {
  const table = new Uint8Array(layout.tableClusters * clusterSize);
  const tableView = new DataView(table.buffer);
  let pending: Uint8Array[] = [];
  let pendingAt = start * clusterSize;
  const flushPending = async (): Promise<void> => {
    if (pending.length === 0) return;
    const bytes = new Uint8Array(pending.length * clusterSize);
    pending.forEach((block, index) => bytes.set(block, index * clusterSize));
    await io.write(pendingAt, bytes);
    pendingAt += bytes.length;
    pending = [];
  };
  for (const [slot, blockIndex] of layout.blocks.entries()) {
    tableView.setBigUint64(blockIndex * 8, BigInt((start + slot) * clusterSize));
    pending.push(await encode(blockIndex));
    if (pending.length * clusterSize >= APPEND_WRITE_CHUNK) await flushPending();
  }
  await flushPending();
  const tableOffset = (start + layout.blocks.length) * clusterSize;
  await io.write(tableOffset, table);
  await io.flush();
  return tableOffset;
}
