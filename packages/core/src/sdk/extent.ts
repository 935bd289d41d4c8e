import { IcError } from './errors.js';

/**
 * The mapping primitive: what a run of guest bytes is made of. Extents of one map come in guest order,
 * cover the virtual disk with no gap and no overlap, and adjacent compatible ones are merged.
 *
 * Field meanings line up with `qemu-img map --output=json`:
 *   data        present, data, offset = hostOffset (guest byte g+i is file byte hostOffset+i)
 *   zero        present, zero (reads zero and stops the backing chain); may still own a host range
 *   unallocated not present: falls through to the backing file, reads zero without one
 *   compressed  present and data, but the bytes are not stored 1:1 (no offset; not reusable in place)
 *   encrypted   present and data at hostOffset, but ciphertext bound to its position (not reusable)
 */
export type Extent = DataExtent | ZeroExtent | UnallocatedExtent | CompressedExtent | EncryptedExtent;

export interface DataExtent {
  kind: 'data';
  guestOffset: number;
  length: number;
  hostOffset: number;
}
export interface ZeroExtent {
  kind: 'zero';
  guestOffset: number;
  length: number;
  /** Set when the zero run still owns host space (qcow2 "zero-allocated" clusters). */
  hostOffset?: number;
}
export interface UnallocatedExtent {
  kind: 'unallocated';
  guestOffset: number;
  length: number;
}
export interface CompressedExtent {
  kind: 'compressed';
  guestOffset: number;
  length: number;
}
export interface EncryptedExtent {
  kind: 'encrypted';
  guestOffset: number;
  length: number;
  hostOffset: number;
}

export type ExtentKind = Extent['kind'];

function hostOf(extent: Extent): number | undefined {
  return 'hostOffset' in extent ? extent.hostOffset : undefined;
}

/** True when `next` continues `previous` so that the two can be one extent. */
export function canMerge(previous: Extent, next: Extent): boolean {
  if (previous.kind !== next.kind || previous.guestOffset + previous.length !== next.guestOffset) return false;
  const a = hostOf(previous);
  const b = hostOf(next);
  if (a === undefined && b === undefined) return true;
  if (a === undefined || b === undefined) return false;
  return a + previous.length === b;
}

/** Appends `extent` to `list`, merging it into the last element where possible. Zero-length is dropped. */
export function pushExtent(list: Extent[], extent: Extent): void {
  if (extent.length === 0) return;
  const last = list[list.length - 1];
  if (last && canMerge(last, extent)) {
    last.length += extent.length;
    return;
  }
  list.push({ ...extent });
}

export function mergeExtents(extents: Iterable<Extent>): Extent[] {
  const out: Extent[] = [];
  for (const extent of extents) pushExtent(out, extent);
  return out;
}

/** Collects a map (single extents or batches, sync or async) into one merged array. For tests and small maps. */
export async function collectExtents(source: AsyncIterable<Extent | readonly Extent[]> | Iterable<Extent | readonly Extent[]>): Promise<Extent[]> {
  const out: Extent[] = [];
  for await (const batch of extentBatches(source)) for (const extent of batch) pushExtent(out, extent);
  return out;
}

/**
 * A map as batches of extents, whatever the driver yields (single extents are grouped). Consumers of large maps
 * iterate this: one await per batch instead of one per extent.
 */
export function extentBatches(
  source: AsyncIterable<Extent | readonly Extent[]> | Iterable<Extent | readonly Extent[]>,
  batchSize = 4096,
): AsyncGenerator<readonly Extent[]> {
  return itemBatches(source, batchSize);
}

function isBatch<T>(item: T | readonly T[]): item is readonly T[] {
  return Array.isArray(item);
}

/** Like extentBatches, for any stream of items that may come singly or in arrays (host ranges, unit runs). */
export async function* itemBatches<T extends object>(source: AsyncIterable<T | readonly T[]> | Iterable<T | readonly T[]>, batchSize = 4096): AsyncGenerator<readonly T[]> {
  let pending: T[] = [];
  for await (const item of source as AsyncIterable<T | readonly T[]>) {
    if (isBatch(item)) {
      if (pending.length > 0) {
        yield pending;
        pending = [];
      }
      if (item.length > 0) yield item;
    } else {
      pending.push(item);
      if (pending.length >= batchSize) {
        yield pending;
        pending = [];
      }
    }
  }
  if (pending.length > 0) yield pending;
}

/** Throws INTERNAL unless `extents` cover [0, virtualSize) exactly, in order. Used on driver output in tests and by the engine. */
export function assertCoverage(extents: readonly Extent[], virtualSize: number, who = 'map'): void {
  let expected = 0;
  for (const extent of extents) {
    if (extent.guestOffset !== expected || extent.length <= 0) {
      throw new IcError('INTERNAL', `${who}: extent at guest ${extent.guestOffset} (length ${extent.length}) does not continue from ${expected}`);
    }
    expected += extent.length;
  }
  if (expected !== virtualSize) throw new IcError('INTERNAL', `${who}: extents end at ${expected}, virtual size is ${virtualSize}`);
}

/** One row of `qemu-img map --output=json`. */
export interface QemuMapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/**
 * Converts an extent to qemu-img's map row. `depth` is the position in the backing chain that supplied it
 * (0 = this image). Unallocated extents at the end of a chain (or without backing) are "not present".
 */
export function toQemuMapEntry(extent: Extent, depth = 0): QemuMapEntry {
  const base = { start: extent.guestOffset, length: extent.length, depth };
  switch (extent.kind) {
    case 'data':
    case 'encrypted':
      return { ...base, present: true, zero: false, data: true, offset: extent.hostOffset };
    case 'compressed':
      return { ...base, present: true, zero: false, data: true };
    case 'zero':
      return extent.hostOffset === undefined
        ? { ...base, present: true, zero: true, data: false }
        : { ...base, present: true, zero: true, data: false, offset: extent.hostOffset };
    case 'unallocated':
      return { ...base, present: false, zero: true, data: false };
  }
}

/** Merges adjacent qemu map rows the way qemu-img does (same flags and depth, contiguous offsets). */
export function mergeQemuMapEntries(entries: readonly QemuMapEntry[]): QemuMapEntry[] {
  const out: QemuMapEntry[] = [];
  for (const entry of entries) {
    const last = out[out.length - 1];
    if (
      last &&
      last.start + last.length === entry.start &&
      last.depth === entry.depth &&
      last.present === entry.present &&
      last.zero === entry.zero &&
      last.data === entry.data &&
      (last.offset === undefined) === (entry.offset === undefined) &&
      (last.offset === undefined || last.offset + last.length === entry.offset)
    ) {
      last.length += entry.length;
    } else {
      out.push({ ...entry });
    }
  }
  return out;
}

/**
 * What a host range holds: 'header' (the format's fixed header, extensions, names), 'metadata' (tables,
 * directories, reference counts), 'data' (guest data), 'zero' (host space owned by a zero run).
 */
export type HostRangeKind = 'header' | 'metadata' | 'data' | 'zero';

/** A byte range of the host file, with what it holds (and, for messages, the role it plays). */
export interface HostRange {
  offset: number;
  length: number;
  kind: HostRangeKind;
  /** For messages: "L2 table", "refcount block 3"... */
  role?: string;
}
