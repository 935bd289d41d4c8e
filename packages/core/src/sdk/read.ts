import { IcError } from './errors.js';
import type { Image } from './contract.js';
import type { Extent } from './extent.js';
import type { BlockIO } from './io.js';

export interface ReadExtentsOptions {
  /** Supplies unallocated ranges (inside its own virtual size); zeros without it. */
  backing?: Image;
  /** Decodes extents that are not stored 1:1 (compressed); required when such extents are read. */
  readSpecial?: (extent: Extent, guestOffset: number, length: number) => Promise<Uint8Array>;
}

/**
 * Fills guest range [guestOffset, guestOffset+length) from `extents`, which must cover it in guest order.
 * Drivers implement Image.read with this and their own range lookup.
 */
export async function readExtents(
  io: BlockIO,
  extents: Iterable<Extent | readonly Extent[]> | AsyncIterable<Extent | readonly Extent[]>,
  guestOffset: number,
  length: number,
  options: ReadExtentsOptions = {},
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  const end = guestOffset + length;
  let covered = guestOffset;
  const fill = async (extent: Extent): Promise<void> => {
    const from = Math.max(extent.guestOffset, guestOffset);
    const to = Math.min(extent.guestOffset + extent.length, end);
    if (to <= from) return;
    if (from !== covered) throw new IcError('INTERNAL', `read: mapping skips guest ${covered}..${from}`);
    const at = from - guestOffset;
    switch (extent.kind) {
      case 'data':
        out.set(await io.read(extent.hostOffset + (from - extent.guestOffset), to - from), at);
        break;
      case 'zero':
        break;
      case 'unallocated':
        if (options.backing) {
          const backingSize = options.backing.info().virtualSize;
          const inside = Math.min(to, backingSize);
          if (inside > from) out.set(await options.backing.read(from, inside - from), at);
        }
        break;
      case 'compressed':
      case 'encrypted':
        if (!options.readSpecial) throw new IcError('UNSUPPORTED', `reading ${extent.kind} data is not supported here`);
        out.set(await options.readSpecial(extent, from, to - from), at);
        break;
    }
    covered = to;
  };
  for await (const item of extents) {
    for (const extent of Array.isArray(item) ? (item as readonly Extent[]) : [item as Extent]) {
      await fill(extent);
      if (covered >= end) break;
    }
    if (covered >= end) break;
  }
  if (covered < end) throw new IcError('INTERNAL', `read: mapping ends at guest ${covered}, before ${end}`);
  return out;
}
