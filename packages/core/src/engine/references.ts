import { IcError, type BlockIO, type CounterField, type ReferenceCounts } from '../sdk/index.js';

/**
 * Reference counts that follow the mover's waves (Image.referenceCounts: qcow2's refcount blocks). A wave with
 * counts becomes: copies, flush; counters of the new places set to 1 (logged, flushed); pointer switches (logged,
 * flushed); counters of the old places set to 0 (logged, flushed). The values are absolute, so re-applying a log is
 * harmless, and every step only changes counters of clusters nothing names at that moment (a new place before its
 * switch, an old place after it): a crash between or inside the steps leaves leaked clusters at worst, never a
 * cluster named with a count of 0. Cutting the file first clears the counters of the clusters cut off.
 */

/** A wave's reference-count side: the counts, and host ranges freed by switches that copy nothing (compaction). */
export interface WaveCounts {
  counts: ReferenceCounts;
  /** The image's cluster size: every range is whole clusters. */
  clusterSize: number;
  released?: readonly { offset: number; length: number }[];
}

/** Host ranges (whole clusters) whose counters change, checked against the counts' coverage before any write. */
export function checkCovered(counts: ReferenceCounts, ranges: readonly { offset: number; length: number }[]): void {
  for (const range of ranges) {
    if (range.offset + range.length > counts.coveredEnd) {
      throw new IcError('UNSUPPORTED', `cannot move a unit to ${range.offset}: the image's reference counts cover only the first ${counts.coveredEnd} bytes`);
    }
  }
}

function setField(sector: Uint8Array, at: number, field: CounterField, value: 0 | 1): void {
  if (field.bits < 8) {
    const shift = field.shift ?? 0;
    const mask = ((1 << field.bits) - 1) << shift;
    sector[at] = (sector[at]! & ~mask) | (value << shift);
    return;
  }
  const bytes = field.bits / 8;
  sector.fill(0, at, at + bytes);
  sector[field.littleEndian ? at : at + bytes - 1] = value;
}

/**
 * The sectors that set the counters of every cluster of `ranges` to `value`, read from the file as it is now; only
 * the sectors that change.
 */
export async function counterSectors(io: BlockIO, counts: ReferenceCounts, clusterSize: number, ranges: readonly { offset: number; length: number }[], value: 0 | 1): Promise<Map<number, Uint8Array>> {
  const sectors = new Map<number, Uint8Array>();
  const original = new Map<number, Uint8Array>();
  for (const range of ranges) {
    for (let at = range.offset; at < range.offset + range.length; at += clusterSize) {
      const field = counts.counter(at);
      const sectorOffset = field.offset - (field.offset % 512);
      if (field.offset + Math.max(1, field.bits / 8) > sectorOffset + 512) throw new IcError('INTERNAL', `references: the counter at ${field.offset} crosses a sector boundary`);
      let sector = sectors.get(sectorOffset);
      if (!sector) {
        const bytes = await io.read(sectorOffset, 512);
        original.set(sectorOffset, bytes);
        sector = bytes.slice();
        sectors.set(sectorOffset, sector);
      }
      setField(sector, field.offset - sectorOffset, field, value);
    }
  }
  for (const [offset, sector] of sectors) {
    const before = original.get(offset)!;
    let same = true;
    for (let i = 0; i < 512 && same; i++) same = sector[i] === before[i];
    if (same) sectors.delete(offset);
  }
  return sectors;
}

/** The counters the file's cut at `end` drops: clusters in [end, min(fileEnd, coveredEnd)), to be cleared first. */
export function cutRange(counts: ReferenceCounts, clusterSize: number, end: number, fileEnd: number): { offset: number; length: number }[] {
  const from = Math.ceil(end / clusterSize) * clusterSize;
  const to = Math.min(Math.floor(counts.coveredEnd / clusterSize), Math.ceil(fileEnd / clusterSize)) * clusterSize;
  return to > from ? [{ offset: from, length: to - from }] : [];
}

/**
 * Spare clusters past `from` (a cluster) that the counts cover, at most `wanted`; refuses when fewer than `least`
 * are left (the refcount blocks would have to grow first).
 */
export function coveredSpare(counts: ReferenceCounts | undefined, clusterSize: number, from: number, wanted: number, least: number, what: string): number {
  if (!counts) return wanted;
  const room = Math.floor(counts.coveredEnd / clusterSize) - from;
  if (room < least) {
    throw new IcError('UNSUPPORTED', `cannot ${what}: the image's reference counts cover only the first ${counts.coveredEnd} bytes, and the moves need ${(from + least) * clusterSize} (its refcount blocks would have to grow first; ic does not add refcount blocks yet)`);
  }
  return Math.min(wanted, room);
}
