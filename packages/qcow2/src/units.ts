import { alignUp, type CounterField, type ReferenceCounts, type UnitRun } from '@ic/core/sdk';
import { corruptAt, hex, unsupportedFeature } from './errors.js';
import { HeaderField, IncompatibleFeature, hasFeature } from './header.js';
import { decodeRefcountTable, getRefcountEntry, type RefcountTableSlot } from './refcount.js';
import type { Qcow2State } from './state.js';
import { decodeL1Entry, decodeL2Entry, L1Entry, L2Entry } from './tables.js';

/**
 * The movable units of a qcow2 image, for the mover (ic defrag, compact, convert-inplace IMAGE raw), and the
 * reference counts that follow them:
 *   - the active L1 table (its clusters as one unit), named by the header's l1_table_offset;
 *   - every L2 table (one cluster), named by its L1 entry (COPIED set: its count is 1);
 *   - every data cluster, named by its L2 entry (COPIED set), and every zero-allocated cluster (COPIED and the zero
 *     flag kept: it still reads as zeros wherever it goes).
 * The refcount table and blocks do not move (they are the counters; conversionSource lists them as fixed).
 *
 * Only images whose every cluster is counted once can take part: internal snapshots (shared clusters), persistent
 * bitmaps (tables nothing here lists), an external data file, extended L2 entries, encryption, compressed clusters,
 * a dirty image (lazy refcounts not written back) or one marked corrupt are refused, typed, before anything is
 * written; a listed cluster whose count is not 1 too.
 */

const MOVE = 'cannot move clusters';

function refuse(reason: string): never {
  throw unsupportedFeature(`${MOVE}: ${reason}`);
}

/** Refuses what the mover cannot keep exact (see the top). */
function checkMovable(state: Qcow2State): void {
  const { header, extensions } = state;
  if (header.nbSnapshots > 0) refuse(`the image has ${header.nbSnapshots} internal snapshot(s), whose clusters are shared (reference counts above 1); delete them with qemu-img snapshot -d first`);
  if (extensions.bitmaps) refuse('the image has persistent dirty bitmaps; remove them with qemu-img bitmap --remove first');
  if (state.hasDataFile || extensions.dataFile !== undefined) refuse('guest data lives in an external data file');
  if (state.geometry.extendedL2) refuse('the image uses extended L2 entries (subclusters)');
  if (header.cryptMethod !== 0) refuse('the image is encrypted (clusters are tied to their host position)');
  if (state.corrupt) refuse('the image is marked corrupt; repair it with ic check -r all first');
  if (state.dirty || hasFeature(header.incompatibleFeatures, IncompatibleFeature.dirty)) refuse('the image is dirty (lazy refcounts not written back); run ic check -r all (or qemu-img check -r all) first');
}

/** The refcount table and a reader of counts that keeps the blocks it read. */
class Counts {
  readonly slots: RefcountTableSlot[];
  private readonly blocks = new Map<number, Uint8Array>();
  constructor(
    private readonly state: Qcow2State,
    table: Uint8Array,
  ) {
    this.slots = decodeRefcountTable(table);
  }

  static async load(state: Qcow2State): Promise<Counts> {
    const { header, clusterSize } = state;
    return new Counts(state, await state.io.read(header.refcountTableOffset, header.refcountTableClusters * clusterSize));
  }

  /** First host offset without a refcount block (every cluster below it has a count). */
  coveredEnd(): number {
    const { entriesPerBlock, clusterSize } = this.state.refcounts;
    let slot = 0;
    while (slot < this.slots.length && this.slots[slot]!.blockOffset !== 0) slot++;
    return slot * entriesPerBlock * clusterSize;
  }

  field(hostOffset: number): CounterField {
    const { entriesPerBlock, clusterSize, bits } = this.state.refcounts;
    const cluster = hostOffset / clusterSize;
    const slot = this.slots[Math.floor(cluster / entriesPerBlock)];
    if (!slot || slot.blockOffset === 0) throw corruptAt(`no refcount block covers host offset ${hex(hostOffset)}`);
    const bit = (cluster % entriesPerBlock) * bits;
    const offset = slot.blockOffset + Math.floor(bit / 8);
    return bits < 8 ? { offset, bits: bits as 1 | 2 | 4, shift: bit % 8 } : { offset, bits: bits as 8 | 16 | 32 | 64 };
  }

  async count(hostOffset: number): Promise<number> {
    const { entriesPerBlock, clusterSize } = this.state.refcounts;
    const cluster = hostOffset / clusterSize;
    const index = Math.floor(cluster / entriesPerBlock);
    const slot = this.slots[index];
    if (!slot || slot.blockOffset === 0) return 0;
    let block = this.blocks.get(index);
    if (!block) {
      if (slot.blockOffset + clusterSize > this.state.fileSize) throw corruptAt(`refcount block ${index} lies past the end of the file`, slot.blockOffset);
      block = await this.state.io.read(slot.blockOffset, clusterSize);
      this.blocks.set(index, block);
    }
    return getRefcountEntry(block, cluster % entriesPerBlock, this.state.refcounts.order);
  }

  /** Refuses a unit whose clusters are not counted exactly once. */
  async expectOnce(hostOffset: number, length: number, role: string): Promise<void> {
    for (let at = hostOffset; at < hostOffset + length; at += this.state.clusterSize) {
      const count = await this.count(at);
      if (count === 0) throw corruptAt(`${role} at ${hex(at)} has reference count 0; repair it with ic check -r all first`, at);
      if (count !== 1) refuse(`${role} at ${hex(at)} has reference count ${count} (shared clusters cannot move)`);
    }
  }
}

export async function qcow2ReferenceCounts(state: Qcow2State): Promise<ReferenceCounts> {
  checkMovable(state);
  const counts = await Counts.load(state);
  const coveredEnd = counts.coveredEnd();
  return { coveredEnd, counter: (hostOffset) => counts.field(hostOffset) };
}

export async function* qcow2Units(state: Qcow2State): AsyncGenerator<UnitRun[]> {
  checkMovable(state);
  const { header, clusterSize, geometry, fileSize, io } = state;
  const counts = await Counts.load(state);
  const tablePointer = { encoding: 'u64be' as const, flags: L1Entry.copied };
  // v3 entries can also say "reads as zeros" (the zero flag, no offset); every version can say "unallocated" (0).
  const special = geometry.zeroFlagAllowed ? { zeroValue: L2Entry.zero, unallocatedValue: 0n } : { unallocatedValue: 0n };
  const dataPointer = { encoding: 'u64be' as const, flags: L2Entry.copied, ...special };
  const zeroAllocPointer = { encoding: 'u64be' as const, flags: L2Entry.copied | L2Entry.zero, ...special };
  const checkCluster = (offset: number, role: string, where: number, length = clusterSize): void => {
    if (offset % clusterSize !== 0) throw corruptAt(`${role} offset ${hex(offset)} is not cluster-aligned`, where);
    if (offset < clusterSize) throw corruptAt(`${role} at ${hex(offset)} overlaps the header cluster`, where);
    if (offset + length > fileSize) throw corruptAt(`${role} at ${hex(offset)} lies past the end of the file`, where);
  };
  const runs: UnitRun[] = [];
  if (header.l1Size > 0) {
    const l1Bytes = alignUp(header.l1Size * 8, clusterSize);
    checkCluster(header.l1TableOffset, 'L1 table', HeaderField.l1TableOffset, header.l1Size * 8);
    await counts.expectOnce(header.l1TableOffset, l1Bytes, 'the L1 table');
    runs.push({ kind: 'table', hostOffset: header.l1TableOffset, unitLength: l1Bytes, count: 1, pointerOffset: HeaderField.l1TableOffset, pointerStride: 0, pointer: { encoding: 'u64be' }, role: 'qcow2 L1 table' });
  }
  const tables: { l1Index: number; offset: number }[] = [];
  for (let l1Index = 0; l1Index < header.l1Size; l1Index++) {
    const entry = decodeL1Entry(state.l1, l1Index);
    if (entry.l2Offset === 0) continue;
    const where = header.l1TableOffset + l1Index * 8;
    if (entry.reservedBitsSet) throw corruptAt(`L1 entry ${l1Index} has reserved bits set`, where);
    checkCluster(entry.l2Offset, `L2 table (L1 index ${l1Index})`, where);
    await counts.expectOnce(entry.l2Offset, clusterSize, `the L2 table of L1 index ${l1Index}`);
    tables.push({ l1Index, offset: entry.l2Offset });
    runs.push({ kind: 'table', hostOffset: entry.l2Offset, unitLength: clusterSize, count: 1, pointerOffset: where, pointerStride: 0, pointer: tablePointer, role: `qcow2 L2 table ${l1Index}` });
  }
  yield runs;
  for (const table of tables) {
    const bytes = await io.read(table.offset, clusterSize);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out: UnitRun[] = [];
    let run: UnitRun | undefined;
    for (let index = 0; index < geometry.l2Entries; index++) {
      if (view.getUint32(index * 8) === 0 && view.getUint32(index * 8 + 4) === 0) {
        run = undefined;
        continue;
      }
      const entry = decodeL2Entry(view, index, geometry);
      const where = table.offset + index * 8;
      if (entry.type === 'compressed') refuse(`the image has compressed clusters (L2 entry at ${hex(where)}); write them out with qemu-img convert first`);
      if (entry.type === 'unallocated' || entry.type === 'zero-plain') {
        run = undefined;
        continue;
      }
      if (entry.reservedBitsSet) throw corruptAt(`L2 entry ${index} of the table at ${hex(table.offset)} has reserved bits set`, where);
      checkCluster(entry.hostOffset, 'data cluster', where);
      await counts.expectOnce(entry.hostOffset, clusterSize, 'a data cluster');
      const pointer = entry.type === 'zero-alloc' ? zeroAllocPointer : dataPointer;
      if (run && run.pointer === pointer && run.hostOffset + run.count * clusterSize === entry.hostOffset) {
        run.count++;
        continue;
      }
      run = { kind: 'data', hostOffset: entry.hostOffset, unitLength: clusterSize, count: 1, pointerOffset: where, pointerStride: 8, pointer };
      out.push(run);
    }
    if (out.length > 0) yield out;
  }
}
