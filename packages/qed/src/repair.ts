import { IcError, itemBatches, type CheckReport, type UnitRun } from '@ic/core/sdk';
import { scanTables } from './check.js';
import { FEATURE_NEED_CHECK, FORMAT, HEADER_FIELDS } from './header.js';
import type { QedImage } from './image.js';

/** Header field that holds the L1 table offset (u64 LE at byte 40). */
const L1_TABLE_OFFSET_FIELD = 40;

/** One unit to move: `length` bytes at `from`, named by the u64le pointer at `pointer`. */
interface Move {
  from: number;
  to: number;
  length: number;
  pointer: number;
}

/**
 * `check -r leaks|all` for QED. qemu 7.2 (qed-check.c) treats both modes alike: it clears L1 and L2 entries that
 * name a table or cluster outside the file (or misaligned), counting them as fixed corruptions, and clears the
 * need-check flag when no corruption is left; it never frees leaked space. ic does the same, and frees the
 * leaks too (QED has no reference counts: a leak is file space no table references):
 *
 *  1. entries outside the file are cleared only while the need-check flag is set, which is when the format says
 *     tables may name clusters an interrupted allocating write never finished; without it they are damage of
 *     another kind and the repair is refused. Each entry is one 8-byte write.
 *  2. units above the packed end are moved into the holes below it, in three waves (L2 tables, data clusters, the
 *     L1 table), each planned from a fresh scan: copy every unit of the wave into free space, flush, switch each
 *     unit's one pointer (an 8-byte write), flush. A wave's pointers live in units no wave moves at the same time
 *     (data pointers in L2 tables already moved, L2 pointers in the L1 table, the L1 pointer in the header), so any
 *     subset of a wave's switches leaves a valid image; old copies stay intact until the truncation.
 *  3. the file is cut after the last referenced byte, flushed; then the need-check flag is cleared, flushed.
 *
 * Killed anywhere, the image reads the same; a rerun finishes. Refused before any write (one line, file
 * byte-identical): tables that cannot be read, clusters or tables referenced twice, entries outside the file
 * without the need-check flag.
 */
export async function repairImage(image: QedImage): Promise<CheckReport> {
  const { io } = image;
  if (!io.writable) throw new IcError('INVALID', `${FORMAT}: repair needs the image opened for writing`, { format: FORMAT });
  const before = await image.check();
  const scan = await scanTables({ io, header: image.header, geometry: image.geometry }, { collect: true });
  const findings = scan.repair!;
  if (scan.checkErrors > 0) {
    throw new IcError('CORRUPT', `${FORMAT}: ${scan.checkErrors} table(s) could not be read, so nothing can be repaired safely; nothing was written`, { format: FORMAT });
  }
  if (findings.shared > 0) {
    throw new IcError('CORRUPT', `${FORMAT}: clusters are referenced twice (${scan.firstProblem?.message ?? 'overlapping tables'}), which no repair can undo safely; nothing was written`, { format: FORMAT });
  }
  if (findings.invalidEntries.length > 0 && !image.needCheck) {
    throw new IcError(
      'CORRUPT',
      `${FORMAT}: ${scan.firstProblem?.message ?? 'entries name clusters outside the file'}, although the need-check flag is clear (not what an interrupted write leaves): not repaired; nothing was written`,
      { format: FORMAT },
    );
  }
  const actions: string[] = [];
  let corruptionsFixed = 0;
  for (const entry of findings.invalidEntries) {
    await io.write(entry, new Uint8Array(8));
    corruptionsFixed++;
  }
  if (corruptionsFixed > 0) {
    actions.push(`Cleared ${corruptionsFixed} table entries naming clusters outside the file`);
    await io.flush();
  }

  const fileSize = await io.size();
  const moved = await pack(image);
  if (moved > 0) actions.push(`Moved ${moved} units into leaked space`);
  const end = await referencedEnd(image);
  if (end < fileSize) {
    await io.truncate(end);
    await io.flush();
    actions.push(`Cut the file from ${fileSize} to ${end} bytes`);
  }
  await image.reload();
  if (image.needCheck && (await image.check()).corruptions === 0) {
    const features = image.header.features & ~FEATURE_NEED_CHECK;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, features, true);
    await io.flush();
    await io.write(HEADER_FIELDS.features.offset, bytes);
    await io.flush();
    actions.push('Cleared the need-check flag');
    await image.reload();
  }
  const after = await image.check();
  const leaksFixed = Math.max(0, before.leaks - after.leaks);
  return {
    ...after,
    ...(corruptionsFixed > 0 ? { corruptionsFixed } : {}),
    ...(leaksFixed > 0 ? { leaksFixed } : {}),
    messages: [...before.messages, ...actions, ...after.messages],
  };
}

/**
 * Moves the units above the packed end into the holes below it, one wave per kind (see repairImage): L2 tables
 * first (they need runs of free clusters, and the places they leave below the packed end take data), then data
 * clusters, then the L1 table. Each wave plans from a fresh scan of the image as the previous waves left it.
 * Returns how many units moved.
 */
async function pack(image: QedImage): Promise<number> {
  const { io } = image;
  let moved = 0;
  for (const kind of ['table', 'data', 'l1'] as const) {
    const { clusterSize, headerRegionSize } = image.geometry;
    const scan = await scanTables({ io, header: image.header, geometry: image.geometry }, { collect: true });
    const { used, referencedEnd: end } = scan.repair!;
    const packedEnd = headerRegionSize + used.size * clusterSize;
    if (end <= packedEnd) break;

    // This wave's units that lie (partly) above the packed end.
    const wave: Move[] = [];
    for await (const batch of itemBatches<UnitRun>(image.units())) {
      for (const run of batch) {
        const runKind = run.kind === 'data' ? 'data' : run.pointerOffset === L1_TABLE_OFFSET_FIELD ? 'l1' : 'table';
        if (runKind !== kind) continue;
        for (let index = 0; index < run.count; index++) {
          const from = run.hostOffset + index * run.unitLength;
          if (from + run.unitLength > packedEnd) wave.push({ from, to: -1, length: run.unitLength, pointer: run.pointerOffset + index * run.pointerStride });
        }
      }
    }
    // Holes below the packed end, lowest first; the highest units move first (the truncation needs them gone).
    const free: number[] = [];
    for (let cluster = headerRegionSize / clusterSize; cluster * clusterSize < packedEnd; cluster++) if (!used.has(cluster)) free.push(cluster);
    const taken = new Set<number>();
    const claim = (clusters: number): number => {
      for (let at = 0; at < free.length; at++) {
        let length = 0;
        while (length < clusters && at + length < free.length && free[at + length] === free[at]! + length && !taken.has(free[at + length]!)) length++;
        if (length < clusters) continue;
        for (let k = 0; k < clusters; k++) taken.add(free[at]! + k);
        return free[at]! * clusterSize;
      }
      return -1;
    };
    wave.sort((a, b) => b.from - a.from);
    const moves: Move[] = [];
    for (const move of wave) {
      const to = claim(move.length / clusterSize);
      if (to >= 0 && to < move.from) moves.push({ ...move, to });
    }
    if (moves.length === 0) continue;
    for (const move of moves) await io.write(move.to, await io.read(move.from, move.length));
    await io.flush();
    for (const move of moves) {
      const pointer = new Uint8Array(8);
      new DataView(pointer.buffer).setBigUint64(0, BigInt(move.to), true);
      await io.write(move.pointer, pointer);
    }
    await io.flush();
    moved += moves.length;
    await image.reload();
  }
  return moved;
}

/** First byte past every unit the image references, and at least past its header region. */
async function referencedEnd(image: QedImage): Promise<number> {
  let end = image.geometry.headerRegionSize;
  for await (const batch of itemBatches<UnitRun>(image.units())) for (const run of batch) end = Math.max(end, run.hostOffset + run.count * run.unitLength);
  return end;
}
