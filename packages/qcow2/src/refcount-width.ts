import { IcError } from '@ic/core/sdk';
import { corruptAt, FORMAT, hex, unsupportedFeature } from './errors.js';
import { HeaderField } from './header.js';
import { appendedLayout, decodeRefcountTable, decodeRefcountValues, refcountGeometry, setRefcountEntry, writeAppendedRefcounts, type RefcountGeometry } from './refcount.js';
import type { Qcow2State } from './state.js';

/** What planRefcountWidth learnt, read-only, for changeRefcountWidth. */
export interface RefcountWidthPlan {
  geometry: RefcountGeometry;
  /** First cluster past everything with a stored refcount and past the end of the file: the new blocks start here. */
  start: number;
  /** Indexes of the new refcount blocks, in order (at start, start + 1...); the table follows them. */
  blocks: number[];
  tableClusters: number;
  /** Host clusters of the old refcount table and blocks. */
  oldStructures: Set<number>;
  /** The old refcount table, decoded (block offsets). */
  oldBlocks: number[];
}

/** Plans the change to `1 << order` bits, reading only; refuses (one line) what the new width cannot hold. */
export async function planRefcountWidth(state: Qcow2State, order: number): Promise<RefcountWidthPlan> {
  const { io, header, clusterSize, fileSize } = state;
  const old = state.refcounts;
  const geometry = refcountGeometry(header.clusterBits, order);
  const table = await io.read(header.refcountTableOffset, header.refcountTableClusters * clusterSize);
  const oldStructures = new Set<number>();
  for (let cluster = 0; cluster < header.refcountTableClusters; cluster++) oldStructures.add(header.refcountTableOffset / clusterSize + cluster);
  const oldBlocks: number[] = [];
  for (const [index, slot] of decodeRefcountTable(table).entries()) {
    const at = header.refcountTableOffset + index * 8;
    if (slot.reservedBitsSet) throw corruptAt(`refcount table entry ${index} has reserved bits set; run check -r all first`, at);
    if (slot.blockOffset % clusterSize !== 0) throw corruptAt(`refcount block ${index} at ${hex(slot.blockOffset)} is not cluster-aligned; run check -r all first`, at);
    if (slot.blockOffset !== 0 && slot.blockOffset + clusterSize > fileSize) throw corruptAt(`refcount block ${index} at ${hex(slot.blockOffset)} lies past the end of the file`, at);
    oldBlocks.push(slot.blockOffset);
    if (slot.blockOffset !== 0) oldStructures.add(slot.blockOffset / clusterSize);
  }
  const used = new Set<number>();
  let highest = -1;
  const values = new Float64Array(old.entriesPerBlock);
  for (const [index, blockOffset] of oldBlocks.entries()) {
    if (blockOffset === 0) continue;
    decodeRefcountValues(await io.read(blockOffset, clusterSize), old.order, values);
    const first = index * old.entriesPerBlock;
    for (let entry = 0; entry < old.entriesPerBlock; entry++) {
      const value = values[entry]!;
      const cluster = first + entry;
      if (value === 0 || oldStructures.has(cluster)) continue;
      if (order < 6 && value > geometry.maxValue) {
        throw unsupportedFeature(`cannot decrease refcount entry width to ${geometry.bits} bits: cluster at offset ${hex(cluster * clusterSize)} has a refcount of ${value}`);
      }
      used.add(Math.floor(cluster / geometry.entriesPerBlock));
      highest = cluster;
    }
  }
  const start = Math.max(Math.ceil(fileSize / clusterSize), highest + 1);
  const { blocks, tableClusters } = appendedLayout(used, start, geometry, 'amend');
  return { geometry, start, blocks, tableClusters, oldStructures, oldBlocks };
}

/**
 * `amend -o refcount_bits=N`: the refcount table and blocks rewritten at another width, every refcount copied as
 * stored (qemu's qcow2_change_refcount_order does the same), except that the old table and blocks count 0 and the
 * new ones 1. planRefcountWidth (read-only, where refusals happen) makes the plan on the same state; then:
 *
 *  1. the new blocks and the new table past the end of the file (nothing references them; the old refcounts
 *     give them 0), flushed;
 *  2. the switch: refcount_table_offset, refcount_table_clusters and refcount_order changed by one 52-byte write
 *     of header bytes 48..100 (sector 0; the fields between are written back as they are), flushed.
 *
 * Killed before the switch, the image is as it was plus free clusters past its old end; after it, the old table
 * and blocks are free clusters (refcount 0, unreferenced): no leak at any point, unlike qemu, which allocates the
 * new structures through the old refcounts and frees the old ones afterwards.
 */
export async function changeRefcountWidth(state: Qcow2State, plan: RefcountWidthPlan): Promise<void> {
  const { io, clusterSize } = state;
  const old = state.refcounts;
  const { geometry, start, oldStructures, oldBlocks } = plan;
  const { entriesPerBlock, order } = geometry;
  if (state.header.version !== 3) throw new IcError('INTERNAL', `${FORMAT}: refcount width changed on a version 2 header`);

  const newEnd = start + plan.blocks.length + plan.tableClusters;

  // Old blocks decoded one at a time, in order (a new block covers part of one old block or several whole ones).
  const values = new Float64Array(old.entriesPerBlock);
  let decoded = -1;
  const oldValues = async (index: number): Promise<Float64Array | undefined> => {
    const blockOffset = oldBlocks[index] ?? 0;
    if (blockOffset === 0) return undefined;
    if (decoded !== index) {
      decodeRefcountValues(await io.read(blockOffset, clusterSize), old.order, values);
      decoded = index;
    }
    return values;
  };

  const tableOffset = await writeAppendedRefcounts(io, start, plan, clusterSize, async (blockIndex) => {
    const block = new Uint8Array(clusterSize);
    const first = blockIndex * entriesPerBlock;
    const end = first + entriesPerBlock;
    // Clusters below start: the stored counts, the old structures excepted.
    for (let cluster = first; cluster < Math.min(end, start); ) {
      const oldIndex = Math.floor(cluster / old.entriesPerBlock);
      const runEnd = Math.min(end, start, (oldIndex + 1) * old.entriesPerBlock);
      const stored = await oldValues(oldIndex);
      if (stored) {
        for (let at = cluster; at < runEnd; at++) {
          const value = stored[at - oldIndex * old.entriesPerBlock]!;
          if (value !== 0 && !oldStructures.has(at)) setRefcountEntry(block, at - first, order, value);
        }
      }
      cluster = runEnd;
    }
    // The new blocks and table count once.
    for (let cluster = Math.max(first, start); cluster < Math.min(end, newEnd); cluster++) setRefcountEntry(block, cluster - first, order, 1);
    return block;
  });

  // The switch: header bytes 48..100 (table offset and clusters ... refcount_order) in one write inside sector 0.
  const span = await io.read(HeaderField.refcountTableOffset, HeaderField.refcountOrder + 4 - HeaderField.refcountTableOffset);
  const fields = span.slice();
  const view = new DataView(fields.buffer);
  view.setBigUint64(0, BigInt(tableOffset));
  view.setUint32(HeaderField.refcountTableClusters - HeaderField.refcountTableOffset, plan.tableClusters);
  view.setUint32(HeaderField.refcountOrder - HeaderField.refcountTableOffset, order);
  await io.write(HeaderField.refcountTableOffset, fields);
  await io.flush();
}
