import { alignDown, alignUp } from '../sdk/index.js';
import { IcError } from '../sdk/index.js';
import { collectExtents } from '../sdk/index.js';
import { referencedRanges } from './host-ranges.js';
import type { Driver, MovableUnit } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';

export interface CompactionReport {
  /** False when the plan was not carried out (it would move more than allowed). */
  done: boolean;
  unitsMoved: number;
  bytesMoved: number;
  /** Bytes the plan moves (equal to bytesMoved when done). */
  bytesPlanned: number;
  fileSizeBefore: number;
  fileSizeAfter: number;
}

interface Interval {
  offset: number;
  length: number;
}

interface Layout {
  units: MovableUnit[];
  /** End of the referenced ranges that are not movable units (header, fixed tables). */
  fixedEnd: number;
  holes: Interval[];
  referencedEnd: number;
  clusterSize: number;
}

/** One planned move: the unit found at `from` goes to `to`. */
export interface CompactionMove {
  from: number;
  to: number;
  length: number;
}

async function survey(io: BlockIO, driver: Driver): Promise<Layout> {
  const image = await driver.open(io);
  try {
    if (!image.movableUnits || !image.conversionSource) throw new IcError('UNSUPPORTED', `${driver.name} images do not describe their movable units`);
    const description = await image.conversionSource();
    const clusterSize = image.info().clusterSize ?? description.options.clusterSize;
    const ranges = referencedRanges(description.metadataRanges, await collectExtents(image.map()), driver.name);
    const holes: Interval[] = [];
    let cursor = description.headerRegionSize ?? 0;
    for (const range of ranges) {
      const start = alignUp(cursor, clusterSize);
      const end = alignDown(range.offset, clusterSize);
      if (end > start) holes.push({ offset: start, length: end - start });
      cursor = Math.max(cursor, range.offset + range.length);
    }
    const units = await image.movableUnits();
    const unitStarts = new Set(units.map((unit) => unit.hostOffset));
    const fixedEnd = ranges.filter((range) => !unitStarts.has(range.offset)).reduce((end, range) => Math.max(end, range.offset + range.length), 0);
    return { units, holes, referencedEnd: cursor, clusterSize, fixedEnd };
  } finally {
    await image.close();
  }
}

function release(holes: Interval[], offset: number, length: number): void {
  holes.push({ offset, length });
  holes.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < holes.length; ) {
    const previous = holes[i - 1]!;
    const current = holes[i]!;
    if (previous.offset + previous.length >= current.offset) {
      previous.length = Math.max(previous.length, current.offset + current.length - previous.offset);
      holes.splice(i, 1);
    } else i++;
  }
}

function take(holes: Interval[], index: number, length: number): number {
  const hole = holes[index]!;
  const offset = hole.offset;
  hole.offset += length;
  hole.length -= length;
  if (hole.length === 0) holes.splice(index, 1);
  return offset;
}

/**
 * Plans the moves that leave no hole below the last unit, on a copy of the layout. Always about the lowest
 * hole: fill it with the highest unit above it that fits; when every unit above it is bigger (tables above a
 * small hole), send the unit right above it past the end, which turns the hole plus that unit's old place
 * into one run. Either way the lowest hole moves up, so the plan ends.
 */
export function planCompaction(layout: Layout, maxMoves = 1_000_000): { moves: CompactionMove[]; end: number } {
  const units = layout.units.map((u) => ({ offset: u.hostOffset, length: u.length })).sort((a, b) => a.offset - b.offset);
  const holes = layout.holes.map((h) => ({ ...h }));
  let end = alignUp(units.reduce((max, u) => Math.max(max, u.offset + u.length), layout.referencedEnd), layout.clusterSize);
  const moves: CompactionMove[] = [];
  const dropTail = () => {
    const last = units[units.length - 1];
    const limit = last ? last.offset + last.length : 0;
    while (holes.length > 0 && holes[holes.length - 1]!.offset >= limit) holes.pop();
  };
  dropTail();
  while (units.length > 0 && holes.length > 0) {
    if (moves.length >= maxMoves) throw new IcError('LIMIT', `compaction needs more than ${maxMoves} moves`);
    const hole = holes[0]!;
    let chosen = -1;
    for (let u = units.length - 1; u >= 0 && units[u]!.offset > hole.offset; u--) {
      if (units[u]!.length <= hole.length) {
        chosen = u;
        break;
      }
    }
    let to: number;
    if (chosen >= 0) to = take(holes, 0, units[chosen]!.length);
    else {
      chosen = units.findIndex((unit) => unit.offset > hole.offset);
      to = end;
      end += alignUp(units[chosen]!.length, layout.clusterSize);
    }
    const unit = units[chosen]!;
    moves.push({ from: unit.offset, to, length: unit.length });
    release(holes, unit.offset, unit.length);
    unit.offset = to;
    units.sort((a, b) => a.offset - b.offset);
    dropTail();
  }
  return { moves, end };
}

/**
 * Removes the holes an in-place conversion leaves (the old format's metadata) so that no cluster of the file
 * is unreferenced, then truncates. Each move is crash-safe on its own: copy the unit into free space (past the
 * end of the file when no hole fits), flush, switch the one pointer that names it, flush; the old place is
 * reused only by a later move. A crash leaves a valid image with at most one leaked unit.
 * With `maxBytes`, nothing is moved when the plan would move more (e.g. packing a sparse raw source would
 * move data, not just metadata).
 */
export async function compactImage(
  io: BlockIO,
  driver: Driver,
  options: { maxBytes?: number; fileSizeMultiple?: number } = {},
): Promise<CompactionReport> {
  const fileSizeBefore = await io.size();
  const initial = await survey(io, driver);
  const plan = planCompaction(initial);
  const bytesPlanned = plan.moves.reduce((sum, move) => sum + move.length, 0);
  if (options.maxBytes !== undefined && bytesPlanned > options.maxBytes) {
    return { done: false, unitsMoved: 0, bytesMoved: 0, bytesPlanned, fileSizeBefore, fileSizeAfter: fileSizeBefore };
  }
  let bytesMoved = 0;
  // One survey: a unit's pointer lives in the header or inside another unit (an L2 entry inside its L2
  // table), so when a unit moves, every pointer stored inside it moves by the same distance.
  const units = initial.units.map((unit) => ({ ...unit }));
  const byOffset = new Map(units.map((unit) => [unit.hostOffset, unit]));
  // Moves go in batches that share two flushes: copy every unit of the batch, flush, switch their pointers,
  // flush. A batch ends before a move whose destination overlaps a place vacated in the same batch: that old
  // place stays live until the batch's switches are durable.
  let batch: { unit: (typeof units)[number]; move: CompactionMove }[] = [];
  const commitBatch = async () => {
    if (batch.length === 0) return;
    await io.flush();
    for (const { unit, move } of batch) await io.write(unit.pointerOffset, unit.encodePointer(move.to));
    await io.flush();
    batch = [];
  };
  for (const move of plan.moves) {
    if (batch.some(({ move: earlier }) => move.to < earlier.from + earlier.length && earlier.from < move.to + move.length)) await commitBatch();
    const unit = byOffset.get(move.from);
    if (!unit || unit.length !== move.length) throw new IcError('INTERNAL', `compaction: no unit of ${move.length} bytes at ${move.from}`);
    await io.write(move.to, await io.read(move.from, move.length));
    bytesMoved += move.length;
    // The pointer is written later; if it lives inside a unit this batch already copied, it is written there.
    byOffset.delete(move.from);
    unit.hostOffset = move.to;
    byOffset.set(move.to, unit);
    for (const other of units) {
      if (other.pointerOffset >= move.from && other.pointerOffset < move.from + move.length) other.pointerOffset += move.to - move.from;
    }
    batch.push({ unit, move });
  }
  await commitBatch();
  // The new end follows from where the units are now and the metadata that never moves (no second survey).
  const unitEnd = units.reduce((end, unit) => Math.max(end, unit.hostOffset + unit.length), 0);
  const end = alignUp(Math.max(unitEnd, initial.fixedEnd), options.fileSizeMultiple ?? initial.clusterSize);
  if (end < (await io.size())) {
    await io.truncate(end);
    await io.flush();
  }
  return { done: true, unitsMoved: plan.moves.length, bytesMoved, bytesPlanned, fileSizeBefore, fileSizeAfter: await io.size() };
}
