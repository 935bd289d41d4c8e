import { canMerge, type Extent } from '../sdk/index.js';

const KIND_CODES: Record<Extent['kind'], number> = { data: 1, zero: 2, unallocated: 3, compressed: 4, encrypted: 5 };

/**
 * Merges a stream of extents the canonical way (adjacent compatible extents become one) and hands each finished
 * extent on. Two maps that describe the same mapping give the same finished extents, however their drivers split
 * them.
 */
export class ExtentMerger {
  private pending: Extent | undefined;

  constructor(private readonly emit: (extent: Extent) => void) {}

  push(extent: Extent): void {
    if (extent.length <= 0) return;
    if (this.pending && canMerge(this.pending, extent)) {
      this.pending.length += extent.length;
      return;
    }
    if (this.pending) this.emit(this.pending);
    this.pending = { ...extent };
  }

  finish(): void {
    if (this.pending) this.emit(this.pending);
    this.pending = undefined;
  }
}

/** Mixes one 32-bit word into a 32-bit hash state (MurmurHash3's step). */
function mix(state: number, word: number): number {
  let k = Math.imul(word, 0xcc9e2d51);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, 0x1b873593);
  const h = state ^ k;
  return (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
}

/**
 * A fingerprint of a mapping (two independent 32-bit hashes over every merged extent's kind, guest range and host
 * offset, plus their count): the verify step compares the converted image's map with the planned one without
 * keeping either.
 */
export class MappingDigest {
  private a = 0x9747b28c;
  private b = 0x2f5a6e13;
  private count = 0;
  private readonly merger = new ExtentMerger((extent) => this.add(extent));
  /** The first few finished extents, for a message when two digests differ. */
  readonly head: Extent[] = [];

  /** `identity`: a disk whose every byte lies at its own offset (raw, fixed VHD) cannot tell empty from data. */
  constructor(private readonly identity = false) {}

  push(extent: Extent): void {
    if (this.identity && extent.kind !== 'data') this.merger.push({ kind: 'data', guestOffset: extent.guestOffset, length: extent.length, hostOffset: extent.guestOffset });
    else this.merger.push(extent);
  }

  private add(extent: Extent): void {
    if (this.head.length < 4) this.head.push({ ...extent });
    const host = 'hostOffset' in extent && extent.hostOffset !== undefined ? extent.hostOffset : -1;
    for (const value of [KIND_CODES[extent.kind], extent.guestOffset, extent.length, host]) {
      const low = value >>> 0;
      const high = Math.floor(value / 4294967296) | 0;
      this.a = mix(mix(this.a, low), high);
      this.b = mix(mix(this.b, high ^ 0x5bd1e995), low ^ 0x27d4eb2f);
    }
    this.count++;
  }

  /** Finishes the stream; the digest as text. */
  value(): string {
    this.merger.finish();
    return `${this.count}:${(this.a >>> 0).toString(16)}:${(this.b >>> 0).toString(16)}`;
  }
}
