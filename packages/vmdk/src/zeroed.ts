import { isAllZero } from '@ic/core/sdk';
import { checkSparse } from './check.js';
import { corruptAt, vmdkError } from './errors.js';
import { GD_ENTRY_BYTES, GrainTableReader, GTE_UNALLOCATED, GTE_ZEROED } from './grain-tables.js';
import { FLAG_ZEROED_GRAIN, HEADER_FIELDS, SECTOR_SIZE } from './header.js';
import { protectedHeaderEnd } from './host-ranges.js';
import type { SparseVmdkImage } from './image.js';

/** Largest single write of zeros. */
const ZERO_WRITE = 4 * 1024 * 1024;

/** A primary grain table and its redundant copy, as raw little-endian bytes. */
interface TablePair {
  gdIndex: number;
  primaryAt: number;
  primary: DataView;
  redundantAt: number;
  redundant: DataView | undefined;
}

/** What one walk over the tables found: the zeroed entries, the entries an interrupted demote left, the end of all use. */
interface ZeroedScan {
  /** Entries 1 on both sides: each needs a new value. */
  zeroed: number;
  /** Entries 1 on one side only, the other side already what demote writes (an interrupted run): not corruptions. */
  resumed: number;
  /** First byte past every table, directory and data grain. */
  referencedEnd: number;
}

/**
 * The value an interrupted demote leaves in place of 1, or undefined when `other` is no such value: 0 without a
 * parent; with one, a grain of this file that holds only zeros.
 */
async function resumedValue(image: SparseVmdkImage, other: number): Promise<number | undefined> {
  const { io, geometry, fileSize, backing } = image.state;
  if (!backing) return other === GTE_UNALLOCATED ? 0 : undefined;
  const at = other * SECTOR_SIZE;
  if (other <= GTE_ZEROED || at < protectedHeaderEnd(image.state) || at + geometry.grainBytes > fileSize) return undefined;
  return isAllZero(await io.read(at, geometry.grainBytes)) ? other : undefined;
}

async function* tablePairs(image: SparseVmdkImage): AsyncGenerator<TablePair> {
  const { io, geometry, gd, rgd } = image.state;
  for (let gdIndex = 0; gdIndex < gd.entries.length; gdIndex++) {
    if (gd.entries[gdIndex] === 0) continue;
    const primaryAt = gd.entries[gdIndex]! * SECTOR_SIZE;
    const primary = await io.read(primaryAt, geometry.gtBytes);
    const redundantSector = rgd?.entries[gdIndex] ?? 0;
    const redundantAt = redundantSector * SECTOR_SIZE;
    const redundant = redundantSector !== 0 ? await io.read(redundantAt, geometry.gtBytes) : undefined;
    yield {
      gdIndex,
      primaryAt,
      primary: new DataView(primary.buffer, primary.byteOffset, primary.byteLength),
      redundantAt,
      redundant: redundant ? new DataView(redundant.buffer, redundant.byteOffset, redundant.byteLength) : undefined,
    };
  }
}

async function scanZeroed(image: SparseVmdkImage): Promise<ZeroedScan> {
  const { geometry, gd, rgd } = image.state;
  const scan: ZeroedScan = { zeroed: 0, resumed: 0, referencedEnd: protectedHeaderEnd(image.state) };
  const gdBytes = geometry.gdEntries * GD_ENTRY_BYTES;
  for (const directory of rgd ? [gd, rgd] : [gd]) {
    scan.referencedEnd = Math.max(scan.referencedEnd, directory.sector * SECTOR_SIZE + gdBytes);
    for (const sector of directory.entries) if (sector !== 0) scan.referencedEnd = Math.max(scan.referencedEnd, sector * SECTOR_SIZE + geometry.gtBytes);
  }
  for await (const pair of tablePairs(image)) {
    for (let index = 0; index < geometry.gtesPerGT; index++) {
      const a = pair.primary.getUint32(index * 4, true);
      const b = pair.redundant ? pair.redundant.getUint32(index * 4, true) : a;
      for (const value of [a, b]) if (value > GTE_ZEROED) scan.referencedEnd = Math.max(scan.referencedEnd, value * SECTOR_SIZE + geometry.grainBytes);
      if (a === GTE_ZEROED && b === GTE_ZEROED) scan.zeroed++;
      else if ((a === GTE_ZEROED) !== (b === GTE_ZEROED) && (await resumedValue(image, a === GTE_ZEROED ? b : a)) !== undefined) scan.resumed++;
    }
  }
  return scan;
}

/** Number of GTEs equal to 1 in the primary tables (zeroed grains while the flag is set). */
export async function countZeroedGrains(image: SparseVmdkImage): Promise<number> {
  const { io, geometry, gd } = image.state;
  const reader = new GrainTableReader(io, geometry, gd);
  let count = 0;
  for (let index = 0; index < gd.entries.length; index++) {
    if (gd.entries[index] === 0) continue;
    const table = await reader.table(index);
    if (table) for (const entry of table) if (entry === GTE_ZEROED) count++;
  }
  return count;
}

/**
 * Removes the zeroed-grain feature of a monolithicSparse extent, so that a reader without it (flags bit 2 unknown,
 * GTE 1 taken for a grain at sector 1) reads the same disk:
 *  1. without a parent, each GTE 1 becomes 0 (unallocated reads as zeros too); with one, a new grain of zeros
 *     right after everything the file references (written, or made by extending the file), flushed before any
 *     entry names it;
 *  2. the primary and the redundant table of each GT are rewritten (the sectors that change), then flushed; old
 *     and new values read alike, so any subset of these writes leaves the same disk;
 *  3. sector 0 rewritten with the flag cleared (and version 2 -> 1, what qemu writes with zeroed_grain=off): one
 *     512-byte write, flushed. monolithicSparse has one header (no footer copy).
 * A rerun after a kill takes an entry that is 1 on one side and already demoted on the other (0, or a grain of
 * zeros with a parent) as the interrupted switch it is and finishes it; grains of zeros an interrupted run wrote
 * but never named stay as unused space (VMDK counts no leaks; qemu-img check accepts it).
 * Refused (nothing written) when the check finds any other damage.
 */
export async function demoteZeroedGrains(image: SparseVmdkImage): Promise<{ count: number; written: number }> {
  const { state } = image;
  const { io, geometry, backing } = state;
  if (!io.writable) throw vmdkError('INVALID', 'demote needs the image opened for writing');
  if (geometry.compressed || state.footer) throw vmdkError('UNSUPPORTED', 'zeroed grains of a stream-optimized file are not removed in place');
  const report = await checkSparse(image);
  const scan = await scanZeroed(image);
  if (report.checkErrors > 0 || report.corruptions > scan.resumed) {
    const first = report.messages.find((message) => message.startsWith('ERROR')) ?? 'the tables are inconsistent';
    throw corruptAt(`${first}: zeroed grains are not removed from a damaged image; nothing was written`);
  }
  const grainBytes = geometry.grainBytes;
  const first = Math.ceil(scan.referencedEnd / SECTOR_SIZE) * SECTOR_SIZE;
  if (backing && scan.zeroed > 0) {
    // Zeros written over what lies inside the file (unreferenced bytes may be there); past its end, extending the
    // file gives zeros (a hole where the file system has them).
    const end = first + scan.zeroed * grainBytes;
    const written = Math.min(end, await io.size());
    const zeros = new Uint8Array(Math.max(0, Math.min(ZERO_WRITE, written - first)));
    for (let at = first; at < written; at += zeros.length) await io.write(at, at + zeros.length <= written ? zeros : zeros.subarray(0, written - at));
    if (end > written) await io.truncate(end);
    await io.flush();
  }
  let allocated = 0;
  let changed = 0;
  for await (const pair of tablePairs(image)) {
    const touched: [number, number][] = [];
    for (let index = 0; index < geometry.gtesPerGT; index++) {
      const a = pair.primary.getUint32(index * 4, true);
      const b = pair.redundant ? pair.redundant.getUint32(index * 4, true) : a;
      if (a !== GTE_ZEROED && b !== GTE_ZEROED) continue;
      let value: number;
      if (a === GTE_ZEROED && b === GTE_ZEROED) value = backing ? (first + allocated++ * grainBytes) / SECTOR_SIZE : GTE_UNALLOCATED;
      else value = (await resumedValue(image, a === GTE_ZEROED ? b : a))!;
      pair.primary.setUint32(index * 4, value, true);
      pair.redundant?.setUint32(index * 4, value, true);
      touched.push([index, value]);
      changed++;
    }
    if (touched.length === 0) continue;
    const from = Math.floor((touched[0]![0] * 4) / SECTOR_SIZE) * SECTOR_SIZE;
    const to = Math.min(geometry.gtBytes, Math.ceil((touched[touched.length - 1]![0] * 4 + 4) / SECTOR_SIZE) * SECTOR_SIZE);
    for (const [at, view] of [[pair.primaryAt, pair.primary], [pair.redundantAt, pair.redundant]] as const) {
      if (view) await io.write(at + from, new Uint8Array(view.buffer, view.byteOffset + from, to - from));
    }
  }
  await io.flush();
  if (geometry.zeroedGrains) {
    const sector = await io.read(0, SECTOR_SIZE);
    const view = new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
    view.setUint32(HEADER_FIELDS.flags, view.getUint32(HEADER_FIELDS.flags, true) & ~FLAG_ZEROED_GRAIN, true);
    if (view.getUint32(HEADER_FIELDS.version, true) === 2) view.setUint32(HEADER_FIELDS.version, 1, true);
    await io.write(0, sector);
    await io.flush();
    state.header.flags &= ~FLAG_ZEROED_GRAIN;
    if (state.header.version === 2) state.header.version = 1;
    state.geometry = { ...geometry, zeroedGrains: false };
  }
  state.fileSize = await io.size();
  return { count: changed, written: allocated };
}
