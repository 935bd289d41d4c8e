import { IcError } from '../sdk/index.js';
import type { Extent, HostRange } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';

function describeRange(range: HostRange): string {
  return `${range.role} at ${range.offset}+${range.length}`;
}

/**
 * Every host range the source references (its metadata and the host space of its extents), sorted.
 * Overlaps mean the image is corrupt (or uses sharing, such as snapshots, that blockers refuse earlier).
 */
export function referencedRanges(metadata: readonly HostRange[], extents: readonly Extent[], format: string): HostRange[] {
  const ranges: HostRange[] = metadata.filter((r) => r.length > 0).map((r) => ({ ...r }));
  for (const extent of extents) {
    if ((extent.kind === 'data' || extent.kind === 'encrypted') && extent.length > 0) {
      ranges.push({ offset: extent.hostOffset, length: extent.length, role: `data of guest ${extent.guestOffset}` });
    } else if (extent.kind === 'zero' && extent.hostOffset !== undefined) {
      ranges.push({ offset: extent.hostOffset, length: extent.length, role: `zero-allocated cluster of guest ${extent.guestOffset}` });
    }
  }
  ranges.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < ranges.length; i++) {
    const previous = ranges[i - 1]!;
    const current = ranges[i]!;
    if (current.offset < previous.offset + previous.length) {
      throw new IcError('CORRUPT', `${format}: ${describeRange(current)} overlaps ${describeRange(previous)}`, { format, offset: current.offset });
    }
  }
  return ranges;
}

/** Zeroes what is left of the old format's header in [from, to), writing only up to its last non-zero byte. */
export async function zeroStaleHeaderBytes(io: BlockIO, from: number, to: number): Promise<void> {
  if (to <= from) return;
  const stale = await io.read(from, to - from);
  let end = stale.length;
  while (end > 0 && stale[end - 1] === 0) end--;
  if (end > 0) await io.write(from, new Uint8Array(end));
}

