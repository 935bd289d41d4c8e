import type { Extent } from '../sdk/index.js';

const KINDS: readonly Extent['kind'][] = ['data', 'zero', 'unallocated', 'compressed', 'encrypted'];

/**
 * The source map kept between the engine's two walks, as typed arrays (kind, length, host offset; guest
 * offsets follow from the lengths), while it stays under a budget: the second walk then costs nothing for the
 * common case of an image whose map is a few thousand runs, whatever its size. Past the budget the cache gives
 * up and the second walk reads the source again.
 */
export class ExtentCache {
  private kinds = new Uint8Array(1024);
  private lengths = new Float64Array(1024);
  private hosts = new Float64Array(1024);
  private count = 0;
  private start = -1;
  /** False once the map outgrew the budget. */
  complete = true;

  constructor(private readonly budget: number) {}

  add(extent: Extent): void {
    if (!this.complete) return;
    if (this.count === this.budget) {
      this.complete = false;
      this.kinds = new Uint8Array(0);
      this.lengths = new Float64Array(0);
      this.hosts = new Float64Array(0);
      return;
    }
    if (this.start < 0) this.start = extent.guestOffset;
    if (this.count === this.kinds.length) {
      const size = Math.min(this.budget, this.count * 2);
      const kinds = new Uint8Array(size);
      kinds.set(this.kinds);
      const lengths = new Float64Array(size);
      lengths.set(this.lengths);
      const hosts = new Float64Array(size);
      hosts.set(this.hosts);
      this.kinds = kinds;
      this.lengths = lengths;
      this.hosts = hosts;
    }
    this.kinds[this.count] = KINDS.indexOf(extent.kind);
    this.lengths[this.count] = extent.length;
    this.hosts[this.count] = 'hostOffset' in extent && extent.hostOffset !== undefined ? extent.hostOffset : -1;
    this.count++;
  }

  /** The cached extents again, in batches. */
  *batches(size = 4096): Generator<Extent[]> {
    let guest = Math.max(0, this.start);
    for (let first = 0; first < this.count; first += size) {
      const out: Extent[] = [];
      for (let i = first; i < Math.min(this.count, first + size); i++) {
        const kind = KINDS[this.kinds[i]!]!;
        const length = this.lengths[i]!;
        const host = this.hosts[i]!;
        out.push((host >= 0 ? { kind, guestOffset: guest, length, hostOffset: host } : { kind, guestOffset: guest, length }) as Extent);
        guest += length;
      }
      yield out;
    }
  }
}
