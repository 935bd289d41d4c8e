import {
  alignUp,
  IcError,
  MemoryIO,
  writeImage,
  type Driver,
  type ImageContent,
  type OpenOptions,
} from '@ic/core';
import { pattern, shapes, type Shape } from '../shapes.js';
import { acceptsAnyBytes } from './classify.js';
import { contentFromImageContent, type GuestContent } from './content.js';

/** A conformance shape, optionally with its data clusters laid out in the file in reverse guest order. */
export interface CrashShape extends Shape {
  /** 'reverse': the last guest cluster is first in the file (a fragmented image). Default 'guest'. */
  hostOrder?: 'guest' | 'reverse';
}

const fragmented: CrashShape = {
  name: 'fragmented (reverse host order)',
  hostOrder: 'reverse',
  content: (clusterSize) => {
    const virtualSize = 48 * clusterSize;
    const clusters = [0, 1, 2, 3, 7, 8, 15, 16, 17, 30, 31, 40, 47];
    return { virtualSize, data: clusters.map((c) => ({ guestOffset: c * clusterSize, bytes: pattern(clusterSize, 100 + c) })) };
  },
};

/**
 * The shapes crash campaigns run: the conformance shapes (empty, full, checkerboard, unaligned writes,
 * zero extents, a large sparse disk whose map needs more than one L2/grain table, a backing reference)
 * plus a fragmented image.
 */
export const crashShapes: readonly CrashShape[] = [...shapes, fragmented];

/** A pristine source for a campaign: the image, how to open it, and the guest content it must read as. */
export interface CrashSource {
  io: MemoryIO;
  openOptions?: OpenOptions;
  /** The backing image's bytes, for shapes with a backing reference (named by the shape's backing name). */
  backingIo?: MemoryIO;
  expected: GuestContent;
}

/** Seed of the backing image's pattern: unallocated clusters read it, zero clusters must hide it. */
const BACKING_SEED = 4242;
/** Largest backing shape this builder composes the expected content for, in bytes. */
const MAX_BACKING_SHAPE = 64 * 1024 * 1024;

/**
 * Writes an image like core's writeImage, but places the data clusters in the file in the given order
 * (reverse: the last guest cluster first), so that host order differs from guest order.
 */
export async function writeImageInHostOrder(io: MemoryIO, driver: Driver, content: ImageContent, clusterSize: number, order: 'guest' | 'reverse'): Promise<void> {
  return writeImage(io, driver, { ...content, clusterSize, hostOrder: order });
}

/** Guest content of a top image over a backing image holding `backingBytes`. */
function contentOverBacking(content: ImageContent, clusterSize: number, backingBytes: Uint8Array): GuestContent {
  const guest = backingBytes.slice(0, content.virtualSize);
  // Allocated clusters of the top image hide the backing completely (writeImage fills them whole).
  for (const { guestOffset, bytes } of content.data) {
    const from = Math.floor(guestOffset / clusterSize) * clusterSize;
    const to = Math.min(alignUp(guestOffset + bytes.length, clusterSize), content.virtualSize);
    guest.fill(0, from, to);
  }
  for (const { guestOffset, length } of content.zero ?? []) guest.fill(0, guestOffset, guestOffset + length);
  for (const { guestOffset, bytes } of content.data) guest.set(bytes, guestOffset);
  const expected = contentFromImageContent({ virtualSize: content.virtualSize, data: [{ guestOffset: 0, bytes: guest }] });
  return content.backing ? { ...expected, backingName: content.backing.name } : expected;
}

/**
 * Builds a shape as a pristine image of `driver`. A driver that accepts any bytes and cannot build images
 * (raw) gets the guest bytes written as they are. A backing reference names an image of the same driver
 * full of a pattern, so that a crash state confusing "unallocated" with "zero" reads wrong.
 */
export async function buildCrashSource(driver: Driver, shape: CrashShape, clusterSize: number): Promise<CrashSource> {
  const content = shape.content(clusterSize);
  const io = new MemoryIO(new Uint8Array(0), `${shape.name}.${driver.name}`);
  if (!driver.inPlace && acceptsAnyBytes(driver)) {
    if (content.backing) throw new IcError('UNSUPPORTED', `${driver.name} images cannot have a backing file`);
    for (const { guestOffset, bytes } of content.data) await io.write(guestOffset, bytes);
    await io.truncate(content.virtualSize);
    return { io, expected: contentFromImageContent({ virtualSize: content.virtualSize, data: content.data }) };
  }
  if (!content.backing) {
    await writeImageInHostOrder(io, driver, content, clusterSize, shape.hostOrder ?? 'guest');
    return { io, expected: contentFromImageContent(content) };
  }
  if (content.virtualSize > MAX_BACKING_SHAPE) throw new IcError('LIMIT', `backing shapes are built up to ${MAX_BACKING_SHAPE} bytes`);
  const backingBytes = pattern(content.virtualSize, BACKING_SEED);
  const baseIo = new MemoryIO(new Uint8Array(0), content.backing.name);
  await writeImage(baseIo, driver, { virtualSize: content.virtualSize, clusterSize, data: [{ guestOffset: 0, bytes: backingBytes }] });
  const backing = await driver.open(baseIo);
  const top = { ...content, clusterSize, backing: { ...content.backing, format: driver.name }, backingInfo: backing.info() };
  await writeImage(io, driver, top);
  return { io, openOptions: { backing }, backingIo: baseIo, expected: contentOverBacking(content, clusterSize, backingBytes) };
}

/** Whether a driver can be a campaign source: an in-place source that can build images, or raw-like. */
export function canBeCrashSource(driver: Driver): boolean {
  if (driver.capabilities.inPlaceSource !== true) return false;
  return driver.capabilities.inPlaceTarget === true || (!driver.inPlace && acceptsAnyBytes(driver));
}
