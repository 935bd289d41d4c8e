import type { CheckReport } from '@ic/core/sdk';
import { BitmapTableEntry, type BitmapEntry } from './bitmaps.js';
import { hex, limitExceeded } from './errors.js';
import { MAX_L1_ENTRIES } from './header.js';
import { decodeRefcountTable, getRefcountEntry, type RefcountTableSlot } from './refcount.js';
import type { Qcow2State } from './state.js';
import { decodeL1Entry, decodeL2Entry } from './tables.js';

/** Messages kept for humans; the counters are always exact. */
const MAX_MESSAGES = 1000;

/**
 * Recomputes how often every host cluster is referenced and compares that with the stored refcounts,
 * the way `qemu-img check` does (qemu 7.2, block/qcow2-refcount.c):
 *   refcount < references        -> corruption ("ERROR cluster N refcount=R reference=F")
 *   refcount > references        -> leak ("Leaked cluster N ...")
 *   COPIED flag != (refcount==1) -> corruption
 *   references reaching a cluster or more past the end of the file, misaligned tables or data,
 *   reserved bits set            -> corruption
 * Memory: one counter per host cluster of the file; work: bounded by the metadata in the file.
 */
export async function checkImage(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<CheckReport> {
  const { clusterSize, fileSize, geometry, header, io } = state;
  const messages: string[] = [];
  let dropped = 0;
  const note = (line: string): void => {
    if (messages.length < MAX_MESSAGES) messages.push(line);
    else dropped++;
  };
  const result = { corruptions: 0, leaks: 0, checkErrors: 0, allocated: 0, fragmented: 0, compressed: 0 };
  const corruption = (line: string): void => {
    result.corruptions++;
    note(line);
  };

  // ---- references ----
  let clusterCount = Math.ceil(fileSize / clusterSize);
  if (clusterCount > MAX_CHECKED_CLUSTERS) {
    throw limitExceeded(`check: the file has ${clusterCount} clusters, more than the ${MAX_CHECKED_CLUSTERS} this check counts in memory`);
  }
  const references = new ReferenceCounts(clusterCount + 1);
  const maxCount = state.refcounts.maxValue;

  const addReference = (offset: number, size: number): void => {
    if (size <= 0) return;
    // The last cluster may be partly past EOF; a cluster or more past it is an error (qemu's rule).
    if (offset + size - fileSize >= clusterSize) {
      corruption(`ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset ${hex(offset)} size ${hex(size)}`);
      return;
    }
    const first = Math.floor(offset / clusterSize);
    const last = Math.floor((offset + size - 1) / clusterSize);
    for (let cluster = first; cluster <= last; cluster++) {
      // Less than a cluster past EOF: at most one cluster beyond the file's own.
      clusterCount = Math.max(clusterCount, cluster + 1);
      if (references.get(cluster) >= maxCount) {
        corruption(`ERROR: overflow cluster offset=${hex(cluster * clusterSize)}`);
        continue;
      }
      references.increment(cluster);
    }
  };

  const readLenient = async (offset: number, length: number): Promise<Uint8Array> => {
    const out = new Uint8Array(length);
    if (offset < fileSize) out.set(await io.read(offset, Math.min(length, fileSize - offset)));
    return out;
  };

  // L2 entries scanned are bounded by the metadata the file can hold (shared tables are rescanned, as qemu does).
  let scanBudget = (header.nbSnapshots + 3) * Math.ceil(fileSize / 8) + 2 ** 20;
  const spend = (entries: number): void => {
    scanBudget -= entries;
    if (scanBudget < 0) throw limitExceeded('check: the L1 tables reference the same L2 tables too many times', header.l1TableOffset);
  };

  // The last L2 table read, kept because shared or aliased tables are read again and again.
  let lastL2: { offset: number; bytes: Uint8Array } | undefined;
  const readL2 = async (l2Offset: number): Promise<Uint8Array> => {
    if (lastL2?.offset !== l2Offset) lastL2 = { offset: l2Offset, bytes: await readLenient(l2Offset, clusterSize) };
    return lastL2.bytes;
  };

  const checkL2 = async (l2Offset: number, countFragments: boolean): Promise<void> => {
    spend(geometry.l2Entries);
    const bytes = await readL2(l2Offset);
    const table = new DataView(bytes.buffer);
    let nextContiguous = 0;
    for (let index = 0; index < geometry.l2Entries; index++) {
      const entry = decodeL2Entry(table, index, geometry);
      const rawText = (): string => `0x${table.getBigUint64(index * geometry.l2EntrySize).toString(16)}`;
      if (entry.type !== 'compressed' && entry.reservedBitsSet) corruption(`ERROR found l2 entry with reserved bits set: ${rawText()}`);
      switch (entry.type) {
        case 'compressed': {
          if (entry.copied) corruption(`ERROR: coffset=${hex(entry.compressedOffset)}: copied flag must never be set for compressed clusters`);
          if (state.hasDataFile) {
            corruption(`ERROR compressed cluster ${index} with data file, entry=${rawText()}`);
            break;
          }
          if (entry.allocatedBitmap !== 0 || entry.zeroBitmap !== 0) {
            corruption(`ERROR compressed cluster ${index} with non-zero subcluster allocation bitmap, entry=${rawText()}`);
            break;
          }
          addReference(entry.compressedOffset, entry.compressedLength);
          if (countFragments) {
            result.allocated++;
            result.compressed++;
            // qemu counts every compressed cluster as fragmented.
            result.fragmented++;
          }
          break;
        }
        case 'normal':
        case 'zero-alloc': {
          const offset = entry.hostOffset;
          if (geometry.extendedL2 && (entry.allocatedBitmap & entry.zeroBitmap) !== 0) {
            corruption(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
          }
          if (offset % clusterSize !== 0) {
            corruption(`ERROR offset=${hex(offset)}: ${entry.type === 'zero-alloc' ? 'Preallocated' : 'Data'} cluster is not properly aligned; L2 entry corrupted.`);
          }
          if (countFragments) {
            result.allocated++;
            if (nextContiguous !== 0 && offset !== nextContiguous) result.fragmented++;
            nextContiguous = offset + clusterSize;
          }
          if (!state.hasDataFile) addReference(offset, clusterSize);
          break;
        }
        case 'zero-plain':
          break;
        case 'unallocated':
          if (geometry.extendedL2 && entry.allocatedBitmap !== 0) corruption('ERROR: Unallocated cluster has non-zero subcluster allocation map');
          break;
      }
    }
  };

  const checkL1 = async (l1Offset: number, l1Size: number, l1: DataView | undefined, countFragments: boolean): Promise<void> => {
    addReference(l1Offset, l1Size * 8);
    let table = l1;
    if (!table) {
      const bytes = await readLenient(l1Offset, l1Size * 8);
      table = new DataView(bytes.buffer);
    }
    for (let index = 0; index < l1Size; index++) {
      const entry = decodeL1Entry(table, index);
      if (entry.empty) continue;
      if (entry.reservedBitsSet) corruption(`ERROR found L1 entry with reserved bits set: ${table.getBigUint64(index * 8).toString(16)}`);
      addReference(entry.l2Offset, clusterSize);
      if (entry.l2Offset % clusterSize !== 0) corruption(`ERROR l2_offset=${hex(entry.l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      await checkL2(entry.l2Offset, countFragments);
    }
  };

  // Header cluster, active L1 and its tables.
  addReference(0, clusterSize);
  await checkL1(header.l1TableOffset, header.l1Size, state.l1, true);

  // Internal snapshots: their L1 tables and the snapshot table.
  const snapshots = state.snapshotTable?.snapshots ?? [];
  if (state.hasDataFile && snapshots.length > 0) corruption(`ERROR ${snapshots.length} snapshots in image with data file`);
  for (const snapshot of snapshots) {
    if (snapshot.l1TableOffset % clusterSize !== 0) {
      corruption(`ERROR snapshot ${snapshot.id} (${snapshot.name}) l1_offset=${hex(snapshot.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      continue;
    }
    if (snapshot.l1Size > MAX_L1_ENTRIES) {
      corruption(`ERROR snapshot ${snapshot.id} (${snapshot.name}) l1_size=${hex(snapshot.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      continue;
    }
    await checkL1(snapshot.l1TableOffset, snapshot.l1Size, undefined, false);
  }
  if (state.snapshotTable) addReference(state.snapshotTable.offset, state.snapshotTable.size);

  // Refcount table, encryption header, bitmaps.
  addReference(header.refcountTableOffset, header.refcountTableClusters * clusterSize);
  if (state.extensions.encryption) addReference(state.extensions.encryption.offset, state.extensions.encryption.length);
  if (state.bitmapsActive && state.extensions.bitmaps) {
    addReference(state.extensions.bitmaps.directoryOffset, state.extensions.bitmaps.directorySize);
    for (const bitmap of bitmaps) {
      const tableBytes = bitmap.tableSize * 8;
      addReference(bitmap.tableOffset, tableBytes);
      if (bitmap.tableOffset + tableBytes > fileSize) {
        corruption(`ERROR bitmap '${bitmap.name}' table at ${hex(bitmap.tableOffset)} runs past the end of the file`);
        continue;
      }
      const table = new DataView((await io.read(bitmap.tableOffset, tableBytes)).buffer);
      for (let index = 0; index < bitmap.tableSize; index++) {
        const raw = table.getBigUint64(index * 8);
        const offset = Number(raw & BitmapTableEntry.offsetMask);
        const bad =
          (raw & BitmapTableEntry.reservedMask) !== 0n ||
          (offset !== 0 && ((raw & BitmapTableEntry.allOnes) !== 0n || offset % clusterSize !== 0));
        if (bad) {
          corruption(`ERROR bitmap '${bitmap.name}' table entry ${index} is invalid: 0x${raw.toString(16)}`);
          continue;
        }
        if (offset !== 0) addReference(offset, clusterSize);
      }
    }
  }

  // Refcount blocks: each must be referenced exactly once.
  const tableBytes = await io.read(header.refcountTableOffset, header.refcountTableClusters * clusterSize);
  const slots = decodeRefcountTable(tableBytes);
  slots.forEach((slot, index) => {
    if (slot.reservedBitsSet) {
      corruption(`ERROR refcount table entry ${index} has reserved bits set`);
      return;
    }
    if (slot.blockOffset % clusterSize !== 0) {
      corruption(`ERROR refcount block ${index} is not cluster aligned; refcount table entry corrupted`);
      return;
    }
    const cluster = slot.blockOffset / clusterSize;
    if (cluster >= clusterCount) {
      corruption(`ERROR refcount block ${index} is outside image`);
      return;
    }
    if (slot.blockOffset !== 0) {
      addReference(slot.blockOffset, clusterSize);
      if (references.get(cluster) !== 1) corruption(`ERROR refcount block ${index} refcount=${references.get(cluster)}`);
    }
  });

  // Compare stored refcounts with the references, one refcount block at a time.
  const { entriesPerBlock, order } = state.refcounts;
  let highestCluster = 0;
  for (let blockIndex = 0; blockIndex * entriesPerBlock < clusterCount; blockIndex++) {
    const first = blockIndex * entriesPerBlock;
    const last = Math.min(clusterCount, first + entriesPerBlock);
    const block = await loadBlock(slots[blockIndex], state, readLenient);
    for (let cluster = first; cluster < last; cluster++) {
      const reference = references.get(cluster);
      if (block === 'unaligned') {
        result.checkErrors++;
        note(`Can't get refcount for cluster ${cluster}: Input/output error`);
        continue; // like qemu, such a cluster does not move the image end
      }
      const stored = block ? getRefcountEntry(block, cluster - first, order) : 0;
      if (stored > 0 || reference > 0) highestCluster = cluster;
      if (stored === reference) continue;
      if (stored < reference) {
        result.corruptions++;
        note(`ERROR cluster ${cluster} refcount=${stored} reference=${reference}`);
      } else {
        result.leaks++;
        note(`Leaked cluster ${cluster} refcount=${stored} reference=${reference}`);
      }
    }
  }

  // COPIED must be set exactly when the stored refcount is 1 (active tables only).
  const storedRefcount = async (cluster: number): Promise<number | undefined> => {
    const block = await loadBlock(slots[Math.floor(cluster / entriesPerBlock)], state, readLenient);
    if (block === 'unaligned') return undefined;
    return block ? getRefcountEntry(block, cluster % entriesPerBlock, order) : 0;
  };
  for (let index = 0; index < header.l1Size; index++) {
    const l1Entry = decodeL1Entry(state.l1, index);
    if (l1Entry.l2Offset === 0) continue;
    const l2Refcount = await storedRefcount(Math.floor(l1Entry.l2Offset / clusterSize));
    if (l2Refcount === undefined) continue;
    if ((l2Refcount === 1) !== l1Entry.copied) {
      corruption(`ERROR OFLAG_COPIED L2 cluster: l1_index=${index} l1_entry=${state.l1.getBigUint64(index * 8).toString(16)} refcount=${l2Refcount}`);
    }
    spend(geometry.l2Entries);
    const bytes = await readL2(l1Entry.l2Offset);
    const table = new DataView(bytes.buffer);
    for (let l2Index = 0; l2Index < geometry.l2Entries; l2Index++) {
      const entry = decodeL2Entry(table, l2Index, geometry);
      if (entry.type !== 'normal' && entry.type !== 'zero-alloc') continue;
      const refcount = state.hasDataFile ? 1 : await storedRefcount(Math.floor(entry.hostOffset / clusterSize));
      if (refcount === undefined) continue;
      if ((refcount === 1) !== entry.copied) {
        const raw = table.getBigUint64(l2Index * geometry.l2EntrySize);
        corruption(`ERROR OFLAG_COPIED data cluster: l2_entry=${raw.toString(16)} refcount=${refcount}`);
      }
    }
  }

  if (dropped > 0) messages.push(`(${dropped} more messages not shown)`);
  return {
    corruptions: result.corruptions,
    leaks: result.leaks,
    checkErrors: result.checkErrors,
    totalClusters: Math.ceil(state.virtualSize / clusterSize),
    allocatedClusters: result.allocated,
    fragmentedClusters: result.fragmented,
    compressedClusters: result.compressed,
    imageEndOffset: (highestCluster + 1) * clusterSize,
    messages,
  };
}

/** Per-cluster counters are kept in memory: one byte each, so cap the file at 2^30 clusters (1 GiB). */
const MAX_CHECKED_CLUSTERS = 2 ** 30;

/** How often each host cluster is referenced: one byte per cluster, exact counts past 254 kept aside. */
class ReferenceCounts {
  private readonly small: Uint8Array;
  private readonly large = new Map<number, number>();
  constructor(readonly length: number) {
    this.small = new Uint8Array(length);
  }
  get(cluster: number): number {
    const value = this.small[cluster] ?? 0;
    return value === 255 ? this.large.get(cluster)! : value;
  }
  increment(cluster: number): void {
    const value = this.small[cluster]!;
    if (value < 254) this.small[cluster] = value + 1;
    else if (value === 254) {
      this.small[cluster] = 255;
      this.large.set(cluster, 255);
    } else this.large.set(cluster, this.large.get(cluster)! + 1);
  }
}

const blockCache = new WeakMap<Qcow2State, { offset: number; bytes: Uint8Array }>();

/** The stored refcount block of a table slot: null when there is none, 'unaligned' when it cannot be read. */
async function loadBlock(
  slot: RefcountTableSlot | undefined,
  state: Qcow2State,
  readLenient: (offset: number, length: number) => Promise<Uint8Array>,
): Promise<Uint8Array | null | 'unaligned'> {
  if (!slot || slot.blockOffset === 0) return null;
  if (slot.blockOffset % state.clusterSize !== 0) return 'unaligned';
  const cached = blockCache.get(state);
  if (cached?.offset === slot.blockOffset) return cached.bytes;
  const bytes = await readLenient(slot.blockOffset, state.clusterSize);
  blockCache.set(state, { offset: slot.blockOffset, bytes });
  return bytes;
}
