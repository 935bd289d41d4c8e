/**
 * A set of non-negative integers (cluster numbers) as a paged bitmap: pages of 65,536 bits are allocated when
 * first touched, so memory follows the clusters actually used, not the largest number. One bit per cluster:
 * 2 MiB for the 2^24 clusters of a 1 TiB image with 64 KiB clusters.
 */
const PAGE_BITS = 65536;
const PAGE_WORDS = PAGE_BITS / 32;

function popcount(word: number): number {
  let v = word - ((word >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export class ClusterBitmap {
  private readonly pages = new Map<number, Uint32Array>();

  /** Number of pages allocated (for memory accounting in tests). */
  get pageCount(): number {
    return this.pages.size;
  }

  private page(index: number, create: boolean): Uint32Array | undefined {
    let page = this.pages.get(index);
    if (!page && create) {
      page = new Uint32Array(PAGE_WORDS);
      this.pages.set(index, page);
    }
    return page;
  }

  has(cluster: number): boolean {
    const page = this.pages.get(Math.floor(cluster / PAGE_BITS));
    if (!page) return false;
    const bit = cluster % PAGE_BITS;
    return (page[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Adds one cluster; returns false when it was already there. */
  add(cluster: number): boolean {
    const page = this.page(Math.floor(cluster / PAGE_BITS), true)!;
    const bit = cluster % PAGE_BITS;
    const word = bit >>> 5;
    const mask = 1 << (bit & 31);
    if ((page[word]! & mask) !== 0) return false;
    page[word] = page[word]! | mask;
    return true;
  }

  delete(cluster: number): void {
    const page = this.pages.get(Math.floor(cluster / PAGE_BITS));
    if (!page) return;
    const bit = cluster % PAGE_BITS;
    page[bit >>> 5] = page[bit >>> 5]! & ~(1 << (bit & 31));
  }

  /**
   * Adds clusters [start, end). Returns the first one that was already present (nothing is added then), or -1.
   * Works a word at a time, so long runs cost little.
   */
  addRange(start: number, end: number): number {
    const clash = this.firstInRange(start, end);
    if (clash >= 0) return clash;
    this.forWords(start, end, (page, word, mask) => {
      page[word] = page[word]! | mask;
    }, true);
    return -1;
  }

  /** Removes clusters [start, end). */
  deleteRange(start: number, end: number): void {
    this.forWords(start, end, (page, word, mask) => {
      page[word] = page[word]! & ~mask;
    }, false);
  }

  /** The first cluster of [start, end) that is present, or -1. */
  firstInRange(start: number, end: number): number {
    let found = -1;
    this.forWords(
      start,
      end,
      (page, word, mask, base) => {
        if (found >= 0) return;
        const hit = page[word]! & mask;
        if (hit !== 0) found = base + 31 - Math.clz32(hit & -hit);
      },
      false,
    );
    return found;
  }

  /** Number of clusters present in [start, end), or in the whole set without arguments. */
  count(start = 0, end = Number.MAX_SAFE_INTEGER): number {
    if (start === 0 && end === Number.MAX_SAFE_INTEGER) {
      let total = 0;
      for (const page of this.pages.values()) for (let i = 0; i < PAGE_WORDS; i++) if (page[i] !== 0) total += popcount(page[i]!);
      return total;
    }
    let total = 0;
    this.forWords(start, end, (page, word, mask) => {
      total += popcount(page[word]! & mask);
    }, false);
    return total;
  }

  /** The smallest present cluster >= from, or -1. */
  nextSet(from: number): number {
    const pageIndexes = this.sortedPages();
    for (const pageIndex of pageIndexes) {
      const base = pageIndex * PAGE_BITS;
      if (base + PAGE_BITS <= from) continue;
      const page = this.pages.get(pageIndex)!;
      let bit = Math.max(0, from - base);
      while (bit < PAGE_BITS) {
        const word = bit >>> 5;
        const value = page[word]! & (~0 << (bit & 31));
        if (value !== 0) return base + word * 32 + (31 - Math.clz32(value & -value));
        bit = (word + 1) * 32;
      }
    }
    return -1;
  }

  /** Runs [start, end) of present clusters, in increasing order. */
  *runs(): Generator<[number, number]> {
    let runStart = -1;
    let runEnd = -1;
    for (const pageIndex of this.sortedPages()) {
      const page = this.pages.get(pageIndex)!;
      const base = pageIndex * PAGE_BITS;
      for (let word = 0; word < PAGE_WORDS; word++) {
        let value = page[word]!;
        if (value === 0) continue;
        const wordBase = base + word * 32;
        if (value === -1 || value === 0xffffffff) {
          if (runEnd === wordBase) runEnd = wordBase + 32;
          else {
            if (runStart >= 0) yield [runStart, runEnd];
            runStart = wordBase;
            runEnd = wordBase + 32;
          }
          continue;
        }
        while (value !== 0) {
          const low = 31 - Math.clz32(value & -value);
          // length of the run of ones starting at `low`
          const shifted = ~(value >>> low);
          const length = shifted === 0 ? 32 - low : 31 - Math.clz32(shifted & -shifted);
          const at = wordBase + low;
          if (runEnd === at) runEnd = at + length;
          else {
            if (runStart >= 0) yield [runStart, runEnd];
            runStart = at;
            runEnd = at + length;
          }
          value = low + length >= 32 ? 0 : value & ~(((1 << length) - 1) << low);
        }
      }
    }
    if (runStart >= 0) yield [runStart, runEnd];
  }

  private sortedPages(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b);
  }

  /** Calls `visit` for every word overlapping [start, end) with the mask of the bits inside the range. */
  private forWords(start: number, end: number, visit: (page: Uint32Array, word: number, mask: number, base: number) => void, create: boolean): void {
    let at = start;
    while (at < end) {
      const pageIndex = Math.floor(at / PAGE_BITS);
      const pageBase = pageIndex * PAGE_BITS;
      const pageEnd = Math.min(end, pageBase + PAGE_BITS);
      const page = this.page(pageIndex, create);
      if (!page) {
        at = pageEnd;
        continue;
      }
      let bit = at - pageBase;
      const stop = pageEnd - pageBase;
      while (bit < stop) {
        const word = bit >>> 5;
        const from = bit & 31;
        const to = Math.min(32, stop - word * 32);
        const mask = to - from === 32 ? -1 : ((1 << (to - from)) - 1) << from;
        visit(page, word, mask, pageBase + word * 32);
        bit = word * 32 + to;
      }
      at = pageEnd;
    }
  }
}
