import { AppendAllocator } from './allocator.js';
import { alignDown, alignUp, isAllZero, isPowerOfTwo } from '../sdk/index.js';
import { IcError, isIcError } from '../sdk/index.js';
import { assertCoverage, collectExtents, mergeExtents, pushExtent, type Extent, type HostRange } from '../sdk/index.js';
import { hasCapability, type ConversionOptions, type Driver, type Image, type InPlaceTarget, type InPlaceTargetFactory, type OptionValues, type TargetBuild } from '../sdk/index.js';
import { planMapping, type Plan } from './planner.js';
import { referencedRanges, zeroStaleHeaderBytes } from './host-ranges.js';
import { compactImage } from './compact.js';
import type { BlockIO } from '../sdk/index.js';
import { CountingIO } from './memory-io.js';
import { encodeIntent, identityDigest, inspectInterrupted, intentBlockLength, rollBack, transitionalSector, type IntentRecord } from './intent.js';
import type { ConversionPhase, ConversionReport, ConvertInPlaceRequest } from './convert-types.js';

/** The commit sector: writes of one aligned 512-byte sector are taken as atomic (reliability.md R2). */
export const SECTOR_SIZE = 512;

/** Chunk size for copying relocated clusters. */
const COPY_CHUNK = 8 * 1024 * 1024;

function overlapsAny(ranges: readonly HostRange[], offset: number, length: number): HostRange | undefined {
  return ranges.find((r) => r.offset < offset + length && offset < r.offset + r.length);
}

export interface GeometryChoice {
  clusterSize: number;
  reason: string;
}

/**
 * Picks the target cluster size: the user's -o value when given; otherwise the source's own cluster size
 * when the target supports it and nothing has to move for alignment; otherwise, among nearby sizes the
 * target supports, the one that relocates the fewest bytes.
 */
export function chooseGeometry(
  factory: InPlaceTargetFactory,
  source: ConversionOptions,
  extents: readonly Extent[],
  options: OptionValues,
  planFor: (clusterSize: number) => Plan | undefined,
): GeometryChoice {
  const { min, max } = factory.clusterSizes;
  const requested = factory.clusterSizeOption ? options[factory.clusterSizeOption] : undefined;
  if (typeof requested === 'number') {
    if (!isPowerOfTwo(requested) || requested < min || requested > max) {
      throw new IcError('INVALID', `${factory.clusterSizeOption}=${requested} is not a power of two in [${min}, ${max}]`);
    }
    return { clusterSize: requested, reason: `requested with -o ${factory.clusterSizeOption}` };
  }
  const sourceSize = source.clusterSize;
  const candidates = new Set<number>();
  const clamped = Math.min(max, Math.max(min, sourceSize));
  candidates.add(clamped);
  for (let size = clamped / 4; size <= clamped * 4; size *= 2) if (size >= min && size <= max && isPowerOfTwo(size)) candidates.add(size);

  const sourcePlan = sourceSize === clamped ? planFor(sourceSize) : undefined;
  if (sourcePlan && sourcePlan.relocations.every((r) => r.reason === 'header-region')) {
    return { clusterSize: sourceSize, reason: `the source's cluster size; every data cluster outside the new header region stays in place` };
  }
  let best: { size: number; bytes: number } | undefined;
  for (const size of [...candidates].sort((a, b) => b - a)) {
    const plan = size === sourceSize && sourcePlan ? sourcePlan : planFor(size);
    if (!plan) continue;
    const bytes = plan.stats.bytesRelocated;
    const closer = (a: number, b: number) => Math.abs(Math.log2(a / sourceSize)) < Math.abs(Math.log2(b / sourceSize));
    if (!best || bytes < best.bytes || (bytes === best.bytes && closer(size, best.size))) best = { size, bytes };
  }
  if (!best) throw new IcError('UNSUPPORTED', `no cluster size in [${min}, ${max}] can hold this image`);
  const reason =
    best.size === sourceSize
      ? `the source's cluster size (${best.bytes} bytes must move)`
      : `moves the fewest bytes (${best.bytes}) among ${[...candidates].sort((a, b) => a - b).join(', ')}; the source uses ${sourceSize}`;
  return { clusterSize: best.size, reason };
}

/**
 * The source map as the planner needs it. A source may end mid-sector (a raw file of odd size): the
 * target's virtual size is whole sectors, and the padding reads as zeros. A source that declares no zero
 * extents (and has no backing file) has its zero runs (raw holes) planned as unallocated clusters.
 */
async function sourceMapForConversion(image: Image, options: ConversionOptions, keepHoleHosts: boolean): Promise<Extent[]> {
  const extents = await collectExtents(image.map());
  const mappedEnd = extents.reduce((end, e) => Math.max(end, e.guestOffset + e.length), 0);
  if (mappedEnd < options.virtualSize && options.virtualSize - mappedEnd < SECTOR_SIZE) {
    extents.push({ kind: 'unallocated', guestOffset: mappedEnd, length: options.virtualSize - mappedEnd });
  }
  if (options.zeroExtents || options.backing) return extents;
  // Keep the host range of zero runs that really read as zeros there (raw holes): a cluster mixing them
  // with data can then stay in place. Whole zero clusters still become unallocated in the planner.
  return mergeExtents(
    extents.map((e) => (e.kind === 'zero' && !(keepHoleHosts && e.hostOffset !== undefined) ? { kind: 'unallocated', guestOffset: e.guestOffset, length: e.length } : e)),
  );
}

/** Splits data extents at the source's cluster boundaries and turns all-zero clusters into empty ones. */
async function scanForZeroClusters(image: Image, extents: readonly Extent[], options: ConversionOptions): Promise<Extent[]> {
  const clusterSize = options.clusterSize;
  const out: Extent[] = [];
  const empty = (guestOffset: number, length: number): Extent =>
    options.backing ? { kind: 'zero', guestOffset, length } : { kind: 'unallocated', guestOffset, length };
  for (const extent of extents) {
    if (extent.kind !== 'data') {
      pushExtent(out, extent);
      continue;
    }
    const end = extent.guestOffset + extent.length;
    for (let guest = extent.guestOffset; guest < end; ) {
      const next = Math.min(end, alignDown(guest, clusterSize) + clusterSize);
      const bytes = await image.read(guest, next - guest);
      const whole = guest % clusterSize === 0 && (next % clusterSize === 0 || next === options.virtualSize);
      if (whole && isAllZero(bytes)) pushExtent(out, empty(guest, next - guest));
      else pushExtent(out, { kind: 'data', guestOffset: guest, length: next - guest, hostOffset: extent.hostOffset + (guest - extent.guestOffset) });
      guest = next;
    }
  }
  return out;
}

interface PreparedConversion {
  sourceImage: Image;
  extents: Extent[];
  referenced: HostRange[];
  options: ConversionOptions;
  target: InPlaceTarget;
  geometry: GeometryChoice;
  plan: Plan;
  allocator: AppendAllocator;
  build: TargetBuild;
  fileSizeBefore: number;
  commit: ConversionReport['commit'];
}

function refuse(sourceName: string, targetName: string, reason: string): IcError {
  return new IcError('UNSUPPORTED', `cannot convert ${sourceName} to ${targetName} in place: ${reason}`);
}

async function prepare(request: ConvertInPlaceRequest, step: (phase: ConversionPhase, done: number, total: number) => void): Promise<PreparedConversion> {
  let opened: Image | undefined;
  try {
    return await prepareOpened(request, step, (image) => (opened = image));
  } catch (error) {
    // A refused conversion must not leave the source (and any files it opened) open.
    await opened?.close().catch(() => undefined);
    throw error;
  }
}

async function prepareOpened(
  request: ConvertInPlaceRequest,
  step: (phase: ConversionPhase, done: number, total: number) => void,
  track: (image: Image) => void,
): Promise<PreparedConversion> {
  const { io, source, target } = request;
  const factory = target.inPlace;
  if (!hasCapability(source, 'inPlaceSource')) throw refuse(source.name, target.name, `the ${source.name} driver cannot be an in-place source`);
  if (!factory || !hasCapability(target, 'inPlaceTarget')) throw refuse(source.name, target.name, `the ${target.name} driver cannot be an in-place target`);

  step('validate', 0, 0);
  const interrupted = await inspectInterrupted(io);
  if (interrupted !== 'none') {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: an earlier conversion was interrupted; run \`ic recover ${io.name}\` first`, { path: io.name });
  }
  const sourceImage = await source.open(io, request.openOptions);
  track(sourceImage);
  if (!sourceImage.conversionSource) throw refuse(source.name, target.name, `the ${source.name} driver does not describe its images for conversion`);
  const description = await sourceImage.conversionSource();
  const [blocker] = description.blockers;
  if (blocker) throw refuse(source.name, target.name, `${blocker.feature}: ${blocker.reason}`);
  const options = description.options;
  if (options.backing && request.openOptions?.untrusted) {
    throw new IcError('EXTERNAL_REF', `${io.name}: the image references backing file '${options.backing.name}' (refused in untrusted mode)`);
  }

  const holesReadZero = description.zeroHostRangesReadAsZero === true;
  const sourceExtents = await sourceMapForConversion(sourceImage, options, holesReadZero);
  // The zero scan changes the plan only: until the switch the source still references every one of its clusters.
  const extents = request.zeroScan ? await scanForZeroClusters(sourceImage, sourceExtents, options) : sourceExtents;
  assertCoverage(extents, options.virtualSize, `${source.name} map`);
  for (const extent of extents) {
    if (extent.kind === 'compressed' || extent.kind === 'encrypted') {
      throw refuse(source.name, target.name, `${extent.kind} clusters (guest offset ${extent.guestOffset}) cannot be reused in place; use qemu-img convert`);
    }
  }
  const referenced = referencedRanges(description.metadataRanges, sourceExtents, source.name);
  const fileSizeBefore = await io.size();
  const referencedEnd = referenced.reduce((end, r) => Math.max(end, r.offset + r.length), 0);
  const hasBacking = options.backing !== undefined;
  const planFlags = { zeroHostRangesReadAsZero: holesReadZero, zeroAsUnallocated: !options.zeroExtents && !hasBacking };

  step('plan', 0, 0);
  const backingInfo = request.openOptions?.backing?.info();
  const targetFor = (clusterSize: number) =>
    factory.create({ source: options, clusterSize, options: request.targetOptions ?? {}, ...(backingInfo ? { backingInfo } : {}) });
  const startFor = (clusterSize: number) => alignUp(Math.max(fileSizeBefore, referencedEnd), clusterSize);
  const planFor = (clusterSize: number): Plan | undefined => {
    const layout = targetFor(clusterSize).layout;
    try {
      return planMapping({ ...planFlags, extents, virtualSize: options.virtualSize, layout, hasBacking, space: new AppendAllocator(startFor(clusterSize), clusterSize) });
    } catch (error) {
      if (isIcError(error) && error.code === 'UNSUPPORTED') return undefined;
      throw error;
    }
  };
  const geometry = chooseGeometry(factory, options, extents, request.targetOptions ?? {}, planFor);
  const targetImage = targetFor(geometry.clusterSize);
  const [problem] = targetImage.problems;
  if (problem) throw refuse(source.name, target.name, problem);
  const layout = targetImage.layout;
  if (layout.clusterSize !== geometry.clusterSize) throw new IcError('INTERNAL', `${target.name} target ignored the cluster size ${geometry.clusterSize}`);

  const allocator = new AppendAllocator(startFor(layout.clusterSize), layout.clusterSize, layout.maxHostOffset);
  const plan = planMapping({ ...planFlags, extents, virtualSize: options.virtualSize, layout, hasBacking, space: allocator });

  step('build', 0, 0);
  const build = await targetImage.build(plan.mapping, allocator);
  for (const write of build.writes) {
    if (!allocator.owns(write.offset, write.data.length)) {
      throw new IcError('INTERNAL', `${target.name} target wanted to write ${write.data.length} bytes at ${write.offset}, outside the space it was given`);
    }
  }
  if (build.header.length === 0 || build.header.length > layout.headerRegionSize) {
    throw new IcError('INTERNAL', `${target.name} target header is ${build.header.length} bytes; its header region is ${layout.headerRegionSize}`);
  }
  if (build.fileSize < allocator.end) throw new IcError('INTERNAL', `${target.name} target file size ${build.fileSize} is below its allocations (${allocator.end})`);

  // The header tail (past sector 0) is written before sector 0. Where it would overwrite something the source
  // still uses, sector 0 first gets the transitional marker, so that no reader takes the file for either format.
  let commit: ConversionReport['commit'] = 'single-sector';
  if (build.header.length > SECTOR_SIZE) {
    commit = overlapsAny(referenced, SECTOR_SIZE, build.header.length - SECTOR_SIZE) ? 'transitional' : 'tail-then-sector-0';
  }
  return { sourceImage, extents, referenced, options, target: targetImage, geometry, plan, allocator, build, fileSizeBefore, commit };
}

async function copyRelocations(io: BlockIO, prepared: PreparedConversion, step: (phase: ConversionPhase, done: number, total: number) => void): Promise<void> {
  const { plan, sourceImage } = prepared;
  const clusterSize = prepared.target.layout.clusterSize;
  const total = plan.stats.bytesRelocated;
  let done = 0;
  // Consecutive relocations of consecutive guest clusters go to consecutive host clusters: copy them in large runs.
  let i = 0;
  while (i < plan.relocations.length) {
    const first = plan.relocations[i]!;
    let j = i + 1;
    let runLength = first.length;
    while (j < plan.relocations.length && runLength < COPY_CHUNK) {
      const next = plan.relocations[j]!;
      const previous = plan.relocations[j - 1]!;
      if (next.guestOffset !== previous.guestOffset + clusterSize || next.hostOffset !== previous.hostOffset + clusterSize || previous.length !== clusterSize) break;
      runLength += next.length;
      j++;
    }
    const data = await sourceImage.read(first.guestOffset, runLength);
    const padded = new Uint8Array(alignUp(runLength, clusterSize));
    padded.set(data);
    await io.write(first.hostOffset, padded);
    done += runLength;
    step('relocate', done, total);
    i = j;
  }
}

async function verify(io: BlockIO, target: Driver, prepared: PreparedConversion): Promise<void> {
  const image = await target.open(io);
  try {
    const actual = mergeExtents(await collectExtents(image.map()));
    const expected = mergeExtents(prepared.plan.mapping);
    const same =
      actual.length === expected.length &&
      actual.every((extent, i) => {
        const other = expected[i]!;
        const host = (e: Extent) => ('hostOffset' in e ? e.hostOffset : undefined);
        return extent.kind === other.kind && extent.guestOffset === other.guestOffset && extent.length === other.length && host(extent) === host(other);
      });
    if (!same) throw new IcError('INTERNAL', `${target.name}: the converted image's map differs from the planned one`);
    if (image.info().virtualSize !== prepared.options.virtualSize) {
      throw new IcError('INTERNAL', `${target.name}: the converted image has virtual size ${image.info().virtualSize}, expected ${prepared.options.virtualSize}`);
    }
    if (image.check) {
      const report = await image.check();
      if (report.corruptions > 0 || report.checkErrors > 0) {
        throw new IcError('INTERNAL', `${target.name}: the converted image fails its own check: ${report.messages[0] ?? `${report.corruptions} corruptions`}`);
      }
    }
  } finally {
    await image.close();
  }
}

/**
 * Converts the image in `request.io` from `request.source`'s format to `request.target`'s, in place.
 *
 * 1. validate: open the source read-only, refuse features the target cannot keep, check every reference.
 * 2. plan: per target cluster keep / relocate / zero / unallocated; all new space lies past everything the
 *    source references, so the source stays a valid image until the commit.
 * 3. build: copy relocated clusters, write the target's metadata, extend the file, flush.
 * 4. commit: write the header region's tail (only where the source keeps nothing), flush, then sector 0, flush.
 * 5. verify: reopen with the target driver and compare its map with the plan; on a mismatch put the old
 *    sector 0 back (the source is still intact underneath) and fail.
 * 6. clean up: zero what is left of the old header in the target's header region.
 */
export async function convertInPlace(request: ConvertInPlaceRequest): Promise<ConversionReport> {
  const started = performance.now();
  const io = new CountingIO(request.io);
  const { target } = request;
  const step = (phase: ConversionPhase, done: number, total: number) => request.onProgress?.({ phase, done, total });
  const prepared = await prepare({ ...request, io }, step);
  const { plan, build, geometry, options } = prepared;
  const layout = prepared.target.layout;

  const report = (dryRun: boolean, verified: boolean, fileSizeAfter: number): ConversionReport => ({
    sourceFormat: request.source.name,
    targetFormat: target.name,
    dryRun,
    virtualSize: options.virtualSize,
    sourceClusterSize: options.clusterSize,
    targetClusterSize: layout.clusterSize,
    geometryReason: geometry.reason,
    ...plan.stats,
    metadataBytes: build.writes.reduce((sum, w) => sum + w.data.length, 0),
    headerBytes: Math.max(build.header.length, SECTOR_SIZE),
    fileSizeBefore: prepared.fileSizeBefore,
    fileSizeAfter,
    io: { ...io.stats },
    durationMs: Math.round(performance.now() - started),
    commit: dryRun ? 'none' : prepared.commit,
    verified,
  });

  if (request.dryRun) {
    await prepared.sourceImage.close();
    return report(true, false, Math.max(prepared.fileSizeBefore, build.fileSize));
  }
  if (!io.writable) throw new IcError('INVALID', `${io.name} is open read-only`);

  // 3. build: first the intent record, durably, at the end of the file-to-be; then relocated clusters and
  // metadata. Nothing here touches a byte the source references.
  const headLength = alignUp(Math.max(build.header.length, SECTOR_SIZE), SECTOR_SIZE);
  const newHead = new Uint8Array(headLength);
  newHead.set(build.header);
  const intent: IntentRecord = {
    identityDigest: await identityDigest(io),
    fileSizeBefore: prepared.fileSizeBefore,
    targetFileSize: build.fileSize,
    headerRegionSize: layout.headerRegionSize,
    sourceFormat: request.source.name,
    targetFormat: target.name,
    oldHead: await io.read(0, headLength),
    newHead,
  };
  const recordOffset = alignUp(Math.max(build.fileSize, prepared.allocator.end), layout.clusterSize);
  const blockLength = intentBlockLength(headLength, SECTOR_SIZE);
  await io.write(recordOffset, encodeIntent(intent, recordOffset, blockLength));
  await io.flush();
  await copyRelocations(io, prepared, step);
  let written = 0;
  for (const write of build.writes) {
    await io.write(write.offset, write.data);
    written += write.data.length;
    step('build', written, 0);
  }
  await io.flush();
  await prepared.sourceImage.close();

  // 4. commit.
  step('commit', 0, 1);
  if (prepared.commit === 'transitional') {
    await io.write(0, transitionalSector(recordOffset));
    await io.flush();
  }
  if (headLength > SECTOR_SIZE) {
    await io.write(SECTOR_SIZE, newHead.subarray(SECTOR_SIZE));
    await io.flush();
  }
  await io.write(0, newHead.subarray(0, SECTOR_SIZE));
  await io.flush();
  step('commit', 1, 1);

  // 5. verify, rolling back to the untouched source on a mismatch.
  step('verify', 0, 1);
  try {
    await verify(io, target, prepared);
  } catch (error) {
    await rollBack(io, intent);
    throw error;
  }
  step('verify', 1, 1);

  // 6. clean up: zero the rest of the old header inside the new header region, then drop the intent record.
  step('cleanup', 0, 1);
  const fileSizeAfter = build.fileSize;
  await zeroStaleHeaderBytes(io, headLength, Math.min(layout.headerRegionSize, fileSizeAfter));
  await io.flush();
  await io.truncate(fileSizeAfter);
  await io.flush();
  step('cleanup', 1, 1);

  // 7. pack: move units into the holes the old metadata left, each move crash-safe on its own.
  const compaction = await packAfterConversion(io, target, request.compact ?? 'auto', prepared);
  const final = report(false, true, await io.size());
  return compaction ? { ...final, compaction } : final;
}

/** Bytes that compaction may move without being asked: a few times the metadata involved, at least 16 MiB. */
function compactionBudget(prepared: PreparedConversion): number {
  const sourceMetadata = prepared.referenced.filter((r) => !r.role.startsWith('data of') && !r.role.startsWith('zero-allocated')).reduce((sum, r) => sum + r.length, 0);
  const targetMetadata = prepared.build.writes.reduce((sum, w) => sum + w.data.length, 0);
  return Math.max(16 * 1024 * 1024, 4 * (sourceMetadata + targetMetadata + prepared.plan.stats.bytesRelocated));
}

async function packAfterConversion(io: BlockIO, target: Driver, mode: 'auto' | 'always' | 'never', prepared: PreparedConversion): Promise<ConversionReport['compaction']> {
  if (mode === 'never') return undefined;
  const probe = await target.open(io);
  const movable = typeof probe.movableUnits === 'function';
  await probe.close();
  if (!movable) return undefined;
  const budget = mode === 'always' ? undefined : compactionBudget(prepared);
  const result = await compactImage(io, target, budget === undefined ? {} : { maxBytes: budget });
  const reason = result.done
    ? result.unitsMoved === 0
      ? 'no holes to fill'
      : `filled the holes left by the old metadata (${result.unitsMoved} units moved)`
    : `skipped: packing would move ${result.bytesPlanned} bytes (more than ${budget}, mostly data); run with compaction forced to pack anyway`;
  return { done: result.done, unitsMoved: result.unitsMoved, bytesMoved: result.bytesMoved, bytesPlanned: result.bytesPlanned, reason };
}
