import { IcError, type CheckReport } from '@ic/core/sdk';
import type { BitmapEntry } from './bitmaps.js';
import { analyseImage, checkImage, type CheckFindings, type ClusterCounts } from './check.js';
import { FORMAT, limitExceeded } from './errors.js';
import { HeaderField, IncompatibleFeature, MAX_REFCOUNT_TABLE_BYTES } from './header.js';
import { appendedLayout, getRefcountEntry, setRefcountEntry, writeAppendedRefcounts } from './refcount.js';
import { loadState, type Qcow2State } from './state.js';

const SECTOR = 512;
const TWO_32 = 2 ** 32;

/**
 * `qemu-img check -r leaks|all` for qcow2, with qemu 7.2's decisions (block/qcow2-refcount.c) and counts:
 *
 *  - leaks (stored refcount above the references) are lowered in place, with -r leaks and -r all;
 *  - with -r all, refcounts below the references are raised in place, unless the refcount structures must be
 *    rebuilt (a cluster in use counted as free, which is what a dirty image with lazy refcounts has; a damaged
 *    refcount table or block): then a complete new refcount table and blocks are built from the references
 *    (active L1/L2, snapshot tables, bitmaps...) and switched to in one header write;
 *  - COPIED flags of the active L1 and L2 tables are then made to say "refcount is exactly 1" (with -r leaks
 *    only when nothing else is left, as qemu does);
 *  - the dirty and corrupt bits are cleared once a fresh check finds no corruption.
 *
 * Crash safety (every step is safe to kill; a rerun finishes the job):
 *  - in-place refcount and COPIED updates write only the 512-byte sectors that change, and each change on its own
 *    moves the image towards the repaired state (a partly applied step leaves fewer leaks or corruptions of the
 *    same kind, never new ones);
 *  - a rebuild writes the new blocks and table past the end of the file, where nothing is referenced, flushes,
 *    then switches refcount_table_offset and refcount_table_clusters with one 12-byte write inside sector 0 and
 *    flushes. The new refcounts do not count the old table and blocks, so after the switch they are plain free
 *    space: no leak is left at any point. Killed before the switch, the image is as it was plus unreferenced
 *    clusters past its old end (not leaks: their refcount is 0, unless the old blocks gave clusters past the
 *    old end of the file a refcount, which only a damaged image does).
 *
 * Refused before anything is written (one line, file byte-identical): damage in the tables themselves (entries with
 * reserved bits, misaligned or past the end of the file, refcount overflows, bad snapshot or bitmap entries), which
 * qemu leaves as it is and which makes the references the repair would trust doubtful; and -r leaks on an image
 * that needs a rebuild (qemu: "need to rebuild refcount structures").
 */
export async function repairImage(
  state: Qcow2State,
  bitmaps: readonly BitmapEntry[],
  mode: 'leaks' | 'all',
): Promise<{ report: CheckReport; state: Qcow2State }> {
  const { io } = state;
  if (!io.writable) throw new IcError('INVALID', `${FORMAT}: repair needs the image opened for writing`, { format: FORMAT });
  const { report, findings } = await analyseImage(state, bitmaps);
  if (findings.unrepairable > 0) {
    const more = findings.unrepairable > 1 ? ` (and ${findings.unrepairable - 1} more)` : '';
    throw new IcError(
      'CORRUPT',
      `${FORMAT}: the tables themselves are damaged, which this repair does not touch: ${findings.firstUnrepairable}${more}; nothing was written`,
      { format: FORMAT },
    );
  }
  if (mode === 'leaks' && findings.rebuild) {
    throw new IcError(
      'CORRUPT',
      `${FORMAT}: the refcount structures must be rebuilt (${describeRebuild(findings)}), which -r leaks does not do; run check -r all (nothing was written)`,
      { format: FORMAT },
    );
  }

  const actions: string[] = [];
  let leaksFixed = 0;
  let corruptionsFixed = 0;
  let current = state;
  /** The refcount of each cluster once the refcounts are repaired: the references, less the old refcount structures after a rebuild. */
  let refcountOf = (cluster: number): number => findings.references.get(cluster);
  if (mode === 'all' && findings.rebuild) {
    actions.push('Rebuilding refcount structure');
    await rebuildRefcounts(state, findings);
    // qemu counts every refcount problem as fixed by a rebuild (the tables' own damage was refused above).
    corruptionsFixed += findings.structural + findings.low;
    leaksFixed += findings.leaks;
    current = await loadState(io, state.options);
    refcountOf = (cluster) => findings.references.get(cluster) - (findings.refcountStructures.get(cluster) ?? 0);
  } else if (findings.mismatches.length > 0) {
    const fixed = await fixRefcountsInPlace(state, findings, mode);
    leaksFixed += fixed.leaks;
    corruptionsFixed += fixed.corruptions;
    if (fixed.leaks + fixed.corruptions > 0) actions.push(`Repaired the refcounts of ${fixed.leaks + fixed.corruptions} clusters`);
  }

  // COPIED: with -r leaks only when the refcounts are right now (qemu: nothing else left).
  if (mode === 'all' || findings.low === 0) {
    const copied = await fixCopiedFlags(current, refcountOf);
    corruptionsFixed += copied;
    if (copied > 0) {
      actions.push(`Repaired ${copied} OFLAG_COPIED flags`);
      await io.flush();
      current = await loadState(io, state.options);
    }
  }

  const after = await checkImage(current, bitmaps);
  if (after.corruptions === 0 && after.checkErrors === 0 && current.header.version === 3 && (current.dirty || current.corrupt)) {
    await markClean(current);
    if (current.dirty) actions.push('Cleared the dirty bit');
    if (current.corrupt) actions.push('Cleared the corrupt bit');
    current = await loadState(io, state.options);
  }
  return {
    report: {
      ...after,
      ...(corruptionsFixed > 0 ? { corruptionsFixed } : {}),
      ...(leaksFixed > 0 ? { leaksFixed } : {}),
      messages: [...report.messages, ...actions],
    },
    state: current,
  };
}

function describeRebuild(findings: CheckFindings): string {
  if (findings.structural > 0 || findings.low === 0) return 'the refcount table or blocks are damaged';
  return 'clusters in use are counted as free';
}

/** Sets the stored refcount of each mismatched cluster to its references (-r leaks: only those above them). */
async function fixRefcountsInPlace(state: Qcow2State, findings: CheckFindings, mode: 'leaks' | 'all'): Promise<{ leaks: number; corruptions: number }> {
  const { io, header, clusterSize } = state;
  const { entriesPerBlock, order } = state.refcounts;
  const table = await io.read(header.refcountTableOffset, header.refcountTableClusters * clusterSize);
  const tableView = new DataView(table.buffer, table.byteOffset, table.byteLength);
  let leaks = 0;
  let corruptions = 0;
  const { mismatches, references } = findings;
  for (let at = 0; at < mismatches.length; ) {
    const blockIndex = Math.floor(mismatches[at]! / entriesPerBlock);
    let end = at;
    while (end < mismatches.length && Math.floor(mismatches[end]! / entriesPerBlock) === blockIndex) end++;
    const blockOffset = tableView.getUint32(blockIndex * 8) * TWO_32 + ((tableView.getUint32(blockIndex * 8 + 4) & 0xfffffe00) >>> 0);
    // A mismatch inside no block is a cluster in use counted as free: that is a rebuild, decided by the analysis.
    if (blockOffset === 0) throw new IcError('INTERNAL', `${FORMAT}: refcount block ${blockIndex} is missing but no rebuild was planned`);
    const before = await io.read(blockOffset, clusterSize);
    const block = before.slice();
    for (let index = at; index < end; index++) {
      const cluster = mismatches[index]!;
      const stored = getRefcountEntry(block, cluster % entriesPerBlock, order);
      const wanted = references.get(cluster);
      if (stored > wanted) leaks++;
      else if (mode === 'all') corruptions++;
      else continue;
      setRefcountEntry(block, cluster % entriesPerBlock, order, wanted);
    }
    await writeChangedSectors(state, blockOffset, before, block);
    at = end;
  }
  await io.flush();
  return { leaks, corruptions };
}

/**
 * Builds a complete refcount structure past the end of the file from the references (the old table and blocks not
 * counted), then points the header at it. See repairImage for why every instant of it is safe. `extra` clusters
 * (written past the references by the caller, for tables it is about to switch to them) count once more.
 */
export async function rebuildRefcounts(state: Qcow2State, findings: CheckFindings, extra?: { first: number; count: number }): Promise<void> {
  const { io, clusterSize, fileSize } = state;
  const { entriesPerBlock, order, maxValue } = state.refcounts;
  const { references, refcountStructures } = findings;
  const counted = findings.clusterCount;
  const inExtra = (cluster: number): boolean => extra !== undefined && cluster >= extra.first && cluster < extra.first + extra.count;
  const countOf = (cluster: number): number => {
    const more = inExtra(cluster) ? 1 : 0;
    if (cluster >= counted || !references.has(cluster)) return more;
    return references.get(cluster) - (refcountStructures.get(cluster) ?? 0) + more;
  };

  const start = Math.max(Math.ceil(fileSize / clusterSize), counted, extra ? extra.first + extra.count : 0);
  const used = blocksInUse(references, counted, entriesPerBlock, countOf);
  if (extra && extra.count > 0) {
    for (let index = Math.floor(extra.first / entriesPerBlock); index <= Math.floor((extra.first + extra.count - 1) / entriesPerBlock); index++) used.push(index);
  }
  const { blocks, tableClusters } = appendedLayout(used, start, state.refcounts, 'repair');
  const tableCluster = start + blocks.length;
  const newEnd = tableCluster + tableClusters;
  const valueOf = (cluster: number): number => (cluster >= start ? (cluster < newEnd ? 1 : 0) : countOf(cluster));
  for (const [cluster] of refcountStructures) {
    if (valueOf(cluster) > maxValue) throw new IcError('INTERNAL', `${FORMAT}: refcount of cluster ${cluster} overflows`);
  }

  // Blocks, in table order, at start, start + 1..., then the table.
  await writeAppendedRefcounts(io, start, { blocks, tableClusters }, clusterSize, (blockIndex) =>
    encodeBlock(blockIndex, entriesPerBlock, order, clusterSize, references, extra ? 0 : counted, valueOf),
  );

  // The switch: offset and length of the table in one write inside sector 0.
  const field = new Uint8Array(12);
  const view = new DataView(field.buffer);
  view.setUint32(0, Math.floor((tableCluster * clusterSize) / TWO_32));
  view.setUint32(4, (tableCluster * clusterSize) % TWO_32);
  view.setUint32(8, tableClusters);
  await io.write(HeaderField.refcountTableOffset, field);
  await io.flush();
}

/** Refcount block indexes below `counted` that hold a non-zero count. */
function blocksInUse(references: ClusterCounts, counted: number, entriesPerBlock: number, countOf: (cluster: number) => number): number[] {
  const used: number[] = [];
  const words = references.once;
  // entriesPerBlock is a multiple of 32 (at least 64 entries per block).
  const wordsPerBlock = entriesPerBlock / 32;
  for (let block = 0; block * entriesPerBlock < counted; block++) {
    const firstWord = block * wordsPerBlock;
    const endWord = Math.min(words.length, firstWord + wordsPerBlock);
    let inUse = false;
    for (let word = firstWord; word < endWord && !inUse; word++) {
      const bits = words[word]!;
      if (bits === 0) continue;
      for (let bit = 0; bit < 32; bit++) {
        if ((bits & (1 << bit)) !== 0 && countOf(word * 32 + bit) > 0) {
          inUse = true;
          break;
        }
      }
    }
    if (inUse) used.push(block);
  }
  return used;
}

function encodeBlock(
  blockIndex: number,
  entriesPerBlock: number,
  order: number,
  clusterSize: number,
  references: ClusterCounts,
  counted: number,
  valueOf: (cluster: number) => number,
): Uint8Array {
  const block = new Uint8Array(clusterSize);
  const first = blockIndex * entriesPerBlock;
  const words = references.once;
  for (let index = 0; index < entriesPerBlock; index++) {
    const cluster = first + index;
    // Below `counted`, only referenced clusters can count (checked on the bit words, 32 at a time).
    if (cluster < counted && (index & 31) === 0 && words[cluster >>> 5] === 0 && cluster + 32 <= counted) {
      index += 31;
      continue;
    }
    const value = valueOf(cluster);
    if (value !== 0) setRefcountEntry(block, index, order, value);
  }
  return block;
}

/**
 * Makes the COPIED flag of every active L1 entry and of every allocated active L2 entry say "refcount exactly 1",
 * the refcounts being the references (which they are once repaired). Writes only the sectors that change. Returns
 * how many entries changed.
 */
async function fixCopiedFlags(state: Qcow2State, refcountOf: (cluster: number) => number): Promise<number> {
  const { io, header, clusterSize, geometry } = state;
  const COPIED = 0x80000000;
  let changed = 0;
  const l1Before = new Uint8Array(state.l1.buffer, state.l1.byteOffset, state.l1.byteLength).slice();
  const l1 = l1Before.slice();
  const l1View = new DataView(l1.buffer);
  const seen = new Set<number>();
  for (let index = 0; index < header.l1Size; index++) {
    const high = l1View.getUint32(index * 8);
    const l2Offset = (high & 0x00ffffff) * TWO_32 + ((l1View.getUint32(index * 8 + 4) & 0xfffffe00) >>> 0);
    if (l2Offset === 0) continue;
    const wanted = refcountOf(l2Offset / clusterSize) === 1;
    if (((high & COPIED) !== 0) !== wanted) {
      l1View.setUint32(index * 8, wanted ? (high | COPIED) >>> 0 : high & ~COPIED & 0xffffffff);
      changed++;
    }
    if (seen.has(l2Offset)) continue;
    seen.add(l2Offset);
    const before = await io.read(l2Offset, clusterSize);
    const table = before.slice();
    const view = new DataView(table.buffer);
    let tableChanged = false;
    for (let entry = 0; entry < geometry.l2Entries; entry++) {
      const at = entry * geometry.l2EntrySize;
      const entryHigh = view.getUint32(at);
      const low = view.getUint32(at + 4);
      if ((entryHigh & 0x40000000) !== 0) continue; // compressed: never COPIED (refused when set)
      const copied = (entryHigh & COPIED) !== 0;
      const hasOffset = (entryHigh & 0x00ffffff) !== 0 || (low & 0xfffffe00) !== 0;
      const zeroFlag = (low & 1) !== 0 && !geometry.extendedL2;
      const allocated = zeroFlag ? hasOffset : hasOffset || (state.hasDataFile && copied);
      if (!allocated) continue;
      const cluster = (entryHigh & 0x00ffffff) * (TWO_32 / clusterSize) + ((low & 0xfffffe00) >>> 0) / clusterSize;
      const want = state.hasDataFile || refcountOf(cluster) === 1;
      if (copied === want) continue;
      view.setUint32(at, want ? (entryHigh | COPIED) >>> 0 : entryHigh & ~COPIED & 0xffffffff);
      tableChanged = true;
      changed++;
    }
    if (tableChanged) await writeChangedSectors(state, l2Offset, before, table);
  }
  await writeChangedSectors(state, header.l1TableOffset, l1Before, l1);
  return changed;
}

/** Clears the dirty and corrupt bits (one 8-byte write in sector 0), then flushes. */
async function markClean(state: Qcow2State): Promise<void> {
  const { io } = state;
  await io.flush();
  const word = await io.read(HeaderField.incompatibleFeatures, 8);
  const view = new DataView(word.buffer, word.byteOffset, word.byteLength);
  const bits = view.getBigUint64(0) & ~(IncompatibleFeature.dirty | IncompatibleFeature.corrupt);
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, bits);
  await io.write(HeaderField.incompatibleFeatures, out);
  await io.flush();
}

/** Writes the 512-byte sectors of `after` that differ from `before` (runs of them in one write each). */
async function writeChangedSectors(state: Qcow2State, offset: number, before: Uint8Array, after: Uint8Array): Promise<void> {
  const sectors = Math.ceil(after.length / SECTOR);
  const differs = (sector: number): boolean => {
    const end = Math.min(after.length, (sector + 1) * SECTOR);
    for (let at = sector * SECTOR; at < end; at++) if (before[at] !== after[at]) return true;
    return false;
  };
  for (let sector = 0; sector < sectors; ) {
    if (!differs(sector)) {
      sector++;
      continue;
    }
    let end = sector + 1;
    while (end < sectors && differs(end)) end++;
    await state.io.write(offset + sector * SECTOR, after.subarray(sector * SECTOR, Math.min(after.length, end * SECTOR)));
    sector = end;
  }
}
