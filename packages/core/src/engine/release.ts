import { ClusterBitmap } from '../sdk/bitmap.js';
import { alignUp, itemBatches, type BlockIO, type Driver, type Image } from '../sdk/index.js';
import { ReadView } from './view.js';

/**
 * Release: after a conversion's commit, gives the file system back the space of the file that the new image no
 * longer references (old places of relocated clusters, the source's old tables, the source's own unreferenced
 * clusters): those parts become file-system holes (BlockIO.punchHole), and an unreferenced tail past the end the
 * target asked for is cut.
 *
 * What is referenced is what the committed image itself says, read back with its driver: its header region (at
 * the layout's headerOffset), every range of its conversionSource().metadataRanges(), and the host range of every
 * data and zero-allocated extent of its map: the SDK's definition of everything an image references (the one the
 * engine trusts for a source: it never writes there). Everything else is space no reader of the image looks at:
 * for a format with reference counts it is free (qcow2: refcount 0), for one without them a leak or padding. An
 * image with a blocker or a compressed extent is left alone (its description may not say where all its bytes
 * are). Space is released in whole granules of RELEASE_GRANULE bytes that hold no referenced byte.
 *
 * The end of the file is the target's: the cut never goes below the length the target asked for
 * (TargetBuild.fileSize, or the packed end), so a structure a format keeps at the end of the file (VHD's
 * footer) or a length it needs stays; after the engine's own cut the file usually ends there already.
 *
 * Crash safety: the step runs once the commit is durable and the intent record is durably gone (cut off and
 * flushed): nothing of the record or the redo log is needed any more. It changes only bytes no reader of the
 * committed image looks at; a punch is a write of zeros there as far as a reader can tell, and a cut drops only
 * unreferenced bytes, so each one alone, torn, lost or reordered leaves the same valid image. A kill at any point
 * leaves the committed image valid with some space not given back yet. Nothing finishes that later: there is
 * no record, `ic recover` finds nothing to do, and the space simply stays allocated (as it was before this step).
 *
 * Never fails the conversion: a store without punchHole, one that refuses it (no koffi, a file system without
 * holes), the abort signal or an I/O error stop the step, and the report says what was left and why.
 */

/** Bytes of one release granule: a file-system block (4 KiB on the file systems ic runs on). */
export const RELEASE_GRANULE = 4096;

/**
 * Every unreferenced run of at least RELEASE_LONG_RUN bytes is punched, and the first RELEASE_SHORT_RUNS shorter
 * ones; the shorter runs past those stay allocated (counted in bytesLeft without asking the file system). A punch
 * is one system call, and on a file system mounted with online discard it costs a fraction of a millisecond: the
 * old tables of a source scattered between its data clusters (a qcow2 with 4 KiB clusters has one every 2 MiB)
 * would cost seconds for little space, while relocated data comes back in long runs.
 */
export const RELEASE_LONG_RUN = 1024 * 1024;
export const RELEASE_SHORT_RUNS = 256;

export interface ReleaseReport {
  /** Bytes the file system gets back (or, in a plan, would): punched plus cut, counting only allocated space. */
  bytesReleased: number;
  /** Of those, bytes made file-system holes inside the file. */
  bytesPunched: number;
  /** Of those, bytes of the tail cut off (the file's size shrank by at least this). */
  bytesTruncated: number;
  /**
   * Unreferenced allocated bytes left because the store cannot punch holes (no koffi, or a file system without),
   * plus the short runs past the first RELEASE_SHORT_RUNS, counted whole.
   */
  bytesLeft: number;
  /** A dry run's figure is an estimate from the plan. */
  estimated: boolean;
  reason: string;
}

/** Adds [start, end) to `bits`, whatever of it is there already (ranges may share a granule). */
function orRange(bits: ClusterBitmap, start: number, end: number): void {
  while (start < end) {
    const clash = bits.addRange(start, end);
    if (clash < 0) return;
    if (clash > start) bits.addRange(start, clash);
    start = clash + 1;
    while (start < end && bits.has(start)) start++;
  }
}

/** Where the target's header region lies (released never): `length` bytes at `offset`. */
export interface HeaderRegion {
  offset: number;
  length: number;
}

/** The granules of the file the image references, and the first byte past them; a reason when it cannot tell. */
async function referencedGranules(image: Image, header: HeaderRegion, G: number): Promise<{ granules: ClusterBitmap; end: number } | string> {
  if (!image.conversionSource) return `the ${image.format} image does not describe the ranges it references`;
  const description = await image.conversionSource();
  if (description.blockers.length > 0) return `the ${image.format} image uses ${description.blockers[0]!.feature}, so its description may not name every range it references`;
  const granules = new ClusterBitmap();
  let end = 0;
  const mark = (offset: number, length: number) => {
    if (length <= 0) return;
    orRange(granules, Math.floor(offset / G), Math.ceil((offset + length) / G));
    end = Math.max(end, offset + length);
  };
  mark(header.offset, header.length);
  mark(0, description.headerRegionSize ?? 0);
  for await (const batch of itemBatches(description.metadataRanges())) for (const range of batch) mark(range.offset, range.length);
  for await (const batch of itemBatches(description.map?.() ?? image.map())) {
    for (const extent of batch) {
      if (extent.kind === 'data' || extent.kind === 'encrypted') mark(extent.hostOffset, extent.length);
      else if (extent.kind === 'zero' && extent.hostOffset !== undefined) mark(extent.hostOffset, extent.length);
      // Bytes stored in a form that does not say where (compressed): nothing can be proved free.
      else if (extent.kind === 'compressed') return `the ${image.format} image holds compressed clusters, whose host ranges its map does not give`;
    }
  }
  return { granules, end };
}

/** Parts of [offset, offset + length) that may hold data (all of it when the store cannot tell). */
async function allocated(io: BlockIO, offset: number, length: number): Promise<{ offset: number; length: number }[]> {
  if (length <= 0) return [];
  if (!io.dataRanges) return [{ offset, length }];
  return io.dataRanges(offset, length);
}

function total(ranges: readonly { length: number }[]): number {
  let sum = 0;
  for (const range of ranges) sum += range.length;
  return sum;
}

/** Whole unreferenced granule runs [start, end) in bytes, below `limit` granules. */
function unreferencedRuns(granules: ClusterBitmap, limit: number, G: number): [number, number][] {
  const out: [number, number][] = [];
  let cursor = 0;
  for (const [start, end] of granules.runs()) {
    if (start >= limit) break;
    if (start > cursor) out.push([cursor * G, start * G]);
    cursor = Math.max(cursor, end);
  }
  if (cursor < limit) out.push([cursor * G, limit * G]);
  return out;
}

export interface ReleaseOptions {
  /** The committed image's driver. */
  driver: Driver;
  /** The target layout's header region (TargetLayout.headerOffset and headerRegionSize). */
  header: HeaderRegion;
  /** The image's clusters: a cut file ends on one of their boundaries (or where it ended before). */
  clusterSize: number;
  /** The file length the target asked for (TargetBuild.fileSize, or the packed end): the cut never goes below it. */
  targetEnd: number;
  signal?: AbortSignal;
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Releases the unreferenced space of the committed image in `io` (see the top). Ends with a flush when it
 * changed anything. Never throws for what it changes (see the top): the report says what was left.
 */
export async function releaseUnreferenced(io: BlockIO, options: ReleaseOptions): Promise<ReleaseReport> {
  const G = RELEASE_GRANULE;
  const fileSize = await io.size();
  let referenced: Awaited<ReturnType<typeof referencedGranules>>;
  try {
    const image = await options.driver.open(new ReadView(io, fileSize));
    try {
      referenced = await referencedGranules(image, options.header, G);
    } finally {
      await image.close();
    }
  } catch (error) {
    // The conversion was verified before the commit; a description that fails now releases nothing, loudly.
    referenced = `the committed ${options.driver.name} image could not be described (${messageOf(error)})`;
  }
  if (typeof referenced === 'string') return { bytesReleased: 0, bytesPunched: 0, bytesTruncated: 0, bytesLeft: 0, estimated: false, reason: `nothing released: ${referenced}` };
  // The tail past the last referenced byte and past the target's end is cut, at a cluster boundary.
  const cut = Math.min(fileSize, Math.max(alignUp(referenced.end, options.clusterSize), options.targetEnd, alignUp(options.header.offset + options.header.length, G)));
  let punched = 0;
  let tail = 0;
  let left = 0;
  /** Why the step stopped punching (undefined while it goes on). */
  let stopped: string | undefined = io.punchHole ? undefined : 'the store cannot punch holes';
  let changed = false;
  let failure: string | undefined;
  let shortRuns = 0;
  let shortLeft = 0;
  try {
    for (const [start, end] of unreferencedRuns(referenced.granules, Math.floor(cut / G), G)) {
      if (end - start < RELEASE_LONG_RUN && ++shortRuns > RELEASE_SHORT_RUNS) {
        shortLeft += end - start;
        continue;
      }
      for (const range of await allocated(io, start, end - start)) {
        // Whole granules only (a store's data ranges are block-aligned; the clip keeps a partial one out).
        const from = alignUp(range.offset, G);
        const to = Math.floor((range.offset + range.length) / G) * G;
        if (to <= from) continue;
        if (stopped === undefined && options.signal?.aborted) stopped = 'stopped by the abort signal';
        if (stopped === undefined) {
          changed = true;
          if (await io.punchHole!(from, to - from)) {
            punched += to - from;
            continue;
          }
          // A store that cannot punch here will not elsewhere: the rest is counted, not tried.
          stopped = 'the store cannot punch holes here (no fallocate PUNCH_HOLE: koffi is not installed, or the file system has no holes)';
        }
        left += to - from;
      }
    }
    if (cut < fileSize && !options.signal?.aborted) {
      const cutBytes = total(await allocated(io, cut, fileSize - cut));
      changed = true;
      await io.truncate(cut);
      tail = cutBytes;
    }
    if (changed) await io.flush();
  } catch (error) {
    // The committed image is valid whatever part of the step reached the disk; the conversion stands.
    failure = `stopped by an I/O error, the image is valid and some unreferenced space stays allocated (${messageOf(error)})`;
  }
  left += shortLeft;
  const reason =
    failure ??
    (stopped !== undefined && left > 0
      ? `unreferenced space left allocated: ${stopped}`
      : shortLeft > 0
        ? `space the new image does not reference given back to the file system, except ${shortLeft} bytes in runs shorter than ${RELEASE_LONG_RUN} bytes past the first ${RELEASE_SHORT_RUNS} (one system call each)`
        : punched + tail > 0
        ? 'space the new image does not reference given back to the file system'
        : 'nothing unreferenced held space');
  return { bytesReleased: punched + tail, bytesPunched: punched, bytesTruncated: tail, bytesLeft: left, estimated: false, reason };
}

/**
 * A dry run's estimate: the allocated bytes of the old file past the target's header region, less the kept
 * clusters (and what the target writes beside each, `keptPrefix`), are what the committed image will not
 * reference; the new space past the old file is the target's own.
 */
export async function estimateRelease(io: BlockIO, fileSizeBefore: number, headerRegionSize: number, keptBytes: number): Promise<ReleaseReport> {
  const G = RELEASE_GRANULE;
  const from = Math.min(fileSizeBefore, alignUp(headerRegionSize, G));
  const held = total(await allocated(io, from, fileSizeBefore - from));
  const bytes = Math.max(0, held - keptBytes);
  const canPunch = io.punchHole !== undefined;
  return {
    bytesReleased: canPunch ? bytes : 0,
    bytesPunched: canPunch ? bytes : 0,
    bytesTruncated: 0,
    bytesLeft: canPunch ? 0 : bytes,
    estimated: true,
    reason: canPunch ? 'the old places of relocated clusters and the old metadata would be given back to the file system (where it can punch holes: koffi and a file system with holes)' : 'the store cannot punch holes: the old places would stay allocated',
  };
}
