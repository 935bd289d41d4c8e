import { IcError, mergeQemuMapEntries, toQemuMapEntry, type Extent, type QemuMapEntry } from '@ic/core';
import { EXIT, type Context } from '../context.js';
import { BackingChain, namedDriver, openImage, type Layer } from '../images.js';
import { mapHuman, mapJson, type MapRow } from '@ic/qemu-output';

export interface MapOptions {
  format?: string;
  output: 'human' | 'json';
}

/** The part of `extent` inside [start, end), with its host offset moved along. */
function clip(extent: Extent, start: number, end: number): Extent {
  const delta = start - extent.guestOffset;
  const clipped = { ...extent, guestOffset: start, length: end - start } as Extent;
  if ('hostOffset' in clipped && clipped.hostOffset !== undefined) clipped.hostOffset += delta;
  return clipped;
}

/** Index of the first extent that ends after `offset` (extents are sorted and contiguous). */
function firstEndingAfter(extents: readonly Extent[], offset: number): number {
  let low = 0;
  let high = extents.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    const extent = extents[middle]!;
    if (extent.guestOffset + extent.length <= offset) low = middle + 1;
    else high = middle;
  }
  return low;
}

/**
 * Describes guest range [start, end) as qemu-img map does: what the layer holds at its depth, and for the
 * ranges it leaves unallocated, what the layers below hold (depth + 1, ...). Past the end of a shorter
 * backing file, and past the end of the chain, a range stays "not present" at the depth of the last layer
 * that covers it.
 */
async function describe(chain: BackingChain, layer: Layer, start: number, end: number, out: QemuMapEntry[]): Promise<void> {
  const extents = await chain.extentsOf(layer);
  for (let index = firstEndingAfter(extents, start); index < extents.length; index++) {
    const extent = extents[index]!;
    if (extent.guestOffset >= end) break;
    const from = Math.max(start, extent.guestOffset);
    const to = Math.min(end, extent.guestOffset + extent.length);
    const part = clip(extent, from, to);
    const below = part.kind === 'unallocated' ? await chain.below(layer) : undefined;
    if (!below) {
      out.push(toQemuMapEntry(part, layer.depth));
      continue;
    }
    const coveredEnd = Math.min(to, below.virtualSize);
    if (from < coveredEnd) await describe(chain, below, from, coveredEnd, out);
    if (Math.max(from, coveredEnd) < to) {
      const rest = Math.max(from, coveredEnd);
      out.push(toQemuMapEntry({ kind: 'unallocated', guestOffset: rest, length: to - rest }, layer.depth));
    }
  }
}

/** The merged qemu map rows of an image and its backing chain, each with the file that supplies it. */
export async function mapRows(chain: BackingChain): Promise<MapRow[]> {
  const entries: QemuMapEntry[] = [];
  await describe(chain, chain.top, 0, chain.top.virtualSize, entries);
  const names = new Map(chain.opened().map((layer) => [layer.depth, layer.filename]));
  return mergeQemuMapEntries(entries).map((entry) => ({ ...entry, filename: names.get(entry.depth) ?? '' }));
}

/** `ic map`: qemu-img map, backing chain included. */
export async function mapCommand(context: Context, filename: string, options: MapOptions): Promise<number> {
  const driver = namedDriver(context, options.format);
  const opened = await openImage(context, filename, { driver });
  const chain = await BackingChain.start(context, opened);
  try {
    const rows = await mapRows(chain);
    if (options.output === 'json') {
      context.out(mapJson(rows.map(({ filename: _file, ...entry }) => entry)));
      return EXIT.OK;
    }
    const table = mapHuman(rows);
    if (table === undefined) {
      throw new IcError('UNSUPPORTED', `${filename}: file contains compressed clusters (or data without a file offset); use --output=json`, { path: filename });
    }
    context.out(table);
    return EXIT.OK;
  } finally {
    await chain.close();
  }
}
