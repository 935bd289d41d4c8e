import { alignDown, alignUp } from './bytes.js';
import { IcError } from './errors.js';
import { collectExtents } from './extent.js';
import { referencedRanges } from './convert.js';
import type { Driver, MovableUnit } from './driver.js';
import type { BlockIO } from './io.js';

export interface CompactionReport {
  unitsMoved: number;
  bytesMoved: number;
  fileSizeBefore: number;
  fileSizeAfter: number;
}

interface Layout {
  units: MovableUnit[];
  /** Free runs between referenced ranges, cluster-aligned, in host order. */
  holes: { offset: number; length: number }[];
  referencedEnd: number;
  clusterSize: number;
}

async function survey(io: BlockIO, driver: Driver): Promise<Layout | undefined> {
  const image = await driver.open(io);
  try {
    if (!image.movableUnits || !image.conversionSource) return undefined;
    const description = await image.conversionSource();
    const clusterSize = image.info().clusterSize ?? description.options.clusterSize;
    const ranges = referencedRanges(description.metadataRanges, await collectExtents(image.map()), driver.name);
    const holes: Layout['holes'] = [];
    let cursor = description.headerRegionSize ?? 0;
    for (const range of ranges) {
      const start = alignUp(cursor, clusterSize);
      const end = alignDown(range.offset, clusterSize);
      if (end > start) holes.push({ offset: start, length: end - start });
      cursor = Math.max(cursor, range.offset + range.length);
    }
    return { units: await image.movableUnits(), holes, referencedEnd: cursor, clusterSize };
  } finally {
    await image.close();
  }
}

/**
 * Removes the holes an in-place conversion leaves (the old format's metadata), so that no cluster of the file
 * is unreferenced, then truncates. Each move is crash-safe on its own: copy the unit into free space (past
 * the end of the file when no hole fits), flush, switch the one pointer that names it, flush; the old place
 * is reused only by a later move. A crash leaves a valid image with at most one leaked unit.
 *
 * Strategy: while a hole lies below the last unit, move the highest unit that fits into the lowest hole that
 * takes it; when none fits (big tables above small holes), move the top unit past the end of the file, which
 * turns the hole below it plus its old place into one run that it fits next time.
 */
export async function compactImage(io: BlockIO, driver: Driver, options: { maxMoves?: number; fileSizeMultiple?: number } = {}): Promise<CompactionReport> {
  const fileSizeBefore = await io.size();
  let unitsMoved = 0;
  let bytesMoved = 0;
  const maxMoves = options.maxMoves ?? 100_000;
  for (;;) {
    const layout = await survey(io, driver);
    if (!layout) throw new IcError('UNSUPPORTED', `${driver.name} images do not describe their movable units`);
    const { units, holes } = layout;
    if (units.length === 0 || holes.length === 0) break;
    const top = units.reduce((a, b) => (a.hostOffset + a.length >= b.hostOffset + b.length ? a : b));
    if (!holes.some((hole) => hole.offset < top.hostOffset)) break;
    if (unitsMoved >= maxMoves) throw new IcError('LIMIT', `compaction did not finish within ${maxMoves} moves`);

    let move: { unit: MovableUnit; to: number } | undefined;
    for (const unit of [...units].sort((a, b) => b.hostOffset - a.hostOffset)) {
      const hole = holes.find((h) => h.offset < unit.hostOffset && h.length >= unit.length);
      if (hole) {
        move = { unit, to: hole.offset };
        break;
      }
    }
    // No hole takes any unit above it: send the top unit past the end so the hole below it can grow.
    move ??= { unit: top, to: alignUp(Math.max(await io.size(), layout.referencedEnd), layout.clusterSize) };

    const data = await io.read(move.unit.hostOffset, move.unit.length);
    await io.write(move.to, data);
    await io.flush();
    await io.write(move.unit.pointerOffset, move.unit.encodePointer(move.to));
    await io.flush();
    unitsMoved++;
    bytesMoved += move.unit.length;
  }
  const layout = await survey(io, driver);
  if (layout) {
    const end = alignUp(layout.referencedEnd, options.fileSizeMultiple ?? layout.clusterSize);
    if (end < (await io.size())) {
      await io.truncate(end);
      await io.flush();
    }
  }
  return { unitsMoved, bytesMoved, fileSizeBefore, fileSizeAfter: await io.size() };
}
