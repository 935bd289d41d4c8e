/**
 * The in-place matrix: a driver's images converted to another driver's format and back, judged by the content they
 * read as, both drivers' check(), and — where qemu knows the format — by qemu itself after it wrote to the result
 * (expectUsableWithQemu). An identity target (raw) joins it as a target: each driver's shapes converted to it with
 * convertToIdentity and back (identityPairCases). Generated from a list of drivers, so adding a driver grows it with no edit.
 */
import { describe, expect, it } from 'vitest';
import {
  alignUp,
  assertCoverage,
  collectExtents,
  convertInPlace,
  convertToIdentity,
  hasCapability,
  isIcError,
  MemoryIO,
  Registry,
  type BlockIO,
  type ConversionReport,
  type Driver,
  type Extent,
  type Image,
  type ImageContent,
  type OpenOptions,
} from '@ic/core';
import { compareGuestBytes, contentFromImageContent, type GuestContent } from './crash/content.js';
import { buildShape, copyToMemory } from './images.js';
import { assertNoProblems, imageMemberProblems } from './members.js';
import { expectUsableWithQemu } from './qemu/oracle.js';
import { qemuKnowsFormat } from './qemu/tools.js';
import type { LoadedSample } from './samples.js';
import { shapes as allShapes, type Shape } from './shapes.js';
import { coverageOf, covers, type Coverage } from './coverage.js';

/**
 * One test of the kit: a name and the function that throws when the driver fails it. It resolves to `{ skipped }`
 * when the case does not apply after all (a target that refuses the image up front, having written nothing).
 */
export interface KitCase {
  name: string;
  run: () => Promise<void | { skipped: string }>;
}

/**
 * How long one kit case may take by default: conversions of a 6 GiB sparse disk with 4 KiB clusters and the qemu
 * checks after them take seconds alone and minutes on a loaded 2-core machine.
 */
export const KIT_CASE_TIMEOUT = 300_000;

/** Registers kit cases as vitest tests; a case that does not apply is reported as skipped, with its reason. */
export function registerCases(
  cases: readonly KitCase[],
  name: (kitCase: KitCase) => string = (kitCase) => kitCase.name,
  timeout = KIT_CASE_TIMEOUT,
  knownFailure: (kitCase: KitCase) => string | undefined = () => undefined,
): void {
  for (const kitCase of cases) {
    const known = knownFailure(kitCase);
    // A known failure must still fail (it.fails): once fixed, the marker has to go.
    (known ? it.fails : it)(
      known ? `${name(kitCase)} [known failure: ${known}]` : name(kitCase),
      async (context) => {
        const result = await kitCase.run();
        if (result && 'skipped' in result) context.skip(result.skipped);
      },
      timeout,
    );
  }
}

export interface MatrixOptions {
  /** Cluster sizes to build the shapes with (each pair runs the sizes both drivers support). Default 4 KiB and 64 KiB. */
  clusterSizes?: readonly number[];
  /** Cases known to fail, by full case name ("a -> b -> a > shape, N-byte clusters"): the reason, or undefined. */
  knownFailures?: (caseName: string) => string | undefined;
  shapes?: readonly Shape[];
  /** Milliseconds one case may take (default KIT_CASE_TIMEOUT). */
  timeout?: number;
  /**
   * After each conversion, let qemu-io write to the result and judge it with qemu-img check and compare, for formats
   * qemu knows (default true; qemu-img missing then fails). false leaves qemu out.
   */
  qemu?: boolean;
  /**
   * 'full' (default, or IC_KIT_COVERAGE): every shape at every cluster size both drivers support. 'covering': each
   * shape at one of those sizes, rotating per pair, so every shape and every size still meet each pair.
   */
  coverage?: Coverage;
  /** describeMatrix: only every `of`-th ordered pair starting at `index`, so that the pairs can be spread over files. */
  part?: { index: number; of: number };
}

export function supportsClusterSize(driver: Driver, clusterSize: number): boolean {
  const range = driver.inPlace?.clusterSizes;
  return range !== undefined && clusterSize >= range.min && clusterSize <= range.max;
}

/** Whether images of `driver` can be converted away in place and built by the kit (writeImage needs a target). */
export function canBuildAndConvert(driver: Driver): boolean {
  return hasCapability(driver, 'inPlaceSource') && hasCapability(driver, 'inPlaceTarget') && driver.inPlace !== undefined;
}

/**
 * Whether `driver` is a target whose images are the guest's bytes alone (capability identityTarget, e.g. raw):
 * other drivers' images are turned into it by the engine's convertToIdentity, the call `ic convert-inplace IMAGE
 * raw` makes, rather than by convertInPlace. The matrix pairs every driver that can build and convert with it.
 */
export function isIdentityTarget(driver: Driver): boolean {
  return hasCapability(driver, 'identityTarget');
}

/** The unreferenced clusters a conversion says it left (packing not done, with its reason in the report). */
function leaksLeft(report: ConversionReport): number {
  return report.compaction?.leaksLeft ?? 0;
}

/**
 * Data clusters an 'anywhere' target must move: those that lie (partly) below `limit` in the file (the target's
 * header region) and those whose host offset is not a multiple of the target's host alignment. A source whose
 * zero host ranges read as zeros (ConversionSource.zeroHostRangesReadAsZero: a raw file's holes) has data extents
 * that start and end anywhere while the cluster around them stays where it is: there the clusters are counted
 * once each, at the host offset of their start.
 */
function clustersMoving(map: readonly Extent[], limit: number, clusterSize: number, alignment = clusterSize, holesReadAsZero = false): number {
  let count = 0;
  const counted = new Set<number>();
  for (const extent of map) {
    if (extent.kind !== 'data') continue;
    if (!holesReadAsZero) {
      for (let at = 0; at < extent.length; at += clusterSize) if (extent.hostOffset + at < limit || (extent.hostOffset + at) % alignment !== 0) count++;
      continue;
    }
    for (let guest = Math.floor(extent.guestOffset / clusterSize) * clusterSize; guest < extent.guestOffset + extent.length; guest += clusterSize) {
      const host = extent.hostOffset + (guest - extent.guestOffset);
      if (host < limit || host % alignment !== 0) counted.add(guest);
    }
  }
  return count + counted.size;
}

/** Guest clusters (of `clusterSize`) whose data lies at the same host offset in both maps: what stayed in place. */
function clustersInPlace(before: readonly Extent[], after: readonly Extent[], clusterSize: number): number {
  const hosts = new Map<number, number>();
  for (const extent of before) {
    if (extent.kind !== 'data') continue;
    for (let at = 0; at < extent.length; at += clusterSize) if ((extent.guestOffset + at) % clusterSize === 0) hosts.set(extent.guestOffset + at, extent.hostOffset + at);
  }
  let count = 0;
  for (const extent of after) {
    if (extent.kind !== 'data') continue;
    for (let at = 0; at < extent.length; at += clusterSize) if ((extent.guestOffset + at) % clusterSize === 0 && hosts.get(extent.guestOffset + at) === extent.hostOffset + at) count++;
  }
  return count;
}

/**
 * What the kit expects a conversion to have moved. An 'anywhere' target at the source's cluster size keeps every
 * aligned data cluster past its header region, exactly. A target with a placement of its own (packed, prefixed)
 * keeps what its rule allows, which depends on the engine's choices (the packed run's start, which prefixed
 * blocks stay) and on the geometry it picks: the kit then checks that the report tells the truth, i.e. the
 * clusters it says it kept are the ones still at their host offsets (when no packing moved data afterwards).
 */
function expectRelocations(
  target: Driver,
  request: Parameters<NonNullable<Driver['inPlace']>['create']>[0],
  report: ConversionReport,
  before: readonly Extent[],
  after: readonly Extent[],
  what: string,
  holesReadAsZero = false,
): void {
  const layout = target.inPlace!.create({ ...request, clusterSize: report.targetClusterSize }).layout;
  const kind = layout.placement?.kind ?? 'anywhere';
  if (kind === 'identity') {
    // Nothing can move: a conversion that needs a move is refused before anything is written.
    expect(report.clustersRelocated, `${what}: an identity layout moves nothing`).toBe(0);
    return;
  }
  if (kind === 'anywhere') {
    expect(report.targetClusterSize, `${what}: the source's cluster size`).toBe(request.clusterSize);
    // A target that needs a data cluster (TargetLayout.needsDataCluster) gets one of zeros when the image has none.
    const zeroFilled = layout.needsDataCluster === true && !before.some((extent) => extent.kind === 'data') ? 1 : 0;
    expect(report.clustersRelocated, `${what}: only data clusters under the header region or off the host alignment move`).toBe(
      clustersMoving(before, layout.headerRegionSize, request.clusterSize, layout.hostAlignment ?? request.clusterSize, holesReadAsZero) + zeroFilled,
    );
    return;
  }
  const range = target.inPlace!.clusterSizes;
  expect(report.targetClusterSize >= range.min && report.targetClusterSize <= range.max, `${what}: cluster size ${report.targetClusterSize} in the target's range`).toBe(true);
  if ((report.compaction?.unitsMoved ?? 0) === 0) expect(clustersInPlace(before, after, report.targetClusterSize), `${what}: the clusters reported kept are in place`).toBe(report.clustersKept);
}

/**
 * What a converted image must still be: its content, its backing name, a clean check and agreeing members. Leaks
 * must be none but those the conversion itself reported leaving (the kit converts with compact: 'always', so only
 * an image the engine says it could not pack, and why, may keep any).
 */
export async function expectConvertedImage(
  driver: Driver,
  io: BlockIO,
  expected: GuestContent,
  openOptions: OpenOptions | undefined,
  what: string,
  reportedLeaks = 0,
): Promise<Extent[]> {
  const image = await driver.open(io, openOptions);
  try {
    assertNoProblems(imageMemberProblems(driver, image), what);
    const info = image.info();
    // A raw source is padded to whole sectors for conversion; nothing else may change the size.
    expect([expected.virtualSize, alignUp(expected.virtualSize, 512)], `${what}: virtual size`).toContain(info.virtualSize);
    const map = await collectExtents(image.map());
    assertCoverage(map, info.virtualSize, `${what} map`);
    const difference = await compareGuestBytes(image, expected, openOptions?.backing ? { backing: openOptions.backing, limit: expected.virtualSize } : { limit: expected.virtualSize });
    expect(difference, `${what}: guest content`).toBeUndefined();
    if (expected.backingName !== undefined) expect(info.backing?.name, `${what}: backing name`).toBe(expected.backingName);
    if (hasCapability(driver, 'check') && image.check) {
      const report = await image.check();
      expect(report.corruptions, `${what}: check: ${report.messages.join('; ')}`).toBe(0);
      expect(report.checkErrors, `${what}: check errors`).toBe(0);
      // Exactly the leaks the conversion reported it left (ConversionReport.compaction.leaksLeft), none unreported.
      expect(report.leaks, `${what}: leaks: ${report.messages.join('; ')}`).toBe(reportedLeaks);
    }
    return map;
  } finally {
    await image.close();
  }
}

interface Converted {
  io: MemoryIO;
  expected: GuestContent;
  openOptions: OpenOptions | undefined;
  files: readonly { name: string; io: BlockIO }[];
  /** The backing file's format, when the image names one (qemu must know it too). */
  backingFormat: string | undefined;
  qemu: boolean;
}

/** The qemu usability check where qemu can open the image and its backing file; a converted image is never touched. */
async function expectUsable(driver: Driver, map: readonly Extent[], state: Converted, what: string, reportedLeaks: number): Promise<void> {
  if (!state.qemu || !qemuKnowsFormat(driver.name)) return;
  if (state.backingFormat !== undefined && !qemuKnowsFormat(state.backingFormat)) return;
  const image = await driver.open(state.io, state.openOptions);
  const clusterSize = image.info().clusterSize ?? 65536;
  await image.close();
  await expectUsableWithQemu({ io: state.io, format: driver.name, map, clusterSize, expected: state.expected, files: state.files, what, reportedLeaks });
}

/**
 * A sample converted to `target` and, when the sample's driver can be a target, back: content, checks and qemu's
 * verdict after each step. A target that cannot represent the sample must refuse before writing anything.
 */
export function samplePairCase(driver: Driver, sample: LoadedSample, target: Driver, options: { qemu?: boolean } = {}): KitCase {
  const back = hasCapability(driver, 'inPlaceTarget') && hasCapability(target, 'inPlaceSource');
  return {
    name: `sample "${sample.name}" -> ${target.name}${back ? ` -> ${driver.name}` : ''}: same content, clean checks${options.qemu === false ? '' : ', usable by qemu'}`,
    run: async () => {
      const io = await copyToMemory(sample.pristine);
      const openOptions = sample.openOptions;
      const state: Converted = {
        io,
        expected: sample.expected,
        openOptions,
        files: sample.files,
        backingFormat: await backingFormatOf(driver, io, openOptions),
        qemu: options.qemu !== false,
      };
      const pristine = await copyToMemory(io);
      const forward = await convertInPlace({ io, source: driver, target, compact: 'always', ...(openOptions ? { openOptions } : {}) }).catch((error: unknown) => error);
      if (isIcError(forward) && forward.code === 'UNSUPPORTED') {
        // The target cannot represent this image: refused up front, and the file is as it was.
        expect(await sameBytes(io, pristine), `${sample.name}: a refused conversion wrote nothing`).toBe(true);
        return { skipped: `${target.name} refuses this image up front (nothing written): ${forward.message}` };
      }
      if (forward instanceof Error) throw forward;
      expect((forward as { verified: boolean }).verified, 'verified by the engine').toBe(true);
      const leaksForward = leaksLeft(forward as ConversionReport);
      const converted = await expectConvertedImage(target, io, sample.expected, openOptions, `${sample.name} as ${target.name}`, leaksForward);
      await expectUsable(target, converted, state, `${sample.name} as ${target.name}`, leaksForward);
      if (!back) return;
      const report = await convertInPlace({ io, source: target, target: driver, compact: 'always', ...(openOptions ? { openOptions } : {}) });
      expect(report.verified).toBe(true);
      const returned = await expectConvertedImage(driver, io, sample.expected, openOptions, `${sample.name} back as ${driver.name}`, leaksLeft(report));
      await expectUsable(driver, returned, state, `${sample.name} back as ${driver.name}`, leaksLeft(report));
    },
  };
}

/** The format of the backing file an image names (the driver's own format when the image does not record one). */
async function backingFormatOf(driver: Driver, io: BlockIO, openOptions: OpenOptions | undefined): Promise<string | undefined> {
  const image = await driver.open(io, openOptions);
  const backing = image.info().backing;
  await image.close();
  return backing ? (backing.format ?? openOptions?.backing?.format) : undefined;
}

async function sameBytes(a: BlockIO, b: BlockIO): Promise<boolean> {
  const size = await a.size();
  if (size !== (await b.size())) return false;
  for (let at = 0; at < size; at += 1 << 20) {
    const length = Math.min(1 << 20, size - at);
    const [x, y] = [await a.read(at, length), await b.read(at, length)];
    for (let i = 0; i < length; i++) if (x[i] !== y[i]) return false;
  }
  return true;
}

/** A shape built as a `source` image for a matrix case, with what the judges need to know about it. */
async function builtForMatrix(source: Driver, shape: Shape, clusterSize: number, options: MatrixOptions): Promise<{ io: MemoryIO; content: ImageContent; backing: Image | undefined; state: Converted }> {
  const { io, content, backing, backingIo } = await buildShape(source, shape, clusterSize);
  const state: Converted = {
    io,
    expected: contentFromImageContent(content),
    openOptions: backing ? { backing } : undefined,
    files: backingIo && content.backing ? [{ name: content.backing.name, io: backingIo }] : [],
    backingFormat: content.backing ? source.name : undefined,
    qemu: options.qemu !== false,
  };
  return { io, content, backing, state };
}

/**
 * Every shape built as a `source` image, converted in place to `target` and back, at each cluster size both
 * support: the data clusters under the target's header region (and nothing else) move, the result probes as the
 * target, reads the shape's content, checks clean and is usable by qemu; the way back likewise.
 */
export function shapePairCases(source: Driver, target: Driver, options: MatrixOptions = {}): KitCase[] {
  const registry = new Registry([source, target]);
  const cases: KitCase[] = [];
  const sizes = (options.clusterSizes ?? [4096, 65536]).filter((size) => supportsClusterSize(source, size) && supportsClusterSize(target, size));
  const both = (capability: 'backing' | 'zeroExtents') => hasCapability(source, capability) && hasCapability(target, capability);
  const coverage = coverageOf(options.coverage);
  const pairName = `${source.name} -> ${target.name}`;
  const pairShapes = (options.shapes ?? allShapes).filter((s) => !s.needsBacking || both('backing'));
  for (const [slot, clusterSize] of sizes.entries()) {
    for (const [index, shape] of pairShapes.entries()) {
      if (!covers(coverage, pairName, index, slot, sizes.length)) continue;
      cases.push({
        name: `${source.name} -> ${target.name} -> ${source.name}: ${shape.name}, ${clusterSize}-byte clusters`,
        run: async () => {
          const { io, content, backing, state } = await builtForMatrix(source, shape, clusterSize, options);
          const { openOptions, expected } = state;
          const sourceMap = await collectExtents((await source.open(io)).map());
          const description = await (await source.open(io)).conversionSource!();
          const request = { source: description.options, clusterSize, options: {}, ...(backing ? { backingInfo: backing.info() } : {}) };
          const problems = target.inPlace!.create(request).problems;
          const pristine = io.snapshot();

          if (problems.length > 0) {
            // The target cannot represent this image: refused up front, and nothing written.
            const error = await convertInPlace({ io, source, target, ...(openOptions ? { openOptions } : {}) }).catch((e: unknown) => e);
            expect(isIcError(error) && error.code, String(error)).toBe('UNSUPPORTED');
            expect(io.snapshot()).toEqual(pristine);
            return { skipped: `${target.name} refuses this image up front (nothing written): ${problems[0]}` };
          }

          const forward = await convertInPlace({ io, source, target, compact: 'always', ...(openOptions ? { openOptions } : {}) });
          expect(forward.verified).toBe(true);
          const head = await io.read(0, 65536);
          expect(registry.probeBytes(head, await io.size())[0]?.driver, 'probes as the target').toBe(target);
          const targetMap = await expectConvertedImage(target, io, expected, openOptions, `${shape.name} as ${target.name}`, leaksLeft(forward));
          expectRelocations(target, request, forward, sourceMap, targetMap, `${shape.name} as ${target.name}`);
          await expectUsable(target, targetMap, state, `${shape.name} as ${target.name}`, leaksLeft(forward));

          // Compaction may have moved data into holes below the source's header region; only those move back.
          const backRequest = { ...request, source: (await (await target.open(io)).conversionSource!()).options, clusterSize: forward.targetClusterSize };
          const back = await convertInPlace({ io, source: target, target: source, compact: 'always', ...(openOptions ? { openOptions } : {}) });
          expect(back.verified).toBe(true);
          const sourceMapAfter = await expectConvertedImage(source, io, expected, openOptions, `${shape.name} back as ${source.name}`, leaksLeft(back));
          expectRelocations(source, backRequest, back, targetMap, sourceMapAfter, `${shape.name} back as ${source.name}`);
          await expectUsable(source, sourceMapAfter, state, `${shape.name} back as ${source.name}`, leaksLeft(back));
        },
      });
    }
  }
  return cases;
}

/**
 * Every shape built as a `source` image and converted in place to the identity target `target` (raw) with the
 * engine's convertToIdentity, as the CLI does, at the cluster sizes the source supports (under the same coverage
 * rules as shapePairCases): the file then probes as the target, is exactly as long as the disk, reads the shape's
 * content and is usable by qemu (qemu-io writes, qemu-img compare with the expected bytes); then, when the target
 * can be a source, back to `source` with convertInPlace and the ordinary expectations. A source the engine cannot
 * turn into the target (no movable units, a backing file the target cannot name) must be refused UNSUPPORTED
 * before anything is written: such a case resolves as skipped with the engine's reason. A shape with a backing
 * file and a target without the backing capability must be refused.
 */
export function identityPairCases(source: Driver, target: Driver, options: MatrixOptions = {}): KitCase[] {
  const registry = new Registry([source, target]);
  const cases: KitCase[] = [];
  const sizes = (options.clusterSizes ?? [4096, 65536]).filter((size) => supportsClusterSize(source, size));
  const coverage = coverageOf(options.coverage);
  const back = hasCapability(target, 'inPlaceSource');
  const pairName = back ? `${source.name} -> ${target.name} -> ${source.name}` : `${source.name} -> ${target.name}`;
  // Shapes with a backing file run wherever the source can build them: the target must refuse those it cannot name.
  const pairShapes = (options.shapes ?? allShapes).filter((s) => !s.needsBacking || hasCapability(source, 'backing'));
  for (const [slot, clusterSize] of sizes.entries()) {
    for (const [index, shape] of pairShapes.entries()) {
      if (!covers(coverage, pairName, index, slot, sizes.length)) continue;
      cases.push({
        name: `${pairName}: ${shape.name}, ${clusterSize}-byte clusters`,
        run: async () => {
          const { io, content, state } = await builtForMatrix(source, shape, clusterSize, options);
          const { openOptions, expected } = state;
          const sourceImage = await source.open(io, openOptions);
          const virtualSize = sourceImage.info().virtualSize;
          await sourceImage.close();
          const pristine = await copyToMemory(io);
          const mustRefuse = content.backing !== undefined && !hasCapability(target, 'backing');

          // The call the CLI makes for an identity target (apps/cli: convert-inplace IMAGE raw).
          const forward = await convertToIdentity(io, source, target, { allowUnlocked: true, ...(openOptions ? { openOptions } : {}) }).catch((error: unknown) => error);
          if (isIcError(forward) && forward.code === 'UNSUPPORTED') {
            // The engine cannot turn this image into the target: refused up front, and the file is as it was.
            expect(await sameBytes(io, pristine), `${shape.name}: a refused conversion to ${target.name} wrote nothing`).toBe(true);
            return { skipped: `the engine refuses to convert this ${source.name} image to ${target.name} up front (nothing written): ${forward.message}` };
          }
          if (forward instanceof Error) throw forward;
          if (mustRefuse) throw new Error(`${shape.name}: converted to ${target.name}, which cannot name a backing file, instead of refusing`);
          const report = forward as Awaited<ReturnType<typeof convertToIdentity>>;
          expect(report.dryRun).toBe(false);
          expect(await io.size(), `${shape.name} as ${target.name}: the file is as long as the disk`).toBe(virtualSize);
          expect(report.fileSizeAfter, `${shape.name} as ${target.name}: the reported file size`).toBe(virtualSize);
          const head = await io.read(0, Math.min(65536, await io.size()));
          expect(registry.probeBytes(head, await io.size())[0]?.driver, 'probes as the target').toBe(target);
          const targetMap = await expectConvertedImage(target, io, expected, undefined, `${shape.name} as ${target.name}`);
          await expectUsable(target, targetMap, { ...state, openOptions: undefined, files: [] }, `${shape.name} as ${target.name}`, 0);
          if (!back) return;

          // The way back is an ordinary in-place conversion from the target (a source like any other).
          const description = await (await target.open(io)).conversionSource!();
          const backRequest = { source: description.options, clusterSize: description.options.clusterSize, options: {} };
          const returned = await convertInPlace({ io, source: target, target: source, compact: 'always' });
          expect(returned.verified).toBe(true);
          const sourceMapAfter = await expectConvertedImage(source, io, expected, undefined, `${shape.name} back as ${source.name}`, leaksLeft(returned));
          expectRelocations(source, backRequest, returned, targetMap, sourceMapAfter, `${shape.name} back as ${source.name}`, description.zeroHostRangesReadAsZero === true);
          await expectUsable(source, sourceMapAfter, { ...state, openOptions: undefined, files: [] }, `${shape.name} back as ${source.name}`, leaksLeft(returned));
        },
      });
    }
  }
  return cases;
}

/**
 * Every ordered pair of distinct drivers that can both build and convert images, as shape cases; then, for each
 * of those drivers and each identity target among `drivers` (isIdentityTarget), the identity cases
 * (identityPairCases), after the ordinary pairs so that the parts of the ordinary ones do not shift.
 */
export function matrixCases(drivers: readonly Driver[], options: MatrixOptions = {}): { pair: string; cases: KitCase[] }[] {
  const eligible = drivers.filter(canBuildAndConvert);
  const out: { pair: string; cases: KitCase[] }[] = [];
  for (const source of eligible) {
    for (const target of eligible) {
      if (source !== target) out.push({ pair: `${source.name} -> ${target.name} -> ${source.name}`, cases: shapePairCases(source, target, options) });
    }
  }
  for (const source of eligible) {
    for (const target of drivers.filter(isIdentityTarget)) {
      if (source === target) continue;
      const pair = hasCapability(target, 'inPlaceSource') ? `${source.name} -> ${target.name} -> ${source.name}` : `${source.name} -> ${target.name}`;
      out.push({ pair, cases: identityPairCases(source, target, options) });
    }
  }
  return out;
}

/**
 * The every-pair-both-ways matrix over `drivers` as vitest tests (tooling/e2e runs it over ic's bundled drivers; a
 * third party can run it over its driver and the bundled ones). At least two drivers must qualify.
 */
export function describeMatrix(drivers: readonly Driver[], options: MatrixOptions = {}): void {
  const part = options.part ?? { index: 0, of: 1 };
  const pairs = matrixCases(drivers, options).filter((_, i) => i % part.of === part.index);
  describe(`in-place matrix (${drivers.map((d) => d.name).join(', ')}${part.of > 1 ? `; part ${part.index + 1} of ${part.of}` : ''})`, () => {
    it('has at least two drivers that can build and convert images', () => {
      expect(drivers.filter(canBuildAndConvert).length).toBeGreaterThanOrEqual(2);
    });
    for (const { pair, cases } of pairs) {
      describe(pair, () => {
        registerCases(cases, (kitCase) => kitCase.name.slice(pair.length + 2), options.timeout, (kitCase) => options.knownFailures?.(kitCase.name));
      });
    }
  });
}
