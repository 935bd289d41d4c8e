import { IcError, type BlockIO } from '@ic/core/sdk';
import { scanTables } from './check.js';
import { FORMAT, tableOffsetProblem } from './header.js';
import type { QedImage } from './image.js';
import { repairImage } from './repair.js';
import { decodeEntry, ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_ZERO, readTableEntries } from './tables.js';

/** Table bytes are rewritten in whole sectors: a sector is the unit a disk writes all or nothing. */
const SECTOR = 512;

/** Largest single write of zeros. */
const ZERO_WRITE = 4 * 1024 * 1024;

/**
 * Makes [from, to) read as zeros, durably: zeros written over the part inside the file (unreferenced bytes may be
 * there), the file extended over the rest (which reads as zeros, a hole where the file system has them), flushed.
 */
async function zeroFill(io: BlockIO, from: number, to: number): Promise<void> {
  const fileSize = await io.size();
  const written = Math.min(to, fileSize);
  const zeros = new Uint8Array(Math.max(0, Math.min(ZERO_WRITE, written - from)));
  for (let at = from; at < written; at += zeros.length) await io.write(at, at + zeros.length <= written ? zeros : zeros.subarray(0, written - at));
  if (to > fileSize) await io.truncate(to);
  await io.flush();
}

/**
 * Number of L2 entries equal to 1 (zero clusters), in every L2 table the L1 names (past the disk's end too). An L1
 * entry naming no valid table is skipped, not refused: that is check's to report (and need_check's repair to
 * clear), and the feature list must still come out for such an image.
 */
export async function countZeroEntries(image: QedImage): Promise<number> {
  const { io, geometry, header } = image;
  let count = 0;
  for await (const l1Chunk of readTableEntries(io, header.l1TableOffset, 0, geometry.tableEntries)) {
    if (l1Chunk.allZero) continue;
    for (let i = 0; i < l1Chunk.count; i++) {
      const l2Offset = decodeEntry(l1Chunk.view, i);
      if (l2Offset === ENTRY_UNALLOCATED || tableOffsetProblem(geometry, l2Offset)) continue;
      for await (const chunk of readTableEntries(io, l2Offset, 0, geometry.tableEntries)) {
        if (chunk.allZero) continue;
        for (let j = 0; j < chunk.count; j++) {
          if (chunk.view.getUint32(j * ENTRY_SIZE + 4, true) === 0 && chunk.view.getUint32(j * ENTRY_SIZE, true) === ENTRY_ZERO) count++;
        }
      }
    }
  }
  return count;
}

/**
 * Rewrites every zero entry (L2 value 1, which a reader without zero-cluster support takes for data at byte 1) as
 * an entry any QED reader understands, reading the same:
 *  - without a backing file: 0, unallocated, which reads as zeros too. Old and new value read alike, so the
 *    table writes need no order; each is one write of the sectors of a table chunk that change, then a flush.
 *  - with a backing file: the offset of a new cluster of zeros (0 would expose the backing file). The clusters go
 *    right after the last referenced cluster (space nothing references), are zeroed (written, or past the end of
 *    the file made by extending it) and flushed before any entry names them, then the entries switch (sector writes, flushed). Killed before the switches,
 *    the new clusters are unreferenced space (leaks); killed among them, some of them are. A rerun frees such
 *    space first (the repair of check -r, which packs and truncates crash-safely), then allocates again.
 * Refused (nothing written) while the need-check flag is set or the tables are damaged.
 */
export async function expandZeroEntries(image: QedImage): Promise<{ count: number; written: number; leaksFreed: boolean }> {
  const { io } = image;
  if (!io.writable) throw new IcError('INVALID', `${FORMAT}: demote needs the image opened for writing`, { format: FORMAT });
  if (image.needCheck) {
    throw new IcError('UNSUPPORTED', `${FORMAT}: zero clusters are not expanded while the need-check flag is set: demote need_check too (or run check -r all) first`, { format: FORMAT });
  }
  let context = { io, header: image.header, geometry: image.geometry };
  let scan = await scanTables(context, { collect: true });
  if (scan.corruptions > 0 || scan.checkErrors > 0) {
    throw new IcError('CORRUPT', `${FORMAT}: ${scan.firstProblem?.message ?? 'the tables could not be read'}; zero clusters are not expanded in a damaged image (nothing was written)`, { format: FORMAT });
  }
  const count = await countZeroEntries(image);
  if (count === 0) return { count: 0, written: 0, leaksFreed: false };
  const { clusterSize, headerRegionSize } = image.geometry;
  let leaksFreed = false;
  let next = 0;
  if (image.backing) {
    // Holes below the last referenced cluster (left by an interrupted run, or by anything else) are packed away
    // first, so the new clusters always go to one place and a rerun leaves no leak behind.
    const holes = (scan.repair!.referencedEnd - headerRegionSize) / clusterSize - scan.repair!.used.size;
    if (holes > 0) {
      await repairImage(image);
      leaksFreed = true;
      context = { io, header: image.header, geometry: image.geometry };
      scan = await scanTables(context, { collect: true });
    }
    next = scan.repair!.referencedEnd;
    await zeroFill(io, next, next + count * clusterSize);
  }
  let switched = 0;
  for (const table of await image.l2Tables()) {
    for await (const chunk of readTableEntries(io, table.offset, 0, image.geometry.tableEntries)) {
      if (chunk.allZero) continue;
      const { view } = chunk;
      let firstByte = -1;
      let lastByte = -1;
      for (let j = 0; j < chunk.count; j++) {
        if (view.getUint32(j * ENTRY_SIZE + 4, true) !== 0 || view.getUint32(j * ENTRY_SIZE, true) !== ENTRY_ZERO) continue;
        const value = image.backing ? next + switched * clusterSize : 0;
        view.setBigUint64(j * ENTRY_SIZE, BigInt(value), true);
        switched++;
        if (firstByte < 0) firstByte = j * ENTRY_SIZE;
        lastByte = j * ENTRY_SIZE + ENTRY_SIZE;
      }
      if (firstByte < 0) continue;
      const from = Math.floor(firstByte / SECTOR) * SECTOR;
      const to = Math.min(chunk.count * ENTRY_SIZE, Math.ceil(lastByte / SECTOR) * SECTOR);
      await io.write(table.offset + chunk.firstIndex * ENTRY_SIZE + from, new Uint8Array(view.buffer, view.byteOffset + from, to - from));
    }
  }
  await io.flush();
  await image.reload();
  return { count, written: image.backing ? count : 0, leaksFreed };
}
