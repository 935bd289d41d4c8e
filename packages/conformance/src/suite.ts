/**
 * describeDriver: the conformance suite as vitest tests. The suite itself is data — groups of named cases whose
 * run() throws when the driver fails them (conformanceSuite) — so the kit's own tests can show that it fails a
 * bad driver, and a driver's test file is three lines.
 */
import { describe, expect } from 'vitest';
import {
  assertCoverage,
  collectExtents,
  convertInPlace,
  hasCapability,
  IcError,
  isIcError,
  itemBatches,
  MemoryIO,
  Registry,
  type BlockIO,
  type Driver,
  type Extent,
  type Image,
} from '@ic/core';
import { kitClusterSizes } from './cluster-sizes.js';
import { buildShape, copyToMemory, expectImageContent } from './images.js';
import { canBuildAndConvert, expectConvertedImage, registerCases, samplePairCase, shapePairCases, type KitCase } from './matrix.js';
import { assertNoProblems, driverMemberProblems, imageMemberProblems, targetMemberProblems } from './members.js';
import { installedPartners } from './partners.js';
import { loadSamples, type LoadedSample, type SampleSource } from './samples.js';
import { shapes } from './shapes.js';
import type { Coverage } from './coverage.js';

export interface ConformanceOptions {
  /**
   * Cluster sizes to build images with; each must lie in driver.inPlace.clusterSizes. Default: 4 KiB and 64 KiB,
   * each moved to the nearest size the driver supports.
   */
  clusterSizes?: number[];
  /**
   * Real images of the format (made by its own tools, e.g. qemuSamples() from @ic/conformance/qemu), and the only
   * images a source-only driver can be tested with. Called once, while the tests are collected.
   */
  samples?: SampleSource;
  /**
   * The drivers to convert to and from. Default: ic's bundled in-place drivers (@ic/qcow2, @ic/qed, @ic/vmdk), which
   * must then be installed (dev dependencies); [] leaves conversions to other formats out.
   */
  partners?: readonly Driver[];
  /** Convert every shape to each partner and back, and each partner's shapes to this format and back (default true). */
  matrix?: boolean;
  /** Let qemu write to converted images of formats it knows and judge them (default true; a missing qemu-img fails). */
  qemu?: boolean;
  /** Milliseconds one case may take (default KIT_CASE_TIMEOUT, 5 minutes). */
  timeout?: number;
  /** How many of the conversions with partners run: 'full' (default, or IC_KIT_COVERAGE) or 'covering' (coverage.ts). */
  coverage?: Coverage;
}

export interface KitGroup {
  name: string;
  cases: KitCase[];
}

/** A case that fails with `message` (a problem the kit found while planning the suite). */
function failing(name: string, message: string): KitCase {
  return {
    name,
    run: async () => {
      throw new IcError('INVALID', message);
    },
  };
}

/** Problems of an image the kit opened, or a failure when it does not open. */
async function checkImage(driver: Driver, io: BlockIO, what: string, openOptions?: Parameters<Driver['open']>[1]): Promise<{ image: Image; problems: string[] }> {
  const image = await driver.open(io, openOptions);
  return { image, problems: imageMemberProblems(driver, image).map((problem) => `${problem} (${what})`) };
}

function contractGroup(driver: Driver, sizes: number[] | undefined, samples: () => Promise<LoadedSample[]>): KitGroup {
  const can = (capability: keyof typeof driver.capabilities) => hasCapability(driver, capability);
  const cases: KitCase[] = [
    {
      name: 'every claimed capability has its member, and no member is there without its capability',
      run: async () => {
        const problems = driverMemberProblems(driver);
        if (driver.inPlace && typeof driver.inPlace.create === 'function') {
          for (const clusterSize of sizes ?? [driver.inPlace.clusterSizes.min]) {
            const target = driver.inPlace.create({ source: { virtualSize: 64 * clusterSize, clusterSize }, clusterSize, options: {} });
            problems.push(...targetMemberProblems(driver, target, clusterSize));
          }
        }
        // Image-level members, on every image the kit can have: a created one, a built one, the samples.
        if (can('create') && typeof driver.create === 'function') {
          const io = new MemoryIO(new Uint8Array(0), 'created');
          await driver.create(io, { virtualSize: 1 << 20, options: {} });
          const { image, problems: found } = await checkImage(driver, io, 'an image from create()');
          problems.push(...found);
          await image.close();
        }
        if (can('inPlaceTarget') && driver.inPlace && sizes && typeof driver.inPlace.create === 'function') {
          const { io } = await buildShape(driver, shapes[2]!, sizes[0]!);
          const { image, problems: found } = await checkImage(driver, io, 'an image built by its in-place target');
          problems.push(...found);
          await image.close();
        }
        for (const sample of await samples()) {
          const { image, problems: found } = await checkImage(driver, await copyToMemory(sample.pristine), `sample "${sample.name}"`, sample.openOptions);
          problems.push(...found);
          await image.close();
        }
        assertNoProblems([...new Set(problems)], `${driver.name} does not match its declared capabilities`);
      },
    },
    {
      name: 'is accepted by the registry and describes itself as data',
      run: async () => {
        const registry = new Registry([driver]);
        expect(registry.get(driver.name)).toBe(driver);
        expect(driver.description.length).toBeGreaterThan(0);
        for (const [name, value] of Object.entries(driver.capabilities)) expect(typeof value, `capability ${name}`).toBe('boolean');
        for (const option of driver.options ?? []) {
          expect(option.name).toMatch(/^[a-z0-9_]+$/);
          expect(option.help.length, `help for ${option.name}`).toBeGreaterThan(0);
        }
      },
    },
    {
      name: 'gives the kit images to test (create(), an in-place target, or samples)',
      run: async () => {
        const sources = [can('create') && driver.create, can('inPlaceTarget') && driver.inPlace, (await samples()).length > 0].filter(Boolean);
        if (sources.length === 0) {
          throw new IcError('INVALID', `${driver.name}: the kit has no image of this format to test: implement create() or an in-place target, or pass samples`);
        }
      },
    },
  ];
  return { name: 'contract', cases };
}

function probeGroup(driver: Driver): KitGroup {
  return {
    name: 'probe and errors',
    cases: [
      {
        name: 'probes without throwing, and low on bytes that are not its format',
        run: async () => {
          for (const head of [new Uint8Array(0), new Uint8Array(512), new Uint8Array(65536).fill(0xff)]) {
            const score = driver.probe(head, head.length);
            expect(score).toBeGreaterThanOrEqual(0);
            expect(score).toBeLessThanOrEqual(1);
          }
        },
      },
      {
        name: 'refuses an empty and a garbage file with a typed error (unless it accepts any bytes)',
        run: async () => {
          for (const bytes of [new Uint8Array(0), new Uint8Array(4096).fill(0x5a)]) {
            if (driver.probe(bytes, bytes.length) > 1) continue;
            const io = new MemoryIO(bytes, 'garbage');
            try {
              const image = await driver.open(io);
              // A driver that accepts any bytes (raw) must still describe them consistently.
              assertCoverage(await collectExtents(image.map()), image.info().virtualSize);
            } catch (error) {
              expect(isIcError(error), String(error)).toBe(true);
            }
          }
        },
      },
      {
        name: 'passes I/O errors on as typed errors',
        run: async () => {
          const failingIo: BlockIO = {
            name: 'failing',
            writable: false,
            read: async () => {
              throw new IcError('IO', 'failing: read error');
            },
            write: async () => {},
            size: async () => 1 << 20,
            truncate: async () => {},
            flush: async () => {},
            close: async () => {},
          };
          try {
            const image = await driver.open(failingIo);
            await collectExtents(image.map());
          } catch (error) {
            expect(isIcError(error), String(error)).toBe(true);
          }
        },
      },
    ],
  };
}

function createGroup(driver: Driver): KitGroup | undefined {
  if (!hasCapability(driver, 'create') || !driver.create) return undefined;
  const create = driver.create.bind(driver);
  const cases: KitCase[] = [1 << 20, (65 << 20) + 512, 4 * 1024 ** 3].map((virtualSize) => ({
    name: `creates an empty image of ${virtualSize} bytes that reads as zeros`,
    run: async () => {
      const io = new MemoryIO(new Uint8Array(0), 'created');
      await create(io, { virtualSize, options: {} });
      const head = await io.read(0, Math.min(65536, await io.size()));
      expect(driver.probe(head, await io.size())).toBeGreaterThanOrEqual(1);
      const image = await driver.open(io);
      assertNoProblems(imageMemberProblems(driver, image), 'an image from create()');
      expect(image.info().virtualSize).toBe(virtualSize);
      const extents = await collectExtents(image.map());
      assertCoverage(extents, virtualSize);
      expect(extents.some((e) => e.kind === 'data')).toBe(false);
      const sample = await image.read(Math.max(0, virtualSize - 8192), Math.min(8192, virtualSize));
      expect(sample.every((b) => b === 0)).toBe(true);
      if (hasCapability(driver, 'check') && image.check) {
        const report = await image.check();
        expect(report.corruptions, report.messages.join('; ')).toBe(0);
        expect(report.leaks).toBe(0);
      }
    },
  }));
  if (hasCapability(driver, 'backing')) {
    cases.push({
      name: 'creates an image that names a backing file',
      run: async () => {
        // The parent is an image of the same format, opened, so a format that records facts about it (VMDK's CID) can.
        const base = new MemoryIO(new Uint8Array(0), 'base.img');
        await create(base, { virtualSize: 1 << 20, options: {} });
        const backingInfo = (await driver.open(base)).info();
        const io = new MemoryIO(new Uint8Array(0), 'created-with-backing');
        await create(io, { virtualSize: 1 << 20, backing: { name: 'base.img', format: driver.name }, backingInfo, options: {} });
        const image = await driver.open(io);
        expect(image.info().backing?.name).toBe('base.img');
        await image.close();
      },
    });
  }
  return { name: 'create', cases };
}

function shapeGroup(driver: Driver, sizes: number[]): KitGroup {
  const can = (capability: keyof typeof driver.capabilities) => hasCapability(driver, capability);
  const cases: KitCase[] = [];
  for (const clusterSize of sizes) {
    for (const shape of shapes.filter((s) => can('backing') || !s.needsBacking)) {
      cases.push({
        name: `builds the "${shape.name}" shape with ${clusterSize}-byte clusters and reads it back`,
        run: async () => {
          const { io, content } = await buildShape(driver, shape, clusterSize);
          const size = await io.size();
          expect(driver.probe(await io.read(0, Math.min(65536, size)), size)).toBeGreaterThan(1);
          const image = await driver.open(io);
          assertNoProblems(imageMemberProblems(driver, image), `the "${shape.name}" image`);
          expect(image.info().virtualSize).toBe(content.virtualSize);
          expect(image.info().backing?.name).toBe(content.backing?.name);
          const extents = await collectExtents(image.map());
          assertCoverage(extents, content.virtualSize);
          for (const extent of extents) {
            if (extent.kind === 'data') {
              expect(extent.hostOffset % clusterSize, 'data clusters are cluster-aligned').toBe(extent.guestOffset % clusterSize);
              expect(extent.hostOffset + extent.length).toBeLessThanOrEqual(size + clusterSize);
            }
          }
          if (shape.usesZero && can('zeroExtents')) {
            // The capability is exercised: every zero range of the shape maps as zero.
            for (const range of content.zero ?? []) {
              const covering = extents.filter((e) => e.guestOffset < range.guestOffset + range.length && range.guestOffset < e.guestOffset + e.length);
              expect(covering.map((e) => e.kind), `zero range at ${range.guestOffset}`).toEqual(covering.map(() => 'zero'));
            }
          }
          await expectImageContent(driver, io, content);
          if (can('check') && image.check) {
            const report = await image.check();
            expect(report.corruptions, report.messages.join('; ')).toBe(0);
            expect(report.checkErrors).toBe(0);
            expect(report.leaks, report.messages.join('; ')).toBe(0);
          }
          if (can('inPlaceSource') && image.conversionSource) {
            const description = await image.conversionSource();
            expect(description.options.virtualSize).toBe(content.virtualSize);
            expect(description.blockers).toEqual([]);
            for await (const batch of itemBatches(description.metadataRanges())) {
              for (const range of batch) expect(range.offset + range.length).toBeLessThanOrEqual(size);
            }
          }
          await image.close();
        },
      });
    }
  }
  if (can('inPlaceSource')) {
    cases.push({
      name: 'converts to itself in place and keeps every data cluster where it was',
      run: async () => {
        const shape = shapes.find((s) => s.name === 'checkerboard')!;
        const clusterSize = sizes[sizes.length - 1]!;
        const { io, content } = await buildShape(driver, shape, clusterSize);
        const before: Extent[] = await collectExtents((await driver.open(io)).map());
        const report = await convertInPlace({ io, source: driver, target: driver });
        expect(report.verified).toBe(true);
        expect(report.clustersRelocated).toBe(0);
        const after = await collectExtents((await driver.open(io)).map());
        expect(after.filter((e) => e.kind === 'data')).toEqual(before.filter((e) => e.kind === 'data'));
        await expectImageContent(driver, io, content);
      },
    });
  }
  return { name: 'images built by its in-place target', cases };
}

function sampleReadCase(driver: Driver, sample: LoadedSample): KitCase {
  return {
    name: `sample "${sample.name}": maps the whole disk, reads the expected content, checks clean`,
    run: async () => {
      const io = await copyToMemory(sample.pristine);
      await expectConvertedImage(driver, io, sample.expected, sample.openOptions, `sample "${sample.name}"`);
      const image = await driver.open(io, sample.openOptions);
      if (hasCapability(driver, 'inPlaceSource') && image.conversionSource) {
        const description = await image.conversionSource();
        const size = await io.size();
        expect(description.options.virtualSize).toBeGreaterThanOrEqual(sample.expected.virtualSize);
        for await (const batch of itemBatches(description.metadataRanges())) {
          for (const range of batch) expect(range.offset + range.length, `metadata range ${range.offset}+${range.length}`).toBeLessThanOrEqual(size);
        }
      }
      await image.close();
    },
  };
}

/** The cases that show a claimed capability is really there, not only declared. */
function exercisedGroup(driver: Driver, sizes: number[] | undefined, samples: () => Promise<LoadedSample[]>): KitGroup | undefined {
  const cases: KitCase[] = [];
  const builds = hasCapability(driver, 'inPlaceTarget') && driver.inPlace !== undefined && sizes !== undefined;
  if (hasCapability(driver, 'backing')) {
    cases.push({
      name: "capability 'backing' is exercised (a built, created or sample image names a backing file)",
      run: async () => {
        if (builds || (hasCapability(driver, 'create') && driver.create)) return; // the "backing reference" shape or create() test exercises it
        for (const sample of await samples()) {
          const image = await driver.open(await copyToMemory(sample.pristine), sample.openOptions);
          const named = image.info().backing !== undefined;
          await image.close();
          if (named) return;
        }
        throw new IcError('INVALID', `${driver.name} claims capability 'backing' but the kit cannot make an image with a backing file and no sample names one`);
      },
    });
  }
  if (hasCapability(driver, 'zeroExtents')) {
    cases.push({
      name: "capability 'zeroExtents' is exercised (a built or sample image maps zero extents)",
      run: async () => {
        if (builds) return; // the "zero extents" shape asserts its zero ranges map as zero
        for (const sample of await samples()) {
          const image = await driver.open(await copyToMemory(sample.pristine), sample.openOptions);
          const zero = (await collectExtents(image.map())).some((e) => e.kind === 'zero');
          await image.close();
          if (zero) return;
        }
        throw new IcError('INVALID', `${driver.name} claims capability 'zeroExtents' but it has no in-place target to build zero extents with and no sample maps one`);
      },
    });
  }
  return cases.length > 0 ? { name: 'claimed capabilities are exercised', cases } : undefined;
}

/**
 * The conformance suite for `driver`, as data: groups of cases, gated by the driver's declared capabilities, each
 * case's run() throwing when the driver fails it. Problems found while planning (an empty cluster-size set, a
 * sample hook that throws, no partner installed) become failing cases, never silently fewer tests.
 */
export async function conformanceSuite(driver: Driver, options: ConformanceOptions = {}): Promise<KitGroup[]> {
  const groups: KitGroup[] = [];
  let sizes: number[] | undefined;
  let sizeProblem: string | undefined;
  if (hasCapability(driver, 'inPlaceTarget') && driver.inPlace) {
    try {
      sizes = kitClusterSizes(driver, options.clusterSizes);
    } catch (error) {
      sizeProblem = error instanceof Error ? error.message : String(error);
    }
  }
  let loaded: Promise<LoadedSample[]> | undefined;
  const samples = () => (loaded ??= options.samples ? loadSamples(options.samples) : Promise.resolve([]));
  let sampleProblem: string | undefined;
  const sampleList = await samples().catch((error: unknown) => {
    sampleProblem = error instanceof Error ? error.message : String(error);
    return [] as LoadedSample[];
  });

  groups.push(contractGroup(driver, sizes, samples), probeGroup(driver));
  const create = createGroup(driver);
  if (create) groups.push(create);
  if (sizeProblem) groups.push({ name: 'images built by its in-place target', cases: [failing('has cluster sizes to build images with', sizeProblem)] });
  else if (sizes) groups.push(shapeGroup(driver, sizes));
  const exercised = exercisedGroup(driver, sizes, samples);
  if (exercised) groups.push(exercised);

  let partners = options.partners ? [...options.partners] : undefined;
  let partnerProblem: string | undefined;
  if (!partners) {
    const installed = await installedPartners();
    partners = installed.drivers;
    if (installed.missing.length > 0 && (options.samples || (options.matrix !== false && canBuildAndConvert(driver)))) {
      partnerProblem = `the bundled drivers ${installed.missing.join(', ')} are not installed: add them as dev dependencies (the kit converts to and from them), or pass partners: [] to leave conversions out`;
    }
  }
  partners = partners.filter((partner) => partner.name !== driver.name);

  if (options.samples) {
    const cases: KitCase[] = [];
    if (sampleProblem) cases.push(failing('makes its samples', `samples() failed: ${sampleProblem}`));
    else if (sampleList.length === 0) cases.push(failing('makes its samples', `${driver.name}: samples() gave no sample`));
    const targets = partners.filter((partner) => hasCapability(partner, 'inPlaceTarget'));
    for (const sample of sampleList) {
      cases.push(sampleReadCase(driver, sample));
      if (hasCapability(driver, 'inPlaceSource')) for (const target of targets) cases.push(samplePairCase(driver, sample, target, options.qemu === false ? { qemu: false } : {}));
    }
    groups.push({ name: 'samples', cases });
  }

  if (partnerProblem) groups.push({ name: 'conversions with the bundled drivers', cases: [failing('finds the bundled drivers', partnerProblem)] });
  if (options.matrix !== false && sizes && canBuildAndConvert(driver)) {
    const matrixOptions = { clusterSizes: sizes, ...(options.qemu === false ? { qemu: false } : {}), ...(options.coverage ? { coverage: options.coverage } : {}) };
    for (const partner of partners.filter(canBuildAndConvert)) {
      groups.push({
        name: `in-place with ${partner.name}, both ways`,
        cases: [...shapePairCases(driver, partner, matrixOptions), ...shapePairCases(partner, driver, matrixOptions)],
      });
    }
  }
  return groups;
}

/**
 * Registers the conformance suite for `driver` as vitest tests (one describe per group). A driver's test file:
 *
 *   import { describeDriver } from '@ic/conformance';
 *   import { myDriver } from '../src/index.js';
 *   describeDriver(myDriver);
 */
export function describeDriver(driver: Driver, options: ConformanceOptions = {}): void {
  describe(`conformance: ${driver.name}`, async () => {
    for (const group of await conformanceSuite(driver, options)) {
      describe(group.name, () => {
        registerCases(group.cases, undefined, options.timeout);
      });
    }
  });
}
