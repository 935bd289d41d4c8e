/**
 * The conformance kit every ic driver runs, ours and third parties'. A driver's test file is:
 *
 *   import { describeDriver } from '@ic/conformance';
 *   import { myDriver } from '../src/index.js';
 *   describeDriver(myDriver);
 *
 * Groups run according to the capabilities the driver declares, so a driver passes by declaring what it
 * lacks, never by skipping what it claims.
 */
import { describe, expect, it } from 'vitest';
import {
  assertCoverage,
  collectExtents,
  convertInPlace,
  IcError,
  isIcError,
  MemoryIO,
  Registry,
  writeImage,
  type BlockIO,
  type Driver,
  type Extent,
  type ImageContent,
} from '@ic/core';

export { shapes, expectedContent, type Shape } from './shapes.js';
import { shapes, expectedContent, type Shape } from './shapes.js';

export interface ConformanceOptions {
  /** Cluster sizes to build images with (each must be within driver.inPlace.clusterSizes). */
  clusterSizes?: number[];
}

/** Reads the whole guest disk of the image in `io` with `driver`. */
export async function readWholeDisk(driver: Driver, io: BlockIO): Promise<Uint8Array> {
  const image = await driver.open(io);
  try {
    return await image.read(0, image.info().virtualSize);
  } finally {
    await image.close();
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

/** Asserts that two guest images are equal, naming the first differing byte. */
export function expectSameContent(actual: Uint8Array, expected: Uint8Array, what = 'guest content'): void {
  const at = firstDifference(actual, expected);
  expect(at, `${what}: first difference at byte ${at}`).toBe(-1);
}

async function expectIcError(promise: Promise<unknown>): Promise<IcError | undefined> {
  try {
    await promise;
    return undefined;
  } catch (error) {
    expect(isIcError(error), `expected an IcError, got ${String(error)}`).toBe(true);
    return error as IcError;
  }
}

/** Builds a shape as an image of `driver` in memory. */
export async function buildShape(driver: Driver, shape: Shape, clusterSize: number): Promise<MemoryIO> {
  const io = new MemoryIO(new Uint8Array(0), `${shape.name}.${driver.name}`);
  await writeImage(io, driver, shapeContent(shape, clusterSize, driver));
  return io;
}

/** A shape's content for images of `driver`: a backing reference names the driver's own format. */
export function shapeContent(shape: Shape, clusterSize: number, driver: Driver): ImageContent {
  const content = shape.content(clusterSize);
  return content.backing ? { ...content, backing: { ...content.backing, format: driver.name } } : content;
}

export function describeDriver(driver: Driver, options: ConformanceOptions = {}): void {
  const can = (capability: keyof typeof driver.capabilities) => driver.capabilities[capability] === true;

  describe(`conformance: ${driver.name}`, () => {
    it('is accepted by the registry and describes itself as data', () => {
      const registry = new Registry([driver]);
      expect(registry.get(driver.name)).toBe(driver);
      expect(driver.description.length).toBeGreaterThan(0);
      for (const [name, value] of Object.entries(driver.capabilities)) expect(typeof value, `capability ${name}`).toBe('boolean');
      for (const option of driver.options ?? []) {
        expect(option.name).toMatch(/^[a-z0-9_]+$/);
        expect(option.help.length, `help for ${option.name}`).toBeGreaterThan(0);
      }
    });

    it('probes without throwing, and low on bytes that are not its format', () => {
      for (const head of [new Uint8Array(0), new Uint8Array(512), new Uint8Array(65536).fill(0xff)]) {
        const score = driver.probe(head, head.length);
        expect(score).toBeGreaterThanOrEqual(0);
        expect(score).toBeLessThanOrEqual(1);
      }
    });

    it('refuses an empty and a garbage file with a typed error (unless it accepts any bytes)', async () => {
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
    });

    it('passes I/O errors on as typed errors', async () => {
      const failing: BlockIO = {
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
        const image = await driver.open(failing);
        await collectExtents(image.map());
      } catch (error) {
        expect(isIcError(error), String(error)).toBe(true);
      }
    });

    if (can('create') && driver.create) {
      const create = driver.create.bind(driver);
      it.each([1 << 20, (65 << 20) + 512, 4 * 1024 ** 3])('creates an empty image of %d bytes that reads as zeros', async (virtualSize) => {
        const io = new MemoryIO(new Uint8Array(0), 'created');
        await create(io, { virtualSize, options: {} });
        const head = await io.read(0, Math.min(65536, await io.size()));
        expect(driver.probe(head, await io.size())).toBeGreaterThanOrEqual(1);
        const image = await driver.open(io);
        expect(image.info().virtualSize).toBe(virtualSize);
        const extents = await collectExtents(image.map());
        assertCoverage(extents, virtualSize);
        expect(extents.some((e) => e.kind === 'data')).toBe(false);
        const sample = await image.read(Math.max(0, virtualSize - 8192), Math.min(8192, virtualSize));
        expect(sample.every((b) => b === 0)).toBe(true);
        if (can('check') && image.check) {
          const report = await image.check();
          expect(report.corruptions, report.messages.join('; ')).toBe(0);
          expect(report.leaks).toBe(0);
        }
      });
    }

    if (can('inPlaceTarget') && driver.inPlace) {
      const { min, max } = driver.inPlace.clusterSizes;
      const sizes = (options.clusterSizes ?? [4096, 65536]).filter((s) => s >= min && s <= max);
      for (const clusterSize of sizes) {
        for (const shape of shapes.filter((s) => can('backing') || !s.needsBacking)) {
          it(`builds the "${shape.name}" shape with ${clusterSize}-byte clusters and reads it back`, async () => {
            const io = await buildShape(driver, shape, clusterSize);
            const size = await io.size();
            const content = shapeContent(shape, clusterSize, driver);
            expect(driver.probe(await io.read(0, Math.min(65536, size)), size)).toBeGreaterThan(1);
            const image = await driver.open(io);
            expect(image.info().virtualSize).toBe(content.virtualSize);
            const extents = await collectExtents(image.map());
            assertCoverage(extents, content.virtualSize);
            for (const extent of extents) {
              if (extent.kind === 'data') {
                expect(extent.hostOffset % clusterSize, 'data clusters are cluster-aligned').toBe(extent.guestOffset % clusterSize);
                expect(extent.hostOffset + extent.length).toBeLessThanOrEqual(size + clusterSize);
              }
            }
            expectSameContent(await image.read(0, content.virtualSize), expectedContent(content));
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
              for (const range of description.metadataRanges) expect(range.offset + range.length).toBeLessThanOrEqual(size);
            }
            await image.close();
          });
        }
      }

      it('converts to itself in place and keeps every data cluster where it was', async () => {
        if (!can('inPlaceSource')) return;
        const shape = shapes.find((s) => s.name === 'checkerboard')!;
        const clusterSize = sizes[sizes.length - 1]!;
        const io = await buildShape(driver, shape, clusterSize);
        const before: Extent[] = await collectExtents((await driver.open(io)).map());
        const report = await convertInPlace({ io, source: driver, target: driver });
        expect(report.verified).toBe(true);
        expect(report.clustersRelocated).toBe(0);
        const after = await collectExtents((await driver.open(io)).map());
        expect(after.filter((e) => e.kind === 'data')).toEqual(before.filter((e) => e.kind === 'data'));
        expectSameContent(await readWholeDisk(driver, io), expectedContent(shape.content(clusterSize)));
      });
    }
  });
}

export type { ImageContent };
