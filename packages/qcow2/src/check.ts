import { readInto, type CheckReport } from '@ic/core/sdk';
import { BitmapTableEntry, type BitmapEntry } from './bitmaps.js';
import { hex, limitExceeded } from './errors.js';
import { MAX_L1_ENTRIES } from './header.js';
import { decodeRefcountValues, getRefcountEntry, setRefcountEntry } from './refcount.js';
import type { Qcow2State } from './state.js';
import { decodeL2Entry, entryHex } from './tables.js';

/** Messages kept for humans; the counters are always exact. */
const MAX_MESSAGES = 1000;

const TWO_32 = 2 ** 32;

/** L2 tables read ahead of the one being checked, and contiguous refcount blocks read in one go. */
const READ_AHEAD = 8;
const REFCOUNT_RUN_BYTES = 4 * 1024 * 1024;

/**
 * Recomputes how often every host cluster is referenced and compares that with the stored refcounts,
 * the way `qemu-img check` does (qemu 7.2, block/qcow2-refcount.c):
 *   refcount < references        -> corruption ("ERROR cluster N refcount=R reference=F")
 *   refcount > references        -> leak ("Leaked cluster N ...")
 *   COPIED flag != (refcount==1) -> corruption
 *   references reaching a cluster or more past the end of the file, misaligned tables or data,
 *   reserved bits set            -> corruption
 *
 * One pass over the tables, one over the refcount blocks, each table and block read once. The pass over the
 * tables counts references and notes, per host cluster, whether the active tables reference it with COPIED set
 * or clear; the pass over the refcount blocks compares both with the stored counts (qemu rereads the active
 * tables for COPIED instead). Memory: three bits per host cluster of the file, a byte per cluster only where
 * clusters are shared; no object per entry.
 *
 * Message order: qemu prints the COPIED errors of each L2 table in table order; here the COPIED errors of data
 * clusters come in host order, after those of the L2 tables. The counters are the same.
 */
export async function checkImage(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<CheckReport> {
  return (await analyseImage(state, bitmaps)).report;
}

/**
 * What a repair needs besides the report: the references counted from the tables, and the problems sorted by
 * what can fix them (repair.ts). Counts of corruptions add up to report.corruptions.
 */
export interface CheckFindings {
  /** How often every host cluster [0, clusterCount) is referenced, the old refcount structures included. */
  references: ClusterCounts;
  clusterCount: number;
  /** Corruptions of the tables themselves (bad entries, references past the end...): nothing here repairs them. */
  unrepairable: number;
  firstUnrepairable: string | undefined;
  /** Corruptions of the refcount table and blocks (entries, alignment, blocks used twice). */
  structural: number;
  /** qemu's "rebuild" verdict: the refcount structures must be built anew (structural damage, or clusters in use counted as free). */
  rebuild: boolean;
  /** Clusters whose stored refcount is above / below their references. */
  leaks: number;
  low: number;
  /** Clusters whose stored refcount differs from their references, in increasing order. */
  mismatches: number[];
  copiedErrors: number;
  /** Clusters the current refcount table and blocks occupy, with how often they reference each. */
  refcountStructures: Map<number, number>;
}

/** The check, and what it found sorted for a repair. */
export async function analyseImage(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<{ report: CheckReport; findings: CheckFindings }> {
  const { clusterSize, fileSize, geometry, header, io } = state;
  const log = new MessageLog(MAX_MESSAGES);
  const copiedLog = new MessageLog(MAX_MESSAGES);
  const result = { corruptions: 0, leaks: 0, checkErrors: 0, allocated: 0, fragmented: 0, compressed: 0 };
  const found = { unrepairable: 0, firstUnrepairable: undefined as string | undefined, structural: 0, rebuild: false, low: 0, copied: 0 };
  const mismatches: number[] = [];
  const refcountStructures = new Map<number, number>();
  const corruption = (line: string): void => {
    result.corruptions++;
    found.unrepairable++;
    found.firstUnrepairable ??= line;
    log.add(line);
  };
  const structural = (line: string): void => {
    result.corruptions++;
    found.structural++;
    found.rebuild = true;
    log.add(line);
  };
  const copiedCorruption = (line: string): void => {
    result.corruptions++;
    found.copied++;
    copiedLog.add(line);
  };

  // ---- references ----
  const fileClusters = Math.ceil(fileSize / clusterSize);
  let clusterCount = fileClusters;
  if (clusterCount > MAX_CHECKED_CLUSTERS) {
    throw limitExceeded(`check: the file has ${clusterCount} clusters, more than the ${MAX_CHECKED_CLUSTERS} this check counts in memory`);
  }
  const references = new ClusterCounts(clusterCount + 1);
  /** Active L2 entries per host cluster of the file, with COPIED set and with it clear. */
  const activeCopied = new ClusterCounts(fileClusters);
  const activePlain = new ClusterCounts(fileClusters);
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
      if (cluster >= clusterCount) clusterCount = cluster + 1;
      if (references.addBelow(cluster, maxCount)) continue;
      corruption(`ERROR: overflow cluster offset=${hex(cluster * clusterSize)}`);
    }
  };

  const readLenient = async (offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> => {
    if (offset + length <= fileSize) return into ? readInto(io, offset, into) : io.read(offset, length);
    const out = into ?? new Uint8Array(length);
    out.fill(0);
    if (offset < fileSize) out.set(await io.read(offset, fileSize - offset));
    return out;
  };

  // The refcount table first: whether a cluster's refcount can be read at all decides which COPIED checks count.
  const refcountTable = decodeRefcountSlots(await io.read(header.refcountTableOffset, header.refcountTableClusters * clusterSize));
  const { entriesPerBlock, order } = state.refcounts;
  /** qemu_get_refcount() fails for a cluster whose refcount block offset is not cluster-aligned. */
  const someUnreadable = refcountTable.offsets.some((offset) => offset % clusterSize !== 0);
  const refcountUnreadable = (cluster: number): boolean => {
    if (!someUnreadable) return false;
    const index = Math.floor(cluster / entriesPerBlock);
    return index < refcountTable.count && refcountTable.offsets[index]! % clusterSize !== 0;
  };
  const blocks = new RefcountBlocks(refcountTable, clusterSize, readLenient);
  const storedRefcount = async (cluster: number): Promise<number | undefined> => {
    const block = await blocks.lookup(Math.floor(cluster / entriesPerBlock));
    if (block === 'unaligned') return undefined;
    return block ? getRefcountEntry(block, cluster % entriesPerBlock, order) : 0;
  };

  // L2 entries scanned are bounded by the metadata the file can hold (shared tables are rescanned, as qemu does).
  let scanBudget = (header.nbSnapshots + 3) * Math.ceil(fileSize / 8) + 2 ** 20;
  const spend = (entries: number): void => {
    scanBudget -= entries;
    if (scanBudget < 0) throw limitExceeded('check: the L1 tables reference the same L2 tables too many times', header.l1TableOffset);
  };

  // The last L2 table read, kept because shared or aliased tables are read again and again; the next ones read ahead.
  // Buffers come from `spare` and go back to it when the last table is replaced or a read ahead is dropped: at
  // most READ_AHEAD + 2 of them for the whole walk, however many tables there are.
  let lastL2: { offset: number; bytes: Uint8Array } | undefined;
  const ahead = new Map<number, { buffer: Uint8Array; bytes: Promise<Uint8Array> }>();
  const spare: Uint8Array[] = [];
  const readL2 = async (l2Offset: number): Promise<Uint8Array> => {
    const pending = ahead.get(l2Offset);
    ahead.delete(l2Offset);
    if (lastL2?.offset === l2Offset) {
      if (pending) {
        await pending.bytes.catch(() => undefined); // read into again only once that read is over
        spare.push(pending.buffer);
      }
      return lastL2.bytes;
    }
    if (lastL2) spare.push(lastL2.bytes);
    lastL2 = undefined;
    const bytes = await (pending?.bytes ?? readLenient(l2Offset, clusterSize, spare.pop() ?? new Uint8Array(clusterSize)));
    lastL2 = { offset: l2Offset, bytes };
    return bytes;
  };
  const readAhead = (l2Offset: number): void => {
    if (ahead.size >= READ_AHEAD || ahead.has(l2Offset) || lastL2?.offset === l2Offset) return;
    const buffer = spare.pop() ?? new Uint8Array(clusterSize);
    const bytes = readLenient(l2Offset, clusterSize, buffer);
    bytes.catch(() => {}); // a failure is reported when the table is needed
    ahead.set(l2Offset, { buffer, bytes });
  };

  /** Data clusters past the end of the file seen by the active tables: their COPIED check reads refcounts one by one. */
  const pastEnd: { cluster: number; copied: boolean; entry: string }[] = [];

  /**
   * One L2 table: standard entries decoded inline from their two 32-bit halves, compressed ones the general way.
   * `active`: the table belongs to the active L1 (fragmentation counted, COPIED noted; `copiedChecked` false when
   * qemu skips the table's COPIED check because the table's own refcount cannot be read).
   */
  const checkL2 = async (l2Offset: number, active: boolean, copiedChecked: boolean): Promise<void> => {
    spend(geometry.l2Entries);
    const bytes = await readL2(l2Offset);
    scanL2(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), active, active && copiedChecked);
    // Past the end of the file the refcounts are looked up one at a time (rare: such entries are corrupt anyway).
    for (const { cluster, copied, entry } of pastEnd.splice(0)) {
      const refcount = await storedRefcount(cluster);
      if (refcount !== undefined && (refcount === 1) !== copied) copiedCorruption(`ERROR OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${refcount}`);
    }
  };

  /** The synchronous part of checkL2, kept apart so that the hot loop is a plain function. */
  const scanL2 = (table: DataView, active: boolean, noteCopied: boolean): void => {
    const { l2Entries, l2EntrySize, extendedL2, clusterBits } = geometry;
    const clustersPer4G = 2 ** (32 - clusterBits);
    const alignmentMask = (clusterSize - 1) & 0xfffffe00;
    const hasDataFile = state.hasDataFile;
    const referenced = references.once;
    const copiedBits = activeCopied.once;
    const plainBits = activePlain.once;
    const inFile = fileClusters;
    let nextContiguous = 0;
    let allocated = 0;
    let fragmented = 0;
    for (let index = 0; index < l2Entries; index++) {
      const at = index * l2EntrySize;
      const high = table.getUint32(at);
      const low = table.getUint32(at + 4);
      if ((high | low) === 0 && !extendedL2) continue;
      if ((high & 0x40000000) !== 0) {
        checkCompressed(table, index, active);
        continue;
      }
      const copied = (high & 0x80000000) !== 0;
      if ((high & 0x3f000000) !== 0 || (low & 0x1fe) !== 0) corruption(`ERROR found l2 entry with reserved bits set: 0x${entryHex(table, at)}`);
      const zeroFlag = (low & 1) !== 0 && !extendedL2;
      const hasOffset = (high & 0x00ffffff) !== 0 || (low & 0xfffffe00) !== 0;
      if (zeroFlag ? !hasOffset : !hasOffset && !(hasDataFile && copied)) {
        // Unallocated (or zero without a host cluster).
        if (extendedL2 && table.getUint32(at + 12) !== 0) corruption('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        continue;
      }
      // Host cluster index in integer arithmetic (offsets are below 2^56); the byte offset only where it is needed.
      const cluster = (high & 0x00ffffff) * clustersPer4G + ((low & 0xfffffe00) >>> clusterBits);
      const aligned = (low & alignmentMask) === 0;
      if (extendedL2 && (table.getUint32(at + 8) & table.getUint32(at + 12)) !== 0) {
        corruption(`ERROR offset=${hex(offsetOf(high, low))}: Allocated cluster has corrupted subcluster allocation bitmap`);
      }
      if (!aligned) {
        corruption(`ERROR offset=${hex(offsetOf(high, low))}: ${zeroFlag ? 'Preallocated' : 'Data'} cluster is not properly aligned; L2 entry corrupted.`);
      }
      if (active) {
        const offset = aligned ? cluster * clusterSize : offsetOf(high, low);
        allocated++;
        if (nextContiguous !== 0 && offset !== nextContiguous) fragmented++;
        nextContiguous = offset + clusterSize;
      }
      if (hasDataFile) {
        if (noteCopied && !copied) copiedCorruption(`ERROR OFLAG_COPIED data cluster: l2_entry=${entryHex(table, at)} refcount=1`);
        continue;
      }
      if (cluster < inFile) {
        // The usual case inline: an aligned cluster inside the file referenced (or noted) for the first time.
        const word = cluster >>> 5;
        const mask = 1 << (cluster & 31);
        if (aligned && (referenced[word]! & mask) === 0) referenced[word] = referenced[word]! | mask;
        else addReference(offsetOf(high, low), clusterSize);
        if (!noteCopied || refcountUnreadable(cluster)) continue;
        const noted = copied ? copiedBits : plainBits;
        if ((noted[word]! & mask) === 0) noted[word] = noted[word]! | mask;
        else (copied ? activeCopied : activePlain).add(cluster);
        continue;
      }
      addReference(offsetOf(high, low), clusterSize);
      if (noteCopied && !refcountUnreadable(cluster)) pastEnd.push({ cluster, copied, entry: entryHex(table, at) });
    }
    result.allocated += allocated;
    result.fragmented += fragmented;
  };

  const checkCompressed = (table: DataView, index: number, active: boolean): void => {
    const entry = decodeL2Entry(table, index, geometry);
    const rawText = (): string => `0x${entryHex(table, index * geometry.l2EntrySize)}`;
    if (entry.copied) corruption(`ERROR: coffset=${hex(entry.compressedOffset)}: copied flag must never be set for compressed clusters`);
    if (state.hasDataFile) {
      corruption(`ERROR compressed cluster ${index} with data file, entry=${rawText()}`);
      return;
    }
    if (entry.allocatedBitmap !== 0 || entry.zeroBitmap !== 0) {
      corruption(`ERROR compressed cluster ${index} with non-zero subcluster allocation bitmap, entry=${rawText()}`);
      return;
    }
    addReference(entry.compressedOffset, entry.compressedLength);
    if (active) {
      result.allocated++;
      result.compressed++;
      // qemu counts every compressed cluster as fragmented.
      result.fragmented++;
    }
  };

  const checkL1 = async (l1Offset: number, l1Size: number, l1: DataView | undefined, active: boolean): Promise<void> => {
    addReference(l1Offset, l1Size * 8);
    let table = l1;
    if (!table) {
      const bytes = await readLenient(l1Offset, l1Size * 8);
      table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    let aheadIndex = 0;
    for (let index = 0; index < l1Size; index++) {
      const high = table.getUint32(index * 8);
      const low = table.getUint32(index * 8 + 4);
      if ((high | low) === 0) continue;
      const l2Offset = (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0);
      for (aheadIndex = Math.max(aheadIndex, index + 1); aheadIndex < l1Size && ahead.size < READ_AHEAD; aheadIndex++) {
        const next = (table.getUint32(aheadIndex * 8) & 0x00ffffff) * TWO_32 + ((table.getUint32(aheadIndex * 8 + 4) & 0xfffffe00) >>> 0);
        if (next !== 0 && next !== l2Offset) readAhead(next);
      }
      if ((high & 0x7f000000) !== 0 || (low & 0x1ff) !== 0) corruption(`ERROR found L1 entry with reserved bits set: ${entryHex(table, index * 8)}`);
      addReference(l2Offset, clusterSize);
      if (l2Offset % clusterSize !== 0) corruption(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      // qemu's COPIED pass skips entries without an L2 offset, and the whole table when its refcount cannot be read.
      const l2Cluster = Math.floor(l2Offset / clusterSize);
      await checkL2(l2Offset, active, active && l2Offset !== 0 && !refcountUnreadable(l2Cluster));
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
  for (let index = 0; index < header.refcountTableClusters; index++) {
    const cluster = header.refcountTableOffset / clusterSize + index;
    refcountStructures.set(cluster, (refcountStructures.get(cluster) ?? 0) + 1);
  }
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
  for (let index = 0; index < refcountTable.count; index++) {
    const blockOffset = refcountTable.offsets[index]!;
    if (refcountTable.reserved[index] !== 0) {
      structural(`ERROR refcount table entry ${index} has reserved bits set`);
      continue;
    }
    if (blockOffset % clusterSize !== 0) {
      structural(`ERROR refcount block ${index} is not cluster aligned; refcount table entry corrupted`);
      continue;
    }
    const cluster = blockOffset / clusterSize;
    if (cluster >= clusterCount) {
      structural(`ERROR refcount block ${index} is outside image`);
      continue;
    }
    if (blockOffset !== 0) {
      addReference(blockOffset, clusterSize);
      refcountStructures.set(cluster, (refcountStructures.get(cluster) ?? 0) + 1);
      if (references.get(cluster) !== 1) structural(`ERROR refcount block ${index} refcount=${references.get(cluster)}`);
    }
  }
  // A refcount table sharing a cluster with anything else cannot stay where it is either.
  for (const [cluster, count] of refcountStructures) if (references.get(cluster) > count) found.rebuild = true;

  // Compare stored refcounts with the references and the COPIED flags, one refcount block at a time.
  let highestCluster = 0;
  const stored = new Float64Array(entriesPerBlock);
  const referenced = references.once;
  const sharedReferences = references.shared;
  const copiedBits = activeCopied.once;
  const plainBits = activePlain.once;
  /** 32 clusters take `bits` 32-bit words of a refcount block; `ones` is a pair of words holding counts of 1. */
  const groupWords = state.refcounts.bits;
  const ones = refcountWordsOfOnes(order);
  for (let blockIndex = 0; blockIndex * entriesPerBlock < clusterCount; blockIndex++) {
    const first = blockIndex * entriesPerBlock;
    const last = Math.min(clusterCount, first + entriesPerBlock);
    const block = await blocks.next(blockIndex);
    if (block === 'unaligned') {
      // Like qemu, such a cluster does not move the image end (and its COPIED flags are not checked).
      result.checkErrors += last - first;
      found.rebuild = true;
      let cluster = first;
      for (; cluster < last && log.room(); cluster++) log.add(`Can't get refcount for cluster ${cluster}: Input/output error`);
      log.drop(last - cluster);
      continue;
    }
    // Groups of 32 clusters in the usual states (each referenced once with a stored refcount of 1 and COPIED
    // noted where it must be; or unused with refcount 0) are recognised on the raw words of the block.
    const words = block ? wordsOf(block) : undefined;
    let decoded = false;
    for (let cluster = first; cluster < last; ) {
      const word = cluster >>> 5;
      if ((cluster & 31) === 0 && cluster + 32 <= last) {
        const base = ((cluster - first) >>> 5) * groupWords;
        const referencedWord = referenced[word]!;
        if (referencedWord === 0xffffffff) {
          if (!sharedReferences && plainBits[word] === 0 && wordsEqual(words, base, groupWords, ones[0]!, ones[1]!)) {
            highestCluster = cluster + 31;
            cluster += 32;
            continue;
          }
        } else if (referencedWord === 0 && plainBits[word] === 0 && copiedBits[word] === 0 && wordsEqual(words, base, groupWords, 0, 0)) {
          cluster += 32;
          continue;
        }
      }
      if (!decoded) {
        if (block) decodeRefcountValues(block, order, stored);
        else stored.fill(0);
        decoded = true;
      }
      const value = stored[cluster - first]!;
      const mask = 1 << (cluster & 31);
      const reference = (referenced[word]! & mask) === 0 ? 0 : sharedReferences ? references.get(cluster) : 1;
      if (value > 0 || reference > 0) highestCluster = cluster;
      if (value !== reference) {
        mismatches.push(cluster);
        if (value < reference) {
          result.corruptions++;
          found.low++;
          // qemu: a cluster in use counted as free means the refcount structures must be rebuilt.
          if (value === 0) found.rebuild = true;
          log.add(`ERROR cluster ${cluster} refcount=${value} reference=${reference}`);
        } else {
          result.leaks++;
          log.add(`Leaked cluster ${cluster} refcount=${value} reference=${reference}`);
        }
      }
      // COPIED: set exactly when the stored refcount is 1.
      if (cluster < fileClusters && ((value === 1 ? plainBits : copiedBits)[word]! & mask) !== 0) {
        const mismatches = value === 1 ? activePlain.get(cluster) : activeCopied.get(cluster);
        for (let n = 0; n < mismatches; n++) {
          copiedCorruption(`ERROR OFLAG_COPIED data cluster: offset=${hex(cluster * clusterSize)} COPIED=${value === 1 ? 0 : 1} refcount=${value}`);
        }
      }
      cluster++;
    }
  }

  // COPIED of the active L1 entries: set exactly when the L2 table's stored refcount is 1.
  for (let index = 0; index < header.l1Size; index++) {
    const high = state.l1.getUint32(index * 8);
    const l2Offset = (high & 0x00ffffff) * TWO_32 + ((state.l1.getUint32(index * 8 + 4) & 0xfffffe00) >>> 0);
    if (l2Offset === 0) continue;
    const refcount = await storedRefcount(Math.floor(l2Offset / clusterSize));
    if (refcount === undefined || (refcount === 1) === ((high & 0x80000000) !== 0)) continue;
    result.corruptions++;
    found.copied++;
    log.add(`ERROR OFLAG_COPIED L2 cluster: l1_index=${index} l1_entry=${entryHex(state.l1, index * 8)} refcount=${refcount}`);
  }

  const report: CheckReport = {
    corruptions: result.corruptions,
    leaks: result.leaks,
    checkErrors: result.checkErrors,
    totalClusters: Math.ceil(state.virtualSize / clusterSize),
    allocatedClusters: result.allocated,
    fragmentedClusters: result.fragmented,
    compressedClusters: result.compressed,
    imageEndOffset: (highestCluster + 1) * clusterSize,
    messages: log.join(copiedLog),
  };
  const findings: CheckFindings = {
    references,
    clusterCount,
    unrepairable: found.unrepairable,
    firstUnrepairable: found.firstUnrepairable,
    structural: found.structural,
    rebuild: found.rebuild,
    leaks: result.leaks,
    low: found.low,
    mismatches,
    copiedErrors: found.copied,
    refcountStructures,
  };
  return { report, findings };
}

/** Per-cluster counters are kept in memory: a few bits each, so cap the file at 2^30 clusters. */
const MAX_CHECKED_CLUSTERS = 2 ** 30;

/** Lines kept up to a limit, the rest counted. */
class MessageLog {
  readonly lines: string[] = [];
  private dropped = 0;
  constructor(private readonly limit: number) {}
  room(): boolean {
    return this.lines.length < this.limit;
  }
  add(line: string): void {
    if (this.lines.length < this.limit) this.lines.push(line);
    else this.dropped++;
  }
  drop(count: number): void {
    this.dropped += count;
  }
  /** This log, then `more`, within this log's limit. */
  join(more: MessageLog): string[] {
    const out = [...this.lines];
    let dropped = this.dropped + more.dropped;
    for (const line of more.lines) {
      if (out.length < this.limit) out.push(line);
      else dropped++;
    }
    if (dropped > 0) out.push(`(${dropped} more messages not shown)`);
    return out;
  }
}

const PAGE_SHIFT = 12;
const PAGE_MASK = (1 << PAGE_SHIFT) - 1;

/**
 * How often each cluster of [0, length) was counted: one bit for "at least once"; one byte (count - 1) per
 * cluster only in 4096-cluster pages where some cluster was counted twice; exact counts past 255 in a map.
 */
export class ClusterCounts {
  /** Bit per cluster: counted at least once (read by the hot loops directly). */
  readonly once: Uint32Array;
  private readonly pages = new Map<number, Uint8Array>();
  private readonly large = new Map<number, number>();

  constructor(readonly length: number) {
    this.once = new Uint32Array(Math.ceil(length / 32));
  }

  /** Some cluster was counted more than once. */
  get shared(): boolean {
    return this.pages.size > 0;
  }

  has(cluster: number): boolean {
    return (this.once[cluster >>> 5]! & (1 << (cluster & 31))) !== 0;
  }

  get(cluster: number): number {
    if (!this.has(cluster)) return 0;
    if (this.pages.size === 0) return 1;
    const page = this.pages.get(cluster >>> PAGE_SHIFT);
    if (!page) return 1;
    const extra = page[cluster & PAGE_MASK]!;
    return extra === 255 ? this.large.get(cluster)! : extra + 1;
  }

  add(cluster: number): void {
    const word = cluster >>> 5;
    const mask = 1 << (cluster & 31);
    if ((this.once[word]! & mask) === 0) {
      this.once[word] = this.once[word]! | mask;
      return;
    }
    let page = this.pages.get(cluster >>> PAGE_SHIFT);
    if (!page) {
      page = new Uint8Array(PAGE_MASK + 1);
      this.pages.set(cluster >>> PAGE_SHIFT, page);
    }
    const extra = page[cluster & PAGE_MASK]!;
    if (extra < 254) page[cluster & PAGE_MASK] = extra + 1;
    else if (extra === 254) {
      page[cluster & PAGE_MASK] = 255;
      this.large.set(cluster, 256);
    } else this.large.set(cluster, this.large.get(cluster)! + 1);
  }

  /** Adds `cluster` unless its count has reached `max`; false when it has. */
  addBelow(cluster: number, max: number): boolean {
    if (!this.has(cluster) && max >= 1) {
      this.add(cluster);
      return true;
    }
    if (this.get(cluster) >= max) return false;
    this.add(cluster);
    return true;
  }
}

/** A refcount table as typed arrays: block offsets (masked, 0 = no block) and whether reserved bits are set. */
interface RefcountSlots {
  count: number;
  offsets: Float64Array;
  reserved: Uint8Array;
}

function decodeRefcountSlots(bytes: Uint8Array): RefcountSlots {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const count = Math.floor(bytes.length / 8);
  const offsets = new Float64Array(count);
  const reserved = new Uint8Array(count);
  for (let index = 0; index < count; index++) {
    const high = view.getUint32(index * 8);
    const low = view.getUint32(index * 8 + 4);
    // Offsets past 2^53 become huge inexact numbers, never wrapped ones.
    offsets[index] = high * TWO_32 + ((low & 0xfffffe00) >>> 0);
    reserved[index] = (low & 0x1ff) !== 0 ? 1 : 0;
  }
  return { count, offsets, reserved };
}

/** A refcount block as 32-bit words (in the platform's byte order, like refcountWordsOfOnes()). */
function wordsOf(block: Uint8Array): Uint32Array {
  const bytes = block.byteOffset % 4 === 0 ? block : block.slice();
  return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
}

/** Two 32-bit words of refcount entries that all hold 1 (the words alternate only for 64-bit entries). */
function refcountWordsOfOnes(order: number): Uint32Array {
  const bytes = new Uint8Array(8);
  for (let index = 0; index < 64 >>> order; index++) setRefcountEntry(bytes, index, order, 1);
  return new Uint32Array(bytes.buffer);
}

/** Words [base, base + count) of `words` (all zero when there is no block) alternate `even`, `odd`. */
function wordsEqual(words: Uint32Array | undefined, base: number, count: number, even: number, odd: number): boolean {
  if (!words) return even === 0 && odd === 0;
  for (let index = 0; index < count; index++) {
    if (words[base + index] !== ((index & 1) === 0 ? even : odd)) return false;
  }
  return true;
}

/** The host offset of a standard L2 entry from its halves (bits 9..55). */
function offsetOf(high: number, low: number): number {
  return (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0);
}

type LoadedBlock = Uint8Array | null | 'unaligned';

/**
 * The stored refcount blocks: `next()` walks them in table order, reading runs of blocks that lie next to each
 * other in the file in one read (and the next run ahead); `lookup()` reads single blocks with a one-block cache.
 */
class RefcountBlocks {
  private run: { first: number; end: number; bytes: Uint8Array; buffer: Uint8Array } | undefined;
  private nextRun: { first: number; end: number; bytes: Promise<Uint8Array>; buffer: Uint8Array } | undefined;
  private cached: { offset: number; bytes: Uint8Array } | undefined;
  /** The buffer of the run walked last, read into again by the next run ahead (two buffers for the whole walk). */
  private free: Uint8Array | undefined;

  constructor(
    private readonly slots: RefcountSlots,
    private readonly clusterSize: number,
    private readonly read: (offset: number, length: number, into?: Uint8Array) => Promise<Uint8Array>,
  ) {}

  private kind(index: number): 'none' | 'unaligned' | 'block' {
    if (index >= this.slots.count || this.slots.offsets[index] === 0) return 'none';
    return this.slots.offsets[index]! % this.clusterSize !== 0 ? 'unaligned' : 'block';
  }

  async lookup(index: number): Promise<LoadedBlock> {
    const kind = this.kind(index);
    if (kind !== 'block') return kind === 'none' ? null : 'unaligned';
    const offset = this.slots.offsets[index]!;
    if (this.cached?.offset !== offset) this.cached = { offset, bytes: await this.read(offset, this.clusterSize) };
    return this.cached.bytes;
  }

  /** Blocks [index, end) that follow each other in the file, up to REFCOUNT_RUN_BYTES. */
  private runFrom(index: number): { first: number; end: number } {
    const { offsets } = this.slots;
    let end = index + 1;
    const limit = Math.max(1, Math.floor(REFCOUNT_RUN_BYTES / this.clusterSize));
    while (end < this.slots.count && end - index < limit && this.kind(end) === 'block' && offsets[end] === offsets[end - 1]! + this.clusterSize) end++;
    return { first: index, end };
  }

  private startRun(index: number): { first: number; end: number; bytes: Promise<Uint8Array>; buffer: Uint8Array } {
    const { first, end } = this.runFrom(index);
    const length = (end - first) * this.clusterSize;
    const buffer = this.free && this.free.length >= length ? this.free : new Uint8Array(length);
    if (buffer === this.free) this.free = undefined;
    const bytes = this.read(this.slots.offsets[first]!, length, buffer.subarray(0, length));
    bytes.catch(() => {}); // reported when the run is needed
    return { first, end, bytes, buffer };
  }

  /** Block `index` for a walk in increasing order. */
  async next(index: number): Promise<LoadedBlock> {
    const kind = this.kind(index);
    if (kind !== 'block') return kind === 'none' ? null : 'unaligned';
    if (!this.run || index < this.run.first || index >= this.run.end) {
      // A run read ahead for another index is dropped with its buffer (its read may still be under way).
      const pending = this.nextRun?.first === index ? this.nextRun : this.startRun(index);
      if (this.run) this.free = this.run.buffer;
      this.run = undefined; // until the read succeeds: its buffer may be read into again
      this.run = { first: pending.first, end: pending.end, bytes: await pending.bytes, buffer: pending.buffer };
      this.nextRun = undefined;
      let following = this.run.end;
      while (following < this.slots.count && this.kind(following) !== 'block') following++;
      if (following < this.slots.count) this.nextRun = this.startRun(following);
    }
    const at = (index - this.run.first) * this.clusterSize;
    return this.run.bytes.subarray(at, at + this.clusterSize);
  }
}
