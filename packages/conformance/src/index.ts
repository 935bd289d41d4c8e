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
  itemBatches,
  MemoryIO,
  Registry,
  writeImage,
  type BlockIO,
  type Driver,
  type Extent,
  type Image,
  type ImageContent,
  type ConversionSource,
  type HostRange,
  type InPlaceTarget,
  type SpaceAllocator,
  type TargetBuild,
} from '@ic/core';

export { shapes, pattern, type Shape } from './shapes.js';
import { shapes, type Shape } from './shapes.js';

export interface ConformanceOptions {
  /** Cluster sizes to build images with (each must be within driver.inPlace.clusterSizes). */
  clusterSizes?: number[];
}

/** Expected guest bytes of `content` in [offset, offset+length) (backing content is not part of it). */
export function expectedWindow(content: ImageContent, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (const { guestOffset, bytes } of content.data) {
    const from = Math.max(offset, guestOffset);
    const to = Math.min(offset + length, guestOffset + bytes.length);
    if (to > from) out.set(bytes.subarray(from - guestOffset, to - guestOffset), from - offset);
  }
  return out;
}

const WINDOW = 8 * 1024 * 1024;

/**
 * Asserts that the image in `io` reads back `content`, window by window (8 MiB), over every window that
 * holds data in the image's map or in `content`; the other windows are empty in both by construction.
 */
export async function expectImageContent(driver: Driver, io: BlockIO, content: ImageContent, what = driver.name): Promise<void> {
  const image = await driver.open(io);
  try {
    const virtualSize = image.info().virtualSize;
    expect(virtualSize, `${what}: virtual size`).toBe(content.virtualSize);
    const windows = new Set<number>();
    const mark = (offset: number, length: number) => {
      for (let w = Math.floor(offset / WINDOW); w * WINDOW < offset + length; w++) windows.add(w);
    };
    for (const extent of await collectExtents(image.map())) if (extent.kind !== 'unallocated' && extent.kind !== 'zero') mark(extent.guestOffset, extent.length);
    for (const piece of content.data) mark(piece.guestOffset, piece.bytes.length);
    for (const w of [...windows].sort((a, b) => a - b)) {
      const offset = w * WINDOW;
      const length = Math.min(WINDOW, virtualSize - offset);
      expectSameContent(await image.read(offset, length), expectedWindow(content, offset, length), `${what} guest bytes ${offset}..${offset + length}`);
    }
  } finally {
    await image.close();
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

/** Asserts that two byte arrays are equal, naming the first differing byte. */
export function expectSameContent(actual: Uint8Array, expected: Uint8Array, what = 'guest content'): void {
  const at = firstDifference(actual, expected);
  expect(at, `${what}: first difference at byte ${at}`).toBe(-1);
}

/** Every metadata range a conversion source lists, collected (for tests). */
export async function metadataRangesOf(source: ConversionSource): Promise<HostRange[]> {
  const out: HostRange[] = [];
  for await (const batch of itemBatches(source.metadataRanges())) out.push(...batch);
  return out;
}

/**
 * Runs a target's build the way the engine does: the mapping handed over in batches, every metadata write checked
 * against the space the target allocated (when the allocator can tell), and written into `io` when one is given.
 * The writes are also returned, for driver tests that build by hand.
 */
export async function runTargetBuild(
  target: InPlaceTarget,
  mapping: readonly Extent[],
  space: SpaceAllocator & { owns?(offset: number, length: number): boolean },
  io?: BlockIO,
): Promise<TargetBuild & { metadataBytes: number; writes: { offset: number; data: Uint8Array }[] }> {
  const writes: { offset: number; data: Uint8Array }[] = [];
  async function* batches(): AsyncGenerator<readonly Extent[]> {
    yield mapping;
  }
  const build = await target.build(batches(), space, {
    async write(offset: number, data: Uint8Array) {
      if (space.owns && !space.owns(offset, data.length)) throw new IcError('INTERNAL', `target wrote ${data.length} bytes at ${offset}, outside the space it allocated`);
      writes.push({ offset, data: data.slice() });
      if (io) await io.write(offset, data);
    },
  });
  return { ...build, metadataBytes: writes.reduce((sum, w) => sum + w.data.length, 0), writes };
}

/** A shape built as an image of some driver, in memory, with its backing image when the shape has one. */
export interface BuiltShape {
  io: MemoryIO;
  content: ImageContent;
  /** The opened backing image (an empty image of the same driver), for shapes with a backing reference. */
  backing?: Image;
}

/** Builds a shape as an image of `driver` in memory. A backing reference names an empty image of the same driver. */
export async function buildShape(driver: Driver, shape: Shape, clusterSize: number): Promise<BuiltShape> {
  let content: ImageContent = { ...shape.content(clusterSize), clusterSize };
  let backing: Image | undefined;
  if (content.backing) {
    const baseIo = new MemoryIO(new Uint8Array(0), content.backing.name);
    await writeImage(baseIo, driver, { virtualSize: content.virtualSize, clusterSize, data: [] });
    backing = await driver.open(baseIo);
    content = { ...content, backing: { ...content.backing, format: driver.name }, backingInfo: backing.info() };
  }
  const io = new MemoryIO(new Uint8Array(0), `${shape.name}.${driver.name}`);
  await writeImage(io, driver, content);
  return backing ? { io, content, backing } : { io, content };
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
            const { io, content } = await buildShape(driver, shape, clusterSize);
            const size = await io.size();
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
          });
        }
      }

      it('converts to itself in place and keeps every data cluster where it was', async () => {
        if (!can('inPlaceSource')) return;
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
      });
    }
  });
}

export type { ImageContent };
export * from './crash/index.js';
