/** Images for the kit: shapes built through a driver's in-place target, copies in memory, and content assertions. */
import { expect } from 'vitest';
import {
  collectExtents,
  IcError,
  itemBatches,
  MemoryIO,
  pushExtent,
  writeImage,
  type BlockIO,
  type ConversionSource,
  type Driver,
  type Extent,
  type HostRange,
  type Image,
  type ImageContent,
  type InPlaceTarget,
  type SpaceAllocator,
  type TargetBuild,
} from '@ic/core';
import type { Shape } from './shapes.js';

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
  /** The backing image's bytes, stored under the shape's backing name (for tools that open it by name). */
  backingIo?: MemoryIO;
}

/** Builds a shape as an image of `driver` in memory. A backing reference names an empty image of the same driver. */
export async function buildShape(driver: Driver, shape: Shape, clusterSize: number): Promise<BuiltShape> {
  let content: ImageContent = { ...shape.content(clusterSize), clusterSize };
  let backing: Image | undefined;
  let backingIo: MemoryIO | undefined;
  if (content.backing) {
    backingIo = new MemoryIO(new Uint8Array(0), content.backing.name);
    await writeImage(backingIo, driver, { virtualSize: content.virtualSize, clusterSize, data: [] });
    backing = await driver.open(backingIo);
    content = { ...content, backing: { ...content.backing, format: driver.name }, backingInfo: backing.info() };
  }
  const io = new MemoryIO(new Uint8Array(0), `${shape.name}.${driver.name}`);
  await writeImage(io, driver, content);
  return backing && backingIo ? { io, content, backing, backingIo } : { io, content };
}

const COPY_WINDOW = 1024 * 1024;

/** The byte ranges of `io` that may hold data: what it reports, or the whole store. */
async function storedRanges(io: BlockIO): Promise<{ offset: number; length: number }[]> {
  const size = await io.size();
  return io.dataRanges ? io.dataRanges(0, size) : [{ offset: 0, length: size }];
}

/** A copy of a store in memory (sparse: holes it reports and all-zero windows take no memory). */
export async function copyToMemory(io: BlockIO, name = io.name): Promise<MemoryIO> {
  const copy = new MemoryIO(new Uint8Array(0), name);
  for (const range of await storedRanges(io)) {
    for (let at = range.offset; at < range.offset + range.length; at += COPY_WINDOW) {
      const bytes = await io.read(at, Math.min(COPY_WINDOW, range.offset + range.length - at));
      if (bytes.some((b) => b !== 0)) await copy.write(at, bytes);
    }
  }
  const size = await io.size();
  if ((await copy.size()) < size) await copy.truncate(size);
  return copy;
}

/**
 * A reference reader for a flat file (a raw copy made by `qemu-img convert -O raw`, say): guest byte N is file
 * byte N, holes the store reports are zero extents. Use it as a sample's `expected`.
 */
export async function flatReference(io: BlockIO, virtualSize?: number): Promise<Image> {
  const size = virtualSize ?? (await io.size());
  const extents: Extent[] = [];
  let at = 0;
  for (const range of await storedRanges(io)) {
    const end = Math.min(range.offset + range.length, size);
    if (end <= range.offset) continue;
    if (range.offset > at) pushExtent(extents, { kind: 'zero', guestOffset: at, length: range.offset - at });
    pushExtent(extents, { kind: 'data', guestOffset: range.offset, length: end - range.offset, hostOffset: range.offset });
    at = end;
  }
  if (at < size) pushExtent(extents, { kind: 'zero', guestOffset: at, length: size - at });
  return {
    format: 'reference',
    info: () => ({ format: 'reference', virtualSize: size, dirty: false }),
    map: () => [extents],
    read: async (guestOffset, length) => io.read(guestOffset, length),
    close: async () => {},
  };
}
