import { assertCoverage, collectExtents, type Extent, type Image, type ImageContent } from '@ic/core';
import { allZero as isAllZero, sameBytes } from './sparse.js';

/** Guest content is compared in windows of this size; only windows that can hold data are read. */
export const CONTENT_WINDOW = 1024 * 1024;

/**
 * The guest-visible content of an image, kept sparse: the windows that hold a non-zero byte. Used as the
 * pristine "digest" every crash state is compared with (reliability.md §2.4 step 2).
 */
export interface GuestContent {
  virtualSize: number;
  /** Window index → the window's bytes (windows of CONTENT_WINDOW bytes; the last may be shorter). */
  windows: ReadonlyMap<number, Uint8Array>;
  /** The backing reference the image names, if any: a crash state that loses it is not intact. */
  backingName?: string;
}

function windowsOf(offset: number, length: number, into: Set<number>): void {
  for (let w = Math.floor(offset / CONTENT_WINDOW); w * CONTENT_WINDOW < offset + length; w++) into.add(w);
}

/** Guest ranges of a backing image that can hold something other than zeros. */
async function backingWindows(backing: Image | undefined): Promise<Set<number>> {
  const out = new Set<number>();
  if (!backing) return out;
  for (const extent of await collectExtents(backing.map())) if (extent.kind !== 'zero' && extent.kind !== 'unallocated') windowsOf(extent.guestOffset, extent.length, out);
  return out;
}

/** Windows of `extents` (up to `end`) that may read as something other than zeros. */
function candidateWindows(extents: readonly Extent[], fromBacking: ReadonlySet<number>, end: number): Set<number> {
  const out = new Set<number>();
  for (const extent of extents) {
    if (extent.guestOffset >= end) break;
    const length = Math.min(extent.length, end - extent.guestOffset);
    if (extent.kind === 'zero') continue;
    if (extent.kind === 'unallocated') {
      const mine = new Set<number>();
      windowsOf(extent.guestOffset, length, mine);
      for (const w of mine) if (fromBacking.has(w)) out.add(w);
      continue;
    }
    windowsOf(extent.guestOffset, length, out);
  }
  return out;
}

/** Reads the guest content of an opened image (with the backing image it was opened with, if any). */
export async function captureContent(image: Image, backing?: Image): Promise<GuestContent> {
  const info = image.info();
  const extents = await collectExtents(image.map());
  assertCoverage(extents, info.virtualSize, `${image.format} map`);
  const windows = new Map<number, Uint8Array>();
  for (const w of [...candidateWindows(extents, await backingWindows(backing), info.virtualSize)].sort((a, b) => a - b)) {
    const offset = w * CONTENT_WINDOW;
    const bytes = await image.read(offset, Math.min(CONTENT_WINDOW, info.virtualSize - offset));
    if (!isAllZero(bytes)) windows.set(w, bytes);
  }
  return { virtualSize: info.virtualSize, windows, ...(info.backing ? { backingName: info.backing.name } : {}) };
}

/** The content an ImageContent describes (its own data; zero and unallocated ranges read as zeros). */
export function contentFromImageContent(content: ImageContent): GuestContent {
  const windows = new Map<number, Uint8Array>();
  for (const { guestOffset, bytes } of content.data) {
    for (let at = 0; at < bytes.length; ) {
      const guest = guestOffset + at;
      const w = Math.floor(guest / CONTENT_WINDOW);
      const within = guest - w * CONTENT_WINDOW;
      const take = Math.min(CONTENT_WINDOW - within, bytes.length - at);
      let window = windows.get(w);
      if (!window) windows.set(w, (window = new Uint8Array(Math.min(CONTENT_WINDOW, content.virtualSize - w * CONTENT_WINDOW))));
      window.set(bytes.subarray(at, at + take), within);
      at += take;
    }
  }
  for (const [w, bytes] of [...windows]) if (isAllZero(bytes)) windows.delete(w);
  return { virtualSize: content.virtualSize, windows, ...(content.backing ? { backingName: content.backing.name } : {}) };
}

/** Where two contents first differ, or undefined when they are the same. */
export function contentDifference(actual: GuestContent, expected: GuestContent): string | undefined {
  if (actual.virtualSize !== expected.virtualSize) return `virtual size ${actual.virtualSize}, expected ${expected.virtualSize}`;
  if (actual.backingName !== expected.backingName) return `backing ${JSON.stringify(actual.backingName)}, expected ${JSON.stringify(expected.backingName)}`;
  const indexes = new Set([...actual.windows.keys(), ...expected.windows.keys()]);
  for (const w of [...indexes].sort((a, b) => a - b)) {
    const a = actual.windows.get(w);
    const b = expected.windows.get(w);
    if (a && b && sameBytes(a, b)) continue;
    if ((!a && b && isAllZero(b)) || (!b && a && isAllZero(a))) continue;
    return `guest bytes differ in ${w * CONTENT_WINDOW}..${(w + 1) * CONTENT_WINDOW}`;
  }
  return undefined;
}

export interface CompareOptions {
  /** Compare only guest bytes [0, limit) (a raw image that grew is compared over its old length). */
  limit?: number;
  /** The backing image the state was opened with. */
  backing?: Image;
  /** Windows where the backing image holds data (computed once per campaign). */
  backingWindows?: ReadonlySet<number>;
}

/**
 * Compares an opened image's guest bytes with `expected`, reading only windows where either side may hold
 * data. Returns undefined when equal, otherwise where they first differ. Virtual size and backing name are
 * compared by the caller (a raw image that grew is allowed a larger size).
 */
export async function compareGuestBytes(image: Image, expected: GuestContent, options: CompareOptions = {}): Promise<string | undefined> {
  const virtualSize = image.info().virtualSize;
  const end = Math.min(options.limit ?? virtualSize, virtualSize);
  const extents = await collectExtents(image.map());
  assertCoverage(extents, virtualSize, `${image.format} map`);
  const fromBacking = options.backingWindows ?? (await backingWindows(options.backing));
  const windows = candidateWindows(extents, fromBacking, end);
  for (const w of expected.windows.keys()) if (w * CONTENT_WINDOW < end) windows.add(w);
  for (const w of [...windows].sort((a, b) => a - b)) {
    const offset = w * CONTENT_WINDOW;
    const length = Math.min(CONTENT_WINDOW, end - offset);
    const actual = await image.read(offset, length);
    const want = expected.windows.get(w);
    const n = Math.min(length, want?.length ?? 0);
    const same = (!want || sameBytes(actual.subarray(0, n), want.subarray(0, n))) && isAllZero(actual.subarray(n));
    if (!same) {
      let at = 0;
      while (at < length && actual[at] === (want?.[at] ?? 0)) at++;
      return `guest byte ${offset + at} differs`;
    }
  }
  return undefined;
}

export { backingWindows as backingDataWindows };
