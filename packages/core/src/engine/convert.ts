import { ClusterBitmap } from '../sdk/bitmap.js';
import {
  alignDown,
  alignUp,
  extentBatches,
  hasCapability,
  IcError,
  isAllZero,
  isIcError,
  itemBatches,
  type BlockIO,
  type ConversionOptions,
  type ConversionSource,
  type Driver,
  type Extent,
  type Image,
  type InPlaceTarget,
  type MetadataWriter,
  type TargetBuild,
} from '../sdk/index.js';
import { AppendAllocator, SpaceCursor } from './allocator.js';
import { COPY_CHUNK, RelocationCopier } from './copy.js';
import type { ConversionPhase, ConversionReport, ConvertInPlaceRequest } from './convert-types.js';
import { MappingDigest } from './digest.js';
import { candidateClusterSizes, chooseGeometry, GeometryCandidate, type CandidateCost, type GeometryChoice } from './geometry.js';
import { zeroStaleHeaderBytes } from './host-ranges.js';
import {
  encodeRecordStart,
  identityDigest,
  inspectInterrupted,
  logCapacityFor,
  logOffsetOf,
  MAX_HEAD_LENGTH,
  readIntent,
  recordBlock,
  rollBack,
  transitionalSector,
  writeNextSlot,
  type FoundIntent,
  type IntentRecord,
  type PackMode,
  type RecordBlock,
} from './intent.js';
import { CountingIO } from './memory-io.js';
import { HostOccupancy } from './occupancy.js';
import { packImage, type PackReport } from './pack.js';
import { applyDeferred, deferredCapacity, DeferredOverlay } from './deferred.js';
import { emptyDecision, PlacementRuntime } from './placement.js';
import { MappingPlanner, type PlanStats, type Relocation } from './planner.js';
import { ReadView } from './view.js';
import { ExtentCache } from './extent-cache.js';
import { estimateRelease, releaseUnreferenced } from './release.js';

/** Source extents kept between the two walks (25 bytes each: at most 50 MiB). */
const EXTENT_CACHE_BUDGET = 2 * 1024 * 1024;

/** The commit sector: writes of one aligned 512-byte sector are taken as atomic (reliability.md R2). */
export const SECTOR_SIZE = 512;

type Step = (phase: ConversionPhase, done: number, total: number) => void;

function refuse(sourceName: string, targetName: string, reason: string): IcError {
  return new IcError('UNSUPPORTED', `cannot convert ${sourceName} to ${targetName} in place: ${reason}`);
}

/** How the engine reads the source map: what it keeps of zero runs, and the padding of an odd-sized disk. */
interface SourceView {
  image: Image;
  description: ConversionSource;
  options: ConversionOptions;
  hasBacking: boolean;
  holesReadZero: boolean;
  /**
   * Whole clusters of the source's zero-reading holes are kept as data clusters where they are (the planner's
   * holesAsData): chosen for a target that counts unreferenced clusters as leaks when packing would move too much.
   */
  holesAsData?: boolean;
  /** With --zero-scan: source clusters found to hold only zeros (filled by the first pass, read by the second). */
  zeroClusters?: ClusterBitmap;
}

/**
 * The source map as the planner needs it, in batches. A source may end mid-sector (a raw file of odd size): the
 * target's virtual size is whole sectors, and the padding reads as zeros. Without a backing file, zero runs are
 * planned as unallocated, except raw holes (zero runs whose host range reads as zeros), which keep their host
 * range so that a cluster mixing them with data can stay in place. `visit` sees every extent as the driver
 * gave it (the survey records the host ranges it references).
 */
async function* plannedExtents(view: SourceView, visit?: (extent: Extent) => void): AsyncGenerator<Extent[]> {
  const { virtualSize } = view.options;
  let mappedEnd = 0;
  for await (const batch of extentBatches(view.description.map?.() ?? view.image.map())) {
    const out: Extent[] = [];
    for (const extent of batch) {
      visit?.(extent);
      mappedEnd = extent.guestOffset + extent.length;
      if (extent.kind === 'zero' && !view.hasBacking && !(view.holesReadZero && extent.hostOffset !== undefined)) {
        out.push({ kind: 'unallocated', guestOffset: extent.guestOffset, length: extent.length });
      } else if (extent.kind === 'data' && view.zeroClusters) {
        splitZeroClusters(view, extent, out);
      } else out.push(extent);
    }
    yield out;
  }
  if (mappedEnd < virtualSize && virtualSize - mappedEnd < SECTOR_SIZE) yield [{ kind: 'unallocated', guestOffset: mappedEnd, length: virtualSize - mappedEnd }];
}

/** Splits a data extent at the source's cluster boundaries and plans its all-zero clusters as empty. */
function splitZeroClusters(view: SourceView, extent: Extent & { kind: 'data' }, out: Extent[]): void {
  const clusterSize = view.options.clusterSize;
  const empty = (guestOffset: number, length: number): Extent =>
    view.hasBacking ? { kind: 'zero', guestOffset, length } : { kind: 'unallocated', guestOffset, length };
  const end = extent.guestOffset + extent.length;
  for (let guest = extent.guestOffset; guest < end; ) {
    const next = Math.min(end, alignDown(guest, clusterSize) + clusterSize);
    const whole = guest % clusterSize === 0 && (next % clusterSize === 0 || next === view.options.virtualSize);
    const piece = whole && view.zeroClusters!.has(guest / clusterSize) ? empty(guest, next - guest) : { kind: 'data' as const, guestOffset: guest, length: next - guest, hostOffset: extent.hostOffset + (guest - extent.guestOffset) };
    const last = out[out.length - 1];
    if (last && last.kind === piece.kind && last.guestOffset + last.length === guest && (piece.kind !== 'data' || (last.kind === 'data' && last.hostOffset + last.length === piece.hostOffset))) last.length += piece.length;
    else out.push(piece);
    guest = next;
  }
}

/** --zero-scan: reads every data cluster once (large reads) and records the all-zero ones. */
async function scanZeroClusters(io: BlockIO, view: SourceView, signal: AbortSignal | undefined): Promise<ClusterBitmap> {
  const zero = new ClusterBitmap();
  const clusterSize = view.options.clusterSize;
  for await (const batch of extentBatches(view.description.map?.() ?? view.image.map())) {
    for (const extent of batch) {
      if (extent.kind !== 'data') continue;
      const end = extent.guestOffset + extent.length;
      let guest = alignUp(extent.guestOffset, clusterSize);
      while (guest < end) {
        throwIfAborted(signal, 'scan');
        const chunkEnd = Math.min(end, guest + alignDown(COPY_CHUNK, clusterSize) || guest + clusterSize);
        const bytes = await io.read(extent.hostOffset + (guest - extent.guestOffset), chunkEnd - guest);
        for (let at = 0; at < bytes.length; at += clusterSize) {
          const piece = bytes.subarray(at, Math.min(bytes.length, at + clusterSize));
          const whole = piece.length === clusterSize || guest + at + piece.length === view.options.virtualSize;
          if (whole && isAllZero(piece)) zero.add((guest + at) / clusterSize);
        }
        guest = chunkEnd;
      }
    }
  }
  return zero;
}

function throwIfAborted(signal: AbortSignal | undefined, where: string): void {
  if (signal?.aborted) throw new IcError('INTERRUPTED', `stopped during ${where}`);
}

interface Survey {
  occupancy: HostOccupancy;
  costs: CandidateCost[];
  failures: IcError[];
  spaceStart: number;
  /**
   * Granules of host space the source's data touches, when the target may have to pack a source with
   * zero-reading holes: the holes packing would fill are the rest.
   */
  dataGranules?: { bits: ClusterBitmap; size: number };
}

/**
 * Granule of Survey.dataGranules: the requested cluster size, else the source's (the usual choice), within
 * [4 KiB, 64 KiB] (a bit per 64 KiB is 2 MiB of bitmap for 1 TiB of data).
 */
const holeGranule = (sizes: readonly number[], sourceClusterSize: number): number => Math.max(4096, Math.min(65536, sizes.length === 1 ? sizes[0]! : sourceClusterSize));

/**
 * Pass 1: one walk of the source map and its metadata. Records every host range the source references (and
 * refuses overlaps), and plans every candidate geometry in count mode.
 */
async function survey(
  io: BlockIO,
  request: ConvertInPlaceRequest,
  view: SourceView,
  fileSizeBefore: number,
  step: Step,
  cache: ExtentCache,
): Promise<Survey> {
  const { source, target } = request;
  const factory = target.inPlace!;
  const format = source.name;
  const occupancy = new HostOccupancy(Math.min(65536, Math.max(512, view.options.clusterSize)), format);
  for await (const batch of itemBatches(view.description.metadataRanges())) {
    for (const range of batch) occupancy.add(range.offset, range.length, range.kind);
  }
  // Ranges of the source's metadata come first; the map's host ranges follow while the candidates plan.
  const sizes = candidateClusterSizes(factory, view.options.clusterSize, request.targetOptions ?? {});
  const backingInfo = request.openOptions?.backing?.info();
  const plannerOptions = {
    virtualSize: view.options.virtualSize,
    hasBacking: view.hasBacking,
    zeroHostRangesReadAsZero: view.holesReadZero,
    zeroAsUnallocated: !view.hasBacking,
    holesAsData: view.holesAsData === true,
  };
  const dataGranules = mayReferenceHoles(request, view) && !view.holesAsData ? { bits: new ClusterBitmap(), size: holeGranule(sizes, view.options.clusterSize) } : undefined;
  // The space for relocations and metadata starts past the file and past everything referenced; the survey
  // knows the latter only at its end, so candidates plan with the file's end and the engine re-checks below.
  const provisionalStart = fileSizeBefore;
  const candidates = sizes.map(
    (clusterSize) =>
      new GeometryCandidate(
        clusterSize,
        factory.create({ source: view.options, clusterSize, options: request.targetOptions ?? {}, ...(backingInfo ? { backingInfo } : {}) }),
        plannerOptions,
        provisionalStart,
      ),
  );
  let mapped = 0;
  const visit = (extent: Extent) => {
    if (extent.kind === 'compressed' || extent.kind === 'encrypted') {
      throw refuse(source.name, target.name, `${extent.kind} clusters (guest offset ${extent.guestOffset}) cannot be reused in place; use qemu-img convert`);
    }
    if (extent.kind === 'data') {
      occupancy.add(extent.hostOffset, extent.length, 'data');
      if (dataGranules) dataGranules.bits.addRange(Math.floor(extent.hostOffset / dataGranules.size), Math.ceil((extent.hostOffset + extent.length) / dataGranules.size));
    } else if (extent.kind === 'zero' && extent.hostOffset !== undefined) occupancy.add(extent.hostOffset, extent.length, 'zero');
  };
  for await (const batch of plannedExtents(view, visit)) {
    throwIfAborted(request.signal, 'planning');
    for (const extent of batch) {
      for (const candidate of candidates) candidate.push(extent);
      cache.add(extent);
      mapped = extent.guestOffset + extent.length;
    }
    step('plan', mapped, view.options.virtualSize);
  }
  occupancy.finish();
  const spaceStart = Math.max(fileSizeBefore, occupancy.end);
  const costs: CandidateCost[] = [];
  const failures: IcError[] = [];
  for (const candidate of candidates) {
    const stats = candidate.finish(occupancy, fileSizeBefore);
    if (!stats) {
      failures.push(candidate.failure!);
      continue;
    }
    const metadataBytes = candidate.target.estimate(candidate.summary(view.options.virtualSize)).metadataBytes;
    costs.push({ candidate, stats, metadataBytes, ioBytes: 2 * stats.bytesRelocated + metadataBytes });
  }
  return { occupancy, costs, failures, spaceStart, ...(dataGranules ? { dataGranules } : {}) };
}

/**
 * Whether the conversion may keep the source's holes as data clusters, if its target counts unreferenced
 * clusters as leaks (known once a geometry is chosen): 'auto' packing (which may find the moves too costly), a
 * source whose holes read as zeros where they are, and no backing file (an empty cluster and a zero one read
 * the same).
 */
function mayReferenceHoles(request: ConvertInPlaceRequest, view: SourceView): boolean {
  return (request.compact ?? 'auto') === 'auto' && view.holesReadZero && !view.hasBacking;
}

/**
 * Bytes packing would move after a conversion that leaves the source's holes empty, estimated from the survey:
 * every hole below the packed end (past the target's header region) takes one unit from above it. Holes are
 * counted in granules the data does not touch (more than the target's clusters when those are larger).
 */
function estimatedPackBytes(granules: { bits: ClusterBitmap; size: number }, headerRegionSize: number, keptAndRelocated: number, metadataBytes: number, end: number): number {
  const packedEnd = Math.min(end, headerRegionSize + keptAndRelocated + metadataBytes);
  const first = Math.ceil(headerRegionSize / granules.size);
  const last = Math.floor(packedEnd / granules.size);
  if (last <= first) return 0;
  return (last - first - granules.bits.count(first, last)) * granules.size;
}

/** Writes target metadata after checking it lies in the target's own allocations, merging adjacent writes. */
/**
 * The metadata writer gathers a target's consecutive writes into one write of up to this many bytes: large enough
 * that the count of writes does not matter (128 for 128 MiB of tables), small enough to stay out of the peak RSS.
 */
const METADATA_WRITE_CHUNK = 1024 * 1024;

class CheckedWriter implements MetadataWriter {
  private buffer = new Uint8Array(0);
  private start = 0;
  private length = 0;
  bytes = 0;

  constructor(
    private readonly io: BlockIO,
    private readonly space: AppendAllocator,
    private readonly name: string,
    private readonly placement: PlacementRuntime,
  ) {}

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    if (!this.space.owns(offset, data.length)) {
      // A prefixed block's prefix: now where the bytes are free, at the commit where the source still uses them.
      const claim = this.placement.claim(offset, data);
      if (claim === 'deferred') {
        this.bytes += data.length;
        return;
      }
      if (claim !== 'now') throw new IcError('INTERNAL', `${this.name} target wanted to write ${data.length} bytes at ${offset}, outside the space it was given`);
    }
    this.bytes += data.length;
    if (this.length > 0 && offset === this.start + this.length && this.length + data.length <= METADATA_WRITE_CHUNK) {
      if (this.buffer.length < this.length + data.length) {
        const grown = new Uint8Array(Math.min(METADATA_WRITE_CHUNK, Math.max(2 * this.buffer.length, this.length + data.length)));
        grown.set(this.buffer.subarray(0, this.length));
        this.buffer = grown;
      }
      this.buffer.set(data, this.length);
      this.length += data.length;
      return;
    }
    await this.flush();
    if (data.length >= METADATA_WRITE_CHUNK) {
      await this.io.write(offset, data);
      return;
    }
    if (this.buffer.length < data.length) this.buffer = new Uint8Array(Math.max(data.length, 65536));
    this.buffer.set(data, 0);
    this.start = offset;
    this.length = data.length;
  }

  async flush(): Promise<void> {
    if (this.length === 0) return;
    await this.io.write(this.start, this.buffer.subarray(0, this.length));
    this.length = 0;
  }
}

interface Built {
  build: TargetBuild;
  stats: PlanStats;
  /** Clusters of the source's holes kept as data (SourceView.holesAsData). */
  holeClustersKept: number;
  digest: string;
  metadataBytes: number;
  relocatedBytes: number;
  /** The end of the last data cluster of the target mapping. */
  dataEnd: number;
  placement: PlacementRuntime;
}

/**
 * Pass 2: walks the source map again at the chosen geometry; relocated clusters are copied as the plan meets
 * them and the target consumes the mapping as it is made, writing its tables as they fill.
 */
async function build(
  io: BlockIO,
  request: ConvertInPlaceRequest,
  view: SourceView,
  target: InPlaceTarget,
  placement: PlacementRuntime,
  cursor: SpaceCursor,
  step: Step,
  cache: ExtentCache | undefined,
): Promise<Built> {
  const layout = target.layout;
  const C = layout.clusterSize;
  const digest = new MappingDigest(layout.placement?.kind === 'identity', !view.hasBacking);
  const copier = new RelocationCopier(io, C);
  const relocations: Relocation[] = [];
  let output: Extent[] = [];
  let relocatedBytes = 0;
  let dataEnd = 0;
  const planner = new MappingPlanner(
    {
      virtualSize: view.options.virtualSize,
      layout,
      hasBacking: view.hasBacking,
      zeroHostRangesReadAsZero: view.holesReadZero,
      zeroAsUnallocated: !view.hasBacking,
      holesAsData: view.holesAsData === true,
    },
    {
      place: (length, guestOffset) => {
        const placed = placement.place(length, guestOffset);
        relocatedBytes += alignUp(Math.min(length, placed.length), C);
        return placed;
      },
      relocation: (relocation) => relocations.push(relocation),
      keeps: (guestOffset, hostOffset) => placement.keeps(guestOffset, hostOffset),
      // Identity: an empty range must read as zeros in place; the survey refused any inside the old file, and
      // past it the file reads as zeros.
      extent: (extent) => {
        if (extent.kind === 'data') {
          dataEnd = Math.max(dataEnd, extent.hostOffset + alignUp(extent.length, C));
          // Kept clusters (two guest clusters never share one: the survey refused overlapping host ranges).
          if (extent.hostOffset < cursor.start) placement.kept(extent.hostOffset, extent.length);
        }
        digest.push(extent);
        output.push(extent);
      },
    },
  );
  let planned = 0;
  const drain = async () => {
    for (const relocation of relocations.splice(0)) await copier.add(relocation);
  };
  async function* mapping(): AsyncGenerator<readonly Extent[]> {
    for await (const batch of cache ? cache.batches() : plannedExtents(view)) {
      throwIfAborted(request.signal, 'the build');
      for (const extent of batch) planner.push(extent);
      await drain();
      planned = batch.length > 0 ? batch[batch.length - 1]!.guestOffset + batch[batch.length - 1]!.length : planned;
      step('build', planned, view.options.virtualSize);
      if (output.length > 0) {
        const ready = output;
        output = [];
        yield ready;
      }
    }
    planner.finish();
    await drain();
    await copier.flush();
    if (output.length > 0) yield output;
  }
  const space = new AppendAllocator(cursor, C, undefined, `${request.target.name} metadata`);
  const writer = new CheckedWriter(io, space, request.target.name, placement);
  const built = await target.build(mapping(), space, writer);
  await writer.flush();
  return { build: built, stats: planner.stats, holeClustersKept: planner.holeClustersKept, digest: digest.value(), metadataBytes: writer.bytes, relocatedBytes, dataEnd, placement };
}

/**
 * Opens the result with the target driver, as the commit will leave it (`view`): its map must be the planned one
 * (a digest, so nothing is kept) and, with `check`, its own check clean. A target that packs skips the check here:
 * packing surveys every unit of the image (overlaps are refused there) and leaves nothing unreferenced.
 */
async function verify(target: Driver, expectedDigest: string, virtualSize: number, view: ReadView, check: boolean, identity: boolean, hasBacking: boolean): Promise<{ leaks: number }> {
  const image = await target.open(view);
  try {
    if (image.info().virtualSize !== virtualSize) {
      throw new IcError('INTERNAL', `${target.name}: the converted image has virtual size ${image.info().virtualSize}, expected ${virtualSize}`);
    }
    const digest = new MappingDigest(identity, !hasBacking);
    for await (const batch of extentBatches(image.map())) for (const extent of batch) digest.push(extent);
    const actual = digest.value();
    if (actual !== expectedDigest) {
      throw new IcError('INTERNAL', `${target.name}: the converted image's map differs from the planned one (${actual} vs ${expectedDigest}; starts ${JSON.stringify(digest.head)})`);
    }
    if (!image.check || !check) return { leaks: 0 };
    const report = await image.check();
    if (report.corruptions > 0 || report.checkErrors > 0) {
      throw new IcError('INTERNAL', `${target.name}: the converted image fails its own check: ${report.messages[0] ?? `${report.corruptions} corruptions`}`);
    }
    return { leaks: report.leaks };
  } finally {
    await image.close();
  }
}

/** Packing moves at most this much without being asked, however small the metadata (a small image packs). */
export const PACK_BUDGET_FLOOR = 64 * 1024 * 1024;

/**
 * Bytes packing may move without being asked: twice the metadata the conversion read and wrote (and relocated),
 * at least PACK_BUDGET_FLOOR. Past that, packing would mostly move data (a sparse raw source, say); the leaks are
 * left and the report says so.
 */
function packBudget(occupancy: HostOccupancy, metadataBytes: number, relocatedBytes: number): number {
  return Math.max(PACK_BUDGET_FLOOR, 2 * (occupancy.bytes.metadata + occupancy.bytes.header + metadataBytes + relocatedBytes));
}

/** Log capacity for packing: one sector entry per cluster the packing can move (the source's metadata, the target's, and relocations). */
function packLogCapacity(occupancy: HostOccupancy, metadataBytes: number, relocatedBytes: number, clusterSize: number): number {
  const units = Math.ceil((occupancy.bytes.metadata + occupancy.bytes.header + metadataBytes + relocatedBytes) / clusterSize) + 64;
  return Math.min(16 * 1024 * 1024, logCapacityFor(units));
}

function packReportOf(result: PackReport): NonNullable<ConversionReport['compaction']> {
  return {
    done: result.done,
    unitsMoved: result.unitsMoved,
    bytesMoved: result.bytesMoved,
    bytesPlanned: result.bytesPlanned,
    leaksLeft: result.holesLeft,
    reason: result.reason,
  };
}

/**
 * Converts the image in `request.io` from `request.source`'s format to `request.target`'s, in place.
 *
 * 1. validate: refuse a store another process may use, an interrupted earlier operation, features the target
 *    cannot keep.
 * 2. survey (pass 1): walk the source's metadata and map once; record every referenced host range (overlaps
 *    are corruption), plan every candidate geometry in count mode, pick the cheapest, let the target estimate
 *    its metadata, reserve that much space past the source.
 * 3. record: write the intent record block at the end of the reserved space (slot A: "growing"), flush.
 * 4. build (pass 2): plan again at the chosen geometry, copy relocated clusters, stream the mapping into the
 *    target, which writes its tables as they fill; flush; slot B ("committing": old and new header), flush.
 * 5. commit: the header region's tail (only where the source keeps nothing; else first a transitional marker
 *    in sector 0), flush, sector 0, flush.
 * 6. verify: reopen with the target driver; its map digest must equal the plan's and its check be clean; on a
 *    mismatch the old header region is written back.
 * 7. clean up: zero the rest of the old header in the new header region; pack where the target format counts
 *    unreferenced clusters as leaks; cut the file to its final size, which drops the record.
 * 8. release (release.ts): what the committed image does not reference (old places of relocated clusters, the
 *    source's old tables) becomes file-system holes, and an unreferenced tail is cut.
 * Before the commit any failure (or the abort signal) puts the file back as it was; after it the image is valid
 * in the new format and the error says so (IcError.imageFormat) and that `ic recover` finishes the rest.
 */
export async function convertInPlace(request: ConvertInPlaceRequest): Promise<ConversionReport> {
  const started = performance.now();
  const io = new CountingIO(request.io);
  const { source, target } = request;
  const factory = target.inPlace;
  const step: Step = (phase, done, total) => request.onProgress?.({ phase, done, total });
  if (!hasCapability(source, 'inPlaceSource')) throw refuse(source.name, target.name, `the ${source.name} driver cannot be an in-place source`);
  if (!factory || !hasCapability(target, 'inPlaceTarget')) throw refuse(source.name, target.name, `the ${target.name} driver cannot be an in-place target`);
  if (!request.dryRun) {
    if (!io.writable) throw new IcError('INVALID', `${io.name} is open read-only`);
    if (io.exclusive !== true && !request.allowUnlocked) {
      throw new IcError(
        'LOCKED',
        `${io.name}: refusing to rewrite an image without holding QEMU's locks on it (another process could be using it); open it with locks, or allow unlocked writes explicitly`,
        { path: io.name },
      );
    }
  }
  step('validate', 0, 0);
  if ((await inspectInterrupted(io)) !== 'none') {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: an earlier conversion was interrupted; run \`ic recover ${io.name}\` first`, { path: io.name });
  }
  const fileSizeBefore = await io.size();
  if (fileSizeBefore === 0) throw new IcError('WRONG_FORMAT', `${io.name}: the file is empty`, { path: io.name });

  const image = await source.open(io, request.openOptions);
  let sourceOpen = true;
  const closeSource = async () => {
    if (sourceOpen) {
      sourceOpen = false;
      await image.close().catch(() => undefined);
    }
  };
  try {
    if (!image.conversionSource) throw refuse(source.name, target.name, `the ${source.name} driver does not describe its images for conversion`);
    const description = await image.conversionSource();
    const [blocker] = description.blockers;
    if (blocker) throw refuse(source.name, target.name, `${blocker.feature}: ${blocker.reason}`);
    const options = description.options;
    if (options.backing && request.openOptions?.untrusted) {
      throw new IcError('EXTERNAL_REF', `${io.name}: the image references backing file '${options.backing.name}' (refused in untrusted mode)`);
    }
    const view: SourceView = {
      image,
      description,
      options,
      hasBacking: options.backing !== undefined,
      holesReadZero: description.zeroHostRangesReadAsZero === true,
    };
    if (request.zeroScan) view.zeroClusters = await scanZeroClusters(io, view, request.signal);

    // 2. survey and geometry.
    step('plan', 0, options.virtualSize);
    // The planned source map is kept for the build when it is compact (a few million runs at most).
    let cache = new ExtentCache(EXTENT_CACHE_BUDGET);
    let surveyed = await survey(io, request, view, fileSizeBefore, step, cache);
    const requested = factory.clusterSizeOption !== undefined && typeof request.targetOptions?.[factory.clusterSizeOption] === 'number';
    const choose = (surveyed: Survey) => {
      if (surveyed.costs.length === 0) {
        const [failure] = surveyed.failures;
        throw refuse(source.name, target.name, failure?.message ?? `no cluster size in [${factory.clusterSizes.min}, ${factory.clusterSizes.max}] can hold this image`);
      }
      const geometry: GeometryChoice = chooseGeometry(surveyed.costs, options.clusterSize, requested);
      const chosen = surveyed.costs.find((cost) => cost.candidate.clusterSize === geometry.clusterSize)!;
      const layout = chosen.candidate.target.layout;
      const C = layout.clusterSize;
      // The estimate was made with the file's end as the start of free space; the referenced end may lie further.
      // New space lies past the file, past everything the source references, past the target's header region (a
      // source smaller than that region must not get relocated clusters inside it) and past the clusters a packed
      // or identity target places inside the image.
      const decision = chosen.candidate.decision;
      const headOffset = layout.headerOffset ?? 0;
      const placedEnd =
        layout.placement?.kind === 'packed' && decision ? decision.start + decision.dataClusters * C : layout.placement?.kind === 'identity' ? options.virtualSize : 0;
      const spaceStart = alignUp(Math.max(surveyed.spaceStart, headOffset + layout.headerRegionSize, placedEnd), C);
      const estimate = chosen.candidate.target.estimate({ ...chosen.candidate.summary(options.virtualSize), spaceStart });
      return { geometry, chosen, layout, C, decision, headOffset, spaceStart, estimate };
    };
    let choice = choose(surveyed);
    // A target that counts unreferenced clusters as leaks gets the source's holes packed after the commit; when
    // that would move more than packing may (mostly data: a sparse raw file), the holes are kept as data clusters
    // instead (they read as zeros where they are), which moves nothing. Planned again (one more walk of the map).
    let holesEstimate: { bytes: number; budget: number } | undefined;
    if (surveyed.dataGranules && choice.layout.unreferencedClustersLeak === true && (choice.layout.placement?.kind ?? 'anywhere') === 'anywhere') {
      const { chosen, layout, C, estimate, spaceStart } = choice;
      const bytes = estimatedPackBytes(surveyed.dataGranules, layout.headerRegionSize, (chosen.stats.clustersKept + chosen.stats.clustersRelocated) * C, estimate.metadataBytes, spaceStart);
      const budget = packBudget(surveyed.occupancy, estimate.metadataBytes, chosen.stats.bytesRelocated);
      if (bytes > budget) {
        holesEstimate = { bytes, budget };
        view.holesAsData = true;
        cache = new ExtentCache(EXTENT_CACHE_BUDGET);
        surveyed = await survey(io, request, view, fileSizeBefore, step, cache);
        choice = choose(surveyed);
      }
    }
    const { geometry, chosen, layout, C, decision, headOffset, spaceStart, estimate } = choice;
    const targetImage = chosen.candidate.target;
    // Relocations take whole clusters; one table block of sector alignment (VMDK) may leave up to a cluster of padding.
    const packs = layout.unreferencedClustersLeak === true && (request.compact ?? 'auto') !== 'never';
    // Packing may move one table through the space past the image's end: as much again as the metadata (a hole
    // until then, so it costs nothing on disk).
    const reserved = chosen.candidate.relocationSpace + estimate.metadataBytes * (packs ? 2 : 1) + 2 * C;
    // A packed target's moved clusters whose slot still holds the source's go through scratch space past that.
    const scratchBytes = layout.placement?.kind === 'packed' ? chosen.stats.clustersRelocated * C : 0;
    const limit = spaceStart + reserved + scratchBytes;
    if (limit > layout.maxHostOffset && chosen.candidate.relocationSpace > 0) {
      throw refuse(source.name, target.name, `the relocated clusters would lie past the ${layout.maxHostOffset} bytes a ${target.name} image can address`);
    }
    const headCapacity = alignUp(layout.headerRegionSize, SECTOR_SIZE);
    if (headCapacity > MAX_HEAD_LENGTH) {
      throw refuse(source.name, target.name, `the ${target.name} header region is ${layout.headerRegionSize} bytes; the engine commits at most ${MAX_HEAD_LENGTH}`);
    }
    const deferredBound = chosen.candidate.deferredBound;
    const logCapacity = Math.max(
      packs ? packLogCapacity(surveyed.occupancy, estimate.metadataBytes, chosen.stats.bytesRelocated, C) : 0,
      deferredCapacity(deferredBound.ops, deferredBound.sectors),
    );
    const block = recordBlock(alignUp(limit, C), headCapacity, logCapacity, C);

    const report = (dryRun: boolean, verified: boolean, fileSizeAfter: number, stats: PlanStats, metadataBytes: number, headerBytes: number, commit: ConversionReport['commit']): ConversionReport => ({
      sourceFormat: source.name,
      targetFormat: target.name,
      dryRun,
      virtualSize: options.virtualSize,
      sourceClusterSize: options.clusterSize,
      targetClusterSize: C,
      geometryReason: geometry.reason,
      ...stats,
      metadataBytes,
      headerBytes,
      fileSizeBefore,
      fileSizeAfter,
      spaceReserved: reserved + scratchBytes,
      io: { ...io.stats },
      durationMs: Math.round(performance.now() - started),
      commit,
      verified,
    });

    /** Why the source's holes are kept as data clusters (holesEstimate set). */
    const holesReason = (kept: number, estimated: { bytes: number; budget: number }, verb = 'kept') =>
      `${verb} ${kept} clusters of the source's holes as data clusters where they are (they read as zeros; ` +
      `packing them away would have moved about ${estimated.bytes} bytes, more than the ${estimated.budget} allowed)`;

    if (request.dryRun) {
      await closeSource();
      const prefix = layout.placement?.kind === 'prefixed' ? layout.placement.prefix : 0;
      const release = request.release === false ? undefined : await estimateRelease(io, fileSizeBefore, layout.headerRegionSize, chosen.stats.clustersKept * (C + prefix));
      const planned = { ...report(true, false, Math.max(fileSizeBefore, limit), chosen.stats, estimate.metadataBytes, SECTOR_SIZE, 'none'), ...(release ? { release } : {}) };
      if (!holesEstimate) return planned;
      const kept = chosen.candidate.planner?.holeClustersKept ?? 0;
      return { ...planned, compaction: { done: false, unitsMoved: 0, bytesMoved: 0, bytesPlanned: 0, leaksLeft: 0, holesKept: kept, reason: holesReason(kept, holesEstimate, 'would keep') } };
    }

    // 3. the record block, durably, before anything else is written.
    const record: IntentRecord = {
      state: 'growing',
      identityDigest: await identityDigest(io),
      fileSizeBefore,
      targetFileSize: 0,
      headerRegionSize: layout.headerRegionSize,
      sourceFormat: source.name,
      targetFormat: target.name,
      pack: packs ? ((request.compact ?? 'auto') as PackMode) : 'never',
      packBudget: 0,
      headOffset: 0,
      deferred: false,
      // While growing, the head is the source's sector 0 (recover checks it is still there before cutting).
      oldHead: await io.read(0, SECTOR_SIZE),
      newHead: await io.read(0, SECTOR_SIZE),
    };
    /** 'switching' while the header is being written: the file may hold either header until recover looks. */
    let phase: 'before' | 'switching' | 'after' = 'before';
    let found: FoundIntent = { record, block, slot: 0, sequence: 1 };
    try {
      // Slot A and the trailer, one write; the rest of the block (slots B and C, the log) is a hole of zeros.
      const start = encodeRecordStart(block, record);
      await io.write(start.offset, start.bytes);
      await io.flush();

      // 4. build.
      const scratchStart = alignUp(spaceStart + reserved, C);
      const cursor = new SpaceCursor(spaceStart, scratchBytes > 0 ? scratchStart : block.offset);
      const scratch = new SpaceCursor(scratchStart, block.offset);
      const placement = new PlacementRuntime(layout, decision ?? emptyDecision(), surveyed.occupancy, cursor, scratch, block.logCapacity, fileSizeBefore);
      const built = await build(io, request, view, targetImage, placement, cursor, step, cache.complete ? cache : undefined);
      const header = built.build.header;
      if (header.length === 0 || header.length > layout.headerRegionSize || header.length > headCapacity) {
        throw new IcError('INTERNAL', `${target.name} target header is ${header.length} bytes; its header region is ${layout.headerRegionSize}`);
      }
      const fileSize = built.build.fileSize;
      const lowest = Math.max(built.dataEnd, headOffset + header.length, cursor.end > cursor.start ? cursor.end : 0);
      if (fileSize < lowest || fileSize > cursor.limit) {
        throw new IcError('INTERNAL', `${target.name} target file size ${fileSize} is outside [${lowest}, ${cursor.limit}]`);
      }
      const headLength = alignUp(Math.max(header.length, SECTOR_SIZE), SECTOR_SIZE);
      const newHead = new Uint8Array(headLength);
      newHead.set(header);
      const deferred = built.placement.deferred;
      let commit: ConversionReport['commit'] = 'single-sector';
      if (deferred.count > 0 || surveyed.occupancy.overlaps(headOffset + SECTOR_SIZE, headLength - SECTOR_SIZE)) commit = 'transitional';
      else if (headLength > SECTOR_SIZE) commit = 'tail-then-sector-0';
      if (commit === 'transitional' && headOffset !== 0) {
        throw refuse(source.name, target.name, `the ${target.name} header at ${headOffset} would overwrite bytes the source still uses`);
      }
      if (deferred.count > 0) await io.write(logOffsetOf(block), deferred.encode());

      // 5. verify before anything is switched: the image as the commit will leave it (new header, deferred
      // writes) must map exactly as planned and pass its own check (unless packing follows, which surveys it).
      step('verify', 0, 1);
      const overlay = deferred.count > 0 ? new DeferredOverlay(io, deferred.ops()) : undefined;
      const leaks = (await verify(target, built.digest, options.virtualSize, new ReadView(io, fileSize, newHead, headOffset, overlay), !packs, layout.placement?.kind === 'identity', view.hasBacking)).leaks;
      step('verify', 1, 1);

      // The metadata and slot B share one flush: slot B without the metadata durable still rolls back (the
      // header never changed), and nothing is switched before that flush.
      found = await writeNextSlot(io, found, {
        ...record,
        state: 'committing',
        targetFileSize: fileSize,
        packBudget: record.pack === 'auto' ? packBudget(surveyed.occupancy, built.metadataBytes, built.relocatedBytes) : 0,
        headOffset,
        deferred: deferred.count > 0,
        oldHead: await io.read(headOffset, headLength),
        newHead,
      });
      await io.flush();
      await closeSource();
      throwIfAborted(request.signal, 'the build');

      // 6. commit.
      step('commit', 0, 1);
      if (commit === 'transitional') {
        await io.write(0, transitionalSector(block.offset));
        await io.flush();
      }
      if (deferred.count > 0) {
        // From here on the source is gone: recovery rolls forward.
        phase = 'switching';
        await applyDeferred(io, deferred.ops());
        await io.flush();
      }
      if (headLength > SECTOR_SIZE) {
        await io.write(headOffset + SECTOR_SIZE, newHead.subarray(SECTOR_SIZE));
        await io.flush();
      }
      phase = 'switching';
      await io.write(headOffset, newHead.subarray(0, SECTOR_SIZE));
      await io.flush();
      phase = 'after';
      step('commit', 1, 1);

      // 7. clean up, pack, cut to the final size (the record goes with it).
      step('cleanup', 0, 1);
      await zeroStaleHeaderBytes(io, headOffset + headLength, Math.min(headOffset + layout.headerRegionSize, fileSize));
      let compaction: ConversionReport['compaction'];
      /** Packing filled every hole and cut the file: every cluster is referenced, release would walk for nothing. */
      let packedTight = false;
      if (packs) {
        // From here on packing may change header fields: the record stops comparing heads. (A torn slot leaves
        // the committing one, whose new head is still in place: both roll forward.)
        found = await writeNextSlot(io, found, { ...found.record, state: 'committed' });
        await io.flush();
        step('pack', 0, 0);
        const result = await packImage(io, target, {
          log: { offset: logOffsetOf(block), capacity: block.logCapacity },
          imageEnd: fileSize,
          limit: block.offset,
          scratch: { offset: alignUp(fileSize, C), length: block.offset - alignUp(fileSize, C) },
          ...(found.record.packBudget > 0 ? { maxBytes: found.record.packBudget } : {}),
          ...(request.signal ? { signal: request.signal } : {}),
          onProgress: (done, total) => step('pack', done, total),
        });
        compaction = packReportOf(result);
        if (holesEstimate) {
          compaction.holesKept = built.holeClustersKept;
          compaction.reason = `${holesReason(built.holeClustersKept, holesEstimate)}; ${result.reason}`;
        }
        if (!result.done) {
          await io.truncate(Math.max(fileSize, result.referencedEnd));
          await io.flush();
        }
        packedTight = result.done && result.holesLeft === 0;
      } else {
        if (layout.unreferencedClustersLeak && leaks > 0) {
          compaction = { done: false, unitsMoved: 0, bytesMoved: 0, bytesPlanned: 0, leaksLeft: leaks, reason: 'packing was turned off (--compact never)' };
        }
        await io.truncate(fileSize);
        await io.flush();
      }
      // 8. give the file system back what the committed image does not reference (release.ts); the record is
      // durably gone by now (cut off and flushed above).
      const release =
        request.release === false
          ? undefined
          : packedTight
            ? { bytesReleased: 0, bytesPunched: 0, bytesTruncated: 0, bytesLeft: 0, estimated: false, reason: 'nothing to release: packing left every cluster of the file referenced' }
            : await releaseUnreferenced(io, {
                driver: target,
                header: { offset: headOffset, length: layout.headerRegionSize },
                clusterSize: C,
                targetEnd: fileSize,
                ...(request.signal ? { signal: request.signal } : {}),
              });
      step('cleanup', 1, 1);
      const final = { ...report(false, true, await io.size(), built.stats, built.metadataBytes, headLength, commit), ...(release ? { release } : {}) };
      return compaction ? { ...final, compaction } : final;
    } catch (error) {
      if (phase === 'after') throw afterCommit(error, io.name, source.name, target.name);
      if (phase === 'switching') {
        throw new IcError(isIcError(error) ? error.code : 'IO', `${io.name}: failed while switching the header (${error instanceof Error ? error.message : String(error)}); run \`ic recover ${io.name}\`, which finishes or undoes the conversion`, {
          path: io.name,
          cause: error,
        });
      }
      const undone = await undoGrowth(io, fileSizeBefore, found);
      throw beforeCommit(error, io.name, source.name, undone);
    }
  } finally {
    await closeSource();
  }
}

/**
 * Before the commit the file is put back as it was: nothing at offset 0 changed, so cutting it is enough. False
 * when the store failed on the way (a full disk that refuses even the rollback's writes): the record stays and
 * says what `ic recover` must do.
 */
async function undoGrowth(io: BlockIO, fileSizeBefore: number, found: FoundIntent): Promise<boolean> {
  try {
    if (found.record.state === 'committing' && found.record.oldHead.length > 0) {
      // The transitional marker or the tail may have been written: put the old header region back first.
      const head = await io.read(found.record.headOffset, found.record.oldHead.length);
      if (!equalBytes(head, found.record.oldHead)) {
        await rollBack(io, found.record);
        return true;
      }
    }
    await io.truncate(fileSizeBefore);
    await io.flush();
    return true;
  } catch {
    return false;
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function beforeCommit(error: unknown, path: string, sourceFormat: string, undone: boolean): unknown {
  if (!isIcError(error)) return error;
  if (!undone) {
    return new IcError(
      error.code,
      `${error.message}; the conversion stopped before the switch but the file could not be put back yet: run \`ic recover ${path}\`, which gives back the ${sourceFormat} image as it was`,
      { path, cause: error },
    );
  }
  if (error.code === 'INTERRUPTED') {
    // No imageFormat: the format did not change (callers say so in their words).
    return new IcError('INTERRUPTED', `${path}: stopped before the switch, and the file is back as it was (${sourceFormat})`, { path, cause: error });
  }
  return error;
}

function afterCommit(error: unknown, path: string, sourceFormat: string, targetFormat: string): IcError {
  const code = isIcError(error) ? error.code : 'IO';
  const reason = error instanceof Error ? error.message : String(error);
  const what = code === 'INTERRUPTED' ? 'stopped after the switch' : `failed after the switch (${reason})`;
  return new IcError(
    code,
    `${path}: ${what}: the image is now ${targetFormat} (no longer ${sourceFormat}) and its data is intact; run \`ic recover ${path}\` to finish the clean-up`,
    { path, cause: error, imageFormat: targetFormat },
  );
}

export { readIntent, recordBlock, type RecordBlock };
