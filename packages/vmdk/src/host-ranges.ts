import type { HostRange } from '@ic/core/sdk';
import { EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_WINDOW } from './descriptor.js';
import { GD_ENTRY_BYTES, type GrainDirectory } from './grain-tables.js';
import { SECTOR_SIZE } from './header.js';
import type { SparseState } from './image.js';
import { FOOTER_MARKER_FROM_END } from './stream.js';

/** A growable array of numbers without per-element boxing (one entry per grain can be millions). */
export class NumberList {
  private data = new Float64Array(1024);
  length = 0;

  push(value: number): void {
    if (this.length === this.data.length) {
      const grown = new Float64Array(this.data.length * 2);
      grown.set(this.data);
      this.data = grown;
    }
    this.data[this.length++] = value;
  }

  /** The values in insertion order (a view). */
  values(): Float64Array {
    return this.data.subarray(0, this.length);
  }

  /** The values sorted ascending, in place (a view). */
  sorted(): Float64Array {
    return this.data.subarray(0, this.length).sort();
  }
}

/**
 * End of the area at offset 0 that grains must stay out of: the header sector, the descriptor the header
 * declares, and the 10 KiB window qemu rewrites (0x200..0x29FF) on its first write to the image.
 */
export function protectedHeaderEnd(state: SparseState): number {
  return Math.max(state.protectedEnd, EMBEDDED_DESCRIPTOR_OFFSET + EMBEDDED_DESCRIPTOR_WINDOW);
}

function directoryRanges(state: SparseState, directory: GrainDirectory, label: string): HostRange[] {
  const { geometry } = state;
  const out: HostRange[] = [];
  const gdBytes = geometry.gdEntries * GD_ENTRY_BYTES;
  if (gdBytes > 0) out.push({ offset: directory.sector * SECTOR_SIZE, length: gdBytes, kind: 'metadata', role: `${label} directory` });
  // Tables laid out back to back (qemu's layout) become one range.
  const stride = geometry.gtSectors * SECTOR_SIZE;
  let run: HostRange | undefined;
  for (const sector of directory.entries) {
    if (sector === 0) continue;
    const offset = sector * SECTOR_SIZE;
    if (run && run.offset + run.length === offset) {
      run.length += stride;
    } else {
      run = { offset, length: stride, kind: 'metadata', role: `${label} tables` };
      out.push(run);
    }
  }
  return out;
}

/** Every host range a sparse extent's own structures occupy (header, descriptor, directories, tables, footer). */
export function sparseMetadataRanges(state: SparseState): HostRange[] {
  const ranges: HostRange[] = [
    { offset: 0, length: SECTOR_SIZE, kind: 'header', role: 'header' },
    { offset: EMBEDDED_DESCRIPTOR_OFFSET, length: EMBEDDED_DESCRIPTOR_WINDOW, kind: 'header', role: 'descriptor (qemu rewrites this whole window)' },
  ];
  const descriptorStart = state.header.descriptorOffset * SECTOR_SIZE;
  const descriptorEnd = descriptorStart + state.header.descriptorSize * SECTOR_SIZE;
  const windowEnd = EMBEDDED_DESCRIPTOR_OFFSET + EMBEDDED_DESCRIPTOR_WINDOW;
  if (state.header.descriptorOffset > 0 && (descriptorStart < EMBEDDED_DESCRIPTOR_OFFSET || descriptorEnd > windowEnd)) {
    ranges.push({ offset: descriptorStart, length: descriptorEnd - descriptorStart, kind: 'header', role: 'descriptor (as declared by the header)' });
  }
  ranges.push(...directoryRanges(state, state.gd, 'grain'));
  if (state.rgd) ranges.push(...directoryRanges(state, state.rgd, 'redundant grain'));
  if (state.footer) {
    const end = Math.floor(state.fileSize / SECTOR_SIZE) * SECTOR_SIZE;
    ranges.push({ offset: end - FOOTER_MARKER_FROM_END, length: FOOTER_MARKER_FROM_END, kind: 'metadata', role: 'footer' });
  }
  return ranges;
}

/**
 * The first pair of overlapping ranges among equal-length ranges starting at the sorted `starts` (sectors),
 * or undefined.
 */
export function firstOverlap(sortedStarts: Float64Array, lengthSectors: number): [number, number] | undefined {
  for (let i = 1; i < sortedStarts.length; i++) {
    if (sortedStarts[i]! < sortedStarts[i - 1]! + lengthSectors) return [sortedStarts[i - 1]!, sortedStarts[i]!];
  }
  return undefined;
}

/** Every pair of overlapping neighbours (for check, which counts them all). */
export function countOverlaps(sortedStarts: Float64Array, lengthSectors: number, report: (a: number, b: number) => void): number {
  let count = 0;
  for (let i = 1; i < sortedStarts.length; i++) {
    if (sortedStarts[i]! < sortedStarts[i - 1]! + lengthSectors) {
      count++;
      report(sortedStarts[i - 1]!, sortedStarts[i]!);
    }
  }
  return count;
}

/** Starts (sectors) of the equal-length ranges that intersect [offset, offset + length) bytes. */
export function rangesHitting(sortedStarts: Float64Array, lengthSectors: number, offset: number, length: number): number[] {
  const first = offset / SECTOR_SIZE;
  const end = (offset + length) / SECTOR_SIZE;
  let low = 0;
  let high = sortedStarts.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (sortedStarts[mid]! + lengthSectors <= first) low = mid + 1;
    else high = mid;
  }
  const hits: number[] = [];
  for (let i = low; i < sortedStarts.length && sortedStarts[i]! < end; i++) hits.push(sortedStarts[i]!);
  return hits;
}
