import { ClusterBitmap } from '../sdk/bitmap.js';
import { IcError, type HostRangeKind } from '../sdk/index.js';

const KINDS: readonly HostRangeKind[] = ['header', 'metadata', 'data', 'zero'];

/**
 * Every host range a source references (its metadata, and the host space of its data and zero-allocated
 * extents), with overlaps refused as corruption. Whole granules go into a paged bitmap; the parts of ranges
 * that start or end inside a granule (headers, names, byte-granular raw holes) are kept exactly and checked
 * against each other and against the bitmap at the end. Memory: one bit per granule of referenced space plus
 * two numbers per unaligned range end.
 */
export class HostOccupancy {
  private readonly whole = new ClusterBitmap();
  private edgeStarts = new Float64Array(256);
  private edgeEnds = new Float64Array(256);
  private edgeKinds = new Uint8Array(256);
  private edges = 0;
  private sorted = true;
  /** First byte past every referenced range. */
  end = 0;
  /** Bytes referenced, per kind. */
  readonly bytes: Record<HostRangeKind, number> = { header: 0, metadata: 0, data: 0, zero: 0 };

  constructor(
    readonly granularity: number,
    private readonly format: string,
  ) {}

  add(offset: number, length: number, kind: HostRangeKind): void {
    if (length <= 0) return;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(offset + length)) {
      throw new IcError('CORRUPT', `${this.format}: ${kind} range ${offset}+${length} is not addressable`, { format: this.format });
    }
    this.bytes[kind] += length;
    this.end = Math.max(this.end, offset + length);
    const G = this.granularity;
    const firstWhole = Math.ceil(offset / G);
    const endWhole = Math.floor((offset + length) / G);
    if (endWhole <= firstWhole) {
      this.addEdge(offset, offset + length, kind);
      return;
    }
    if (offset < firstWhole * G) this.addEdge(offset, firstWhole * G, kind);
    const clash = this.whole.addRange(firstWhole, endWhole);
    if (clash >= 0) {
      throw new IcError('CORRUPT', `${this.format}: ${kind} at host offset 0x${offset.toString(16)} (+${length}) overlaps another structure or data (at 0x${(clash * G).toString(16)})`, {
        format: this.format,
        offset: clash * G,
      });
    }
    if (endWhole * G < offset + length) this.addEdge(endWhole * G, offset + length, kind);
  }

  private addEdge(start: number, end: number, kind: HostRangeKind): void {
    if (this.edges === this.edgeStarts.length) {
      const grow = (old: Float64Array) => {
        const next = new Float64Array(old.length * 2);
        next.set(old);
        return next;
      };
      this.edgeStarts = grow(this.edgeStarts);
      this.edgeEnds = grow(this.edgeEnds);
      const kinds = new Uint8Array(this.edgeKinds.length * 2);
      kinds.set(this.edgeKinds);
      this.edgeKinds = kinds;
    }
    const previous = this.edges - 1;
    // Ranges often arrive in host order: merge a piece that continues the last one (same kind).
    if (previous >= 0 && this.edgeEnds[previous] === start && this.edgeKinds[previous] === KINDS.indexOf(kind)) {
      this.edgeEnds[previous] = end;
      return;
    }
    if (previous >= 0 && this.edgeStarts[previous]! > start) this.sorted = false;
    this.edgeStarts[this.edges] = start;
    this.edgeEnds[this.edges] = end;
    this.edgeKinds[this.edges] = KINDS.indexOf(kind);
    this.edges++;
  }

  /** Checks the partial-granule pieces against each other and against the whole granules. Call once, after every add. */
  finish(): void {
    this.sortEdges();
    const G = this.granularity;
    for (let i = 0; i < this.edges; i++) {
      const start = this.edgeStarts[i]!;
      const end = this.edgeEnds[i]!;
      if (i > 0 && start < this.edgeEnds[i - 1]!) this.refuse(i, i - 1);
      const clash = this.whole.firstInRange(Math.floor(start / G), Math.ceil(end / G));
      if (clash >= 0) {
        throw new IcError('CORRUPT', `${this.format}: ${KINDS[this.edgeKinds[i]!]} at host offset 0x${start.toString(16)} overlaps another structure or data`, {
          format: this.format,
          offset: start,
        });
      }
    }
  }

  private refuse(i: number, j: number): never {
    const describe = (k: number) => `${KINDS[this.edgeKinds[k]!]} at 0x${this.edgeStarts[k]!.toString(16)}+${this.edgeEnds[k]! - this.edgeStarts[k]!}`;
    throw new IcError('CORRUPT', `${this.format}: ${describe(i)} overlaps ${describe(j)}`, { format: this.format, offset: this.edgeStarts[i]! });
  }

  private sortEdges(): void {
    if (this.sorted) return;
    const order = Array.from({ length: this.edges }, (_, i) => i).sort((a, b) => this.edgeStarts[a]! - this.edgeStarts[b]!);
    const starts = new Float64Array(this.edgeStarts.length);
    const ends = new Float64Array(this.edgeEnds.length);
    const kinds = new Uint8Array(this.edgeKinds.length);
    order.forEach((from, to) => {
      starts[to] = this.edgeStarts[from]!;
      ends[to] = this.edgeEnds[from]!;
      kinds[to] = this.edgeKinds[from]!;
    });
    this.edgeStarts = starts;
    this.edgeEnds = ends;
    this.edgeKinds = kinds;
    this.sorted = true;
  }

  /** True when any referenced byte lies in [offset, offset+length). Call after finish(). */
  overlaps(offset: number, length: number): boolean {
    if (length <= 0) return false;
    const G = this.granularity;
    const end = offset + length;
    // A whole granule referenced inside the range, or one the range touches.
    if (this.whole.firstInRange(Math.floor(offset / G), Math.ceil(end / G)) >= 0) {
      // The granule may only partly overlap [offset, end): whole granules are fully referenced, so any touch counts.
      return true;
    }
    // Edges: binary search for the first edge ending after offset.
    let low = 0;
    let high = this.edges;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.edgeEnds[middle]! <= offset) low = middle + 1;
      else high = middle;
    }
    // Ends are not sorted when edges are sorted by start, but edges do not overlap after finish(), so they are.
    return low < this.edges && this.edgeStarts[low]! < end;
  }
}
