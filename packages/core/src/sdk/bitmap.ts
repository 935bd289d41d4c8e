/**
 * A set of non-negative integers (cluster numbers), in pages of 65,536 clusters. A page holds its clusters as a
 * short list of runs while it has few (a whole page of a preallocated image is one run), and as a bitmap of
 * 8 KiB once it has more than MAX_RUNS; pages with nothing in them are not kept. So memory follows how
 * fragmented the set is, never the largest number: one bit per cluster at most (2 MiB for the 2^24 clusters of a
 * 1 TiB image with 64 KiB clusters), a few bytes per page for long runs.
 */
const PAGE_BITS = 65536;
const PAGE_WORDS = PAGE_BITS / 32;
/** Runs a page keeps as a list; one more and it becomes a bitmap (128 runs as numbers ~ 2 KiB, a bitmap 8 KiB). */
const MAX_RUNS = 128;

function popcount(word: number): number {
  let v = word - ((word >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** One page's clusters; bit numbers are relative to the page, ranges [from, to) inside 0..PAGE_BITS. */
interface Page {
  /** Clusters present. */
  bits: number;
  has(bit: number): boolean;
  /** Adds [from, to); returns how many were not present. */
  set(from: number, to: number): number;
  /** Removes [from, to); returns how many were present. */
  clear(from: number, to: number): number;
  /** The first present bit of [from, to), or -1. */
  first(from: number, to: number): number;
  count(from: number, to: number): number;
  /** Runs [from, to) of present bits, increasing. */
  runs(): Iterable<[number, number]>;
}

/** A page as sorted, disjoint, non-adjacent runs. */
class RunPage implements Page {
  bits = 0;
  readonly starts: number[] = [];
  readonly ends: number[] = [];

  /** Index of the first run ending after `bit` (or at it, with `touching`), i.e. the first that may hold or meet it. */
  private after(bit: number, touching: boolean): number {
    let low = 0;
    let high = this.ends.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.ends[mid]! > bit || (touching && this.ends[mid] === bit)) high = mid;
      else low = mid + 1;
    }
    return low;
  }

  has(bit: number): boolean {
    const i = this.after(bit, false);
    return i < this.starts.length && this.starts[i]! <= bit;
  }

  set(from: number, to: number): number {
    const i = this.after(from, true);
    let j = i;
    let start = from;
    let end = to;
    let present = 0;
    while (j < this.starts.length && this.starts[j]! <= to) {
      present += Math.max(0, Math.min(to, this.ends[j]!) - Math.max(from, this.starts[j]!));
      start = Math.min(start, this.starts[j]!);
      end = Math.max(end, this.ends[j]!);
      j++;
    }
    this.starts.splice(i, j - i, start);
    this.ends.splice(i, j - i, end);
    const added = to - from - present;
    this.bits += added;
    return added;
  }

  clear(from: number, to: number): number {
    const i = this.after(from, false);
    let j = i;
    const keptStarts: number[] = [];
    const keptEnds: number[] = [];
    let removed = 0;
    while (j < this.starts.length && this.starts[j]! < to) {
      const s = this.starts[j]!;
      const e = this.ends[j]!;
      removed += Math.min(to, e) - Math.max(from, s);
      if (s < from) {
        keptStarts.push(s);
        keptEnds.push(from);
      }
      if (e > to) {
        keptStarts.push(to);
        keptEnds.push(e);
      }
      j++;
    }
    if (j > i) {
      this.starts.splice(i, j - i, ...keptStarts);
      this.ends.splice(i, j - i, ...keptEnds);
    }
    this.bits -= removed;
    return removed;
  }

  first(from: number, to: number): number {
    const i = this.after(from, false);
    if (i >= this.starts.length || this.starts[i]! >= to) return -1;
    return Math.max(from, this.starts[i]!);
  }

  count(from: number, to: number): number {
    let total = 0;
    for (let i = this.after(from, false); i < this.starts.length && this.starts[i]! < to; i++) {
      total += Math.min(to, this.ends[i]!) - Math.max(from, this.starts[i]!);
    }
    return total;
  }

  *runs(): Generator<[number, number]> {
    for (let i = 0; i < this.starts.length; i++) yield [this.starts[i]!, this.ends[i]!];
  }
}

/** A page as one bit per cluster. */
class BitPage implements Page {
  bits = 0;
  readonly words = new Uint32Array(PAGE_WORDS);

  static of(page: Page): BitPage {
    const out = new BitPage();
    for (const [from, to] of page.runs()) out.set(from, to);
    return out;
  }

  has(bit: number): boolean {
    return (this.words[bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  /** Calls `visit` for every word overlapping [from, to) with the mask of the bits inside it. */
  private forWords(from: number, to: number, visit: (word: number, mask: number) => void): void {
    let bit = from;
    while (bit < to) {
      const word = bit >>> 5;
      const low = bit & 31;
      const high = Math.min(32, to - word * 32);
      visit(word, high - low === 32 ? -1 : ((1 << (high - low)) - 1) << low);
      bit = word * 32 + high;
    }
  }

  set(from: number, to: number): number {
    let added = 0;
    this.forWords(from, to, (word, mask) => {
      added += popcount(~this.words[word]! & mask);
      this.words[word] = this.words[word]! | mask;
    });
    this.bits += added;
    return added;
  }

  clear(from: number, to: number): number {
    let removed = 0;
    this.forWords(from, to, (word, mask) => {
      removed += popcount(this.words[word]! & mask);
      this.words[word] = this.words[word]! & ~mask;
    });
    this.bits -= removed;
    return removed;
  }

  first(from: number, to: number): number {
    let found = -1;
    this.forWords(from, to, (word, mask) => {
      if (found >= 0) return;
      const hit = this.words[word]! & mask;
      if (hit !== 0) found = word * 32 + 31 - Math.clz32(hit & -hit);
    });
    return found;
  }

  count(from: number, to: number): number {
    let total = 0;
    this.forWords(from, to, (word, mask) => {
      total += popcount(this.words[word]! & mask);
    });
    return total;
  }

  *runs(): Generator<[number, number]> {
    let runStart = -1;
    let runEnd = -1;
    for (let word = 0; word < PAGE_WORDS; word++) {
      let value = this.words[word]!;
      if (value === 0) continue;
      const wordBase = word * 32;
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
    if (runStart >= 0) yield [runStart, runEnd];
  }
}

export class ClusterBitmap {
  private readonly pages = new Map<number, Page>();
  private sorted: number[] | undefined;

  /** Number of pages held as bitmaps (the ones that cost 8 KiB each; for memory accounting in tests). */
  get pageCount(): number {
    let bitmaps = 0;
    for (const page of this.pages.values()) if (page instanceof BitPage) bitmaps++;
    return bitmaps;
  }

  has(cluster: number): boolean {
    const page = this.pages.get(Math.floor(cluster / PAGE_BITS));
    return page !== undefined && page.has(cluster % PAGE_BITS);
  }

  /** Adds one cluster; returns false when it was already there. */
  add(cluster: number): boolean {
    let added = false;
    this.forPages(cluster, cluster + 1, true, (page, from, to) => {
      added = page.set(from, to) === 1;
    });
    return added;
  }

  delete(cluster: number): void {
    this.deleteRange(cluster, cluster + 1);
  }

  /**
   * Adds clusters [start, end). Returns the first one that was already present (nothing is added then), or -1.
   * Long runs cost little.
   */
  addRange(start: number, end: number): number {
    const clash = this.firstInRange(start, end);
    if (clash >= 0) return clash;
    this.forPages(start, end, true, (page, from, to) => {
      page.set(from, to);
    });
    return -1;
  }

  /** Removes clusters [start, end). */
  deleteRange(start: number, end: number): void {
    this.forPages(start, end, false, (page, from, to) => {
      page.clear(from, to);
    });
  }

  /** The first cluster of [start, end) that is present, or -1. */
  firstInRange(start: number, end: number): number {
    let found = -1;
    this.forPages(start, end, false, (page, from, to, base) => {
      if (found >= 0) return;
      const bit = page.first(from, to);
      if (bit >= 0) found = base + bit;
    });
    return found;
  }

  /** Number of clusters present in [start, end), or in the whole set without arguments. */
  count(start = 0, end = Number.MAX_SAFE_INTEGER): number {
    let total = 0;
    if (start === 0 && end === Number.MAX_SAFE_INTEGER) {
      for (const page of this.pages.values()) total += page.bits;
      return total;
    }
    this.forPages(start, end, false, (page, from, to) => {
      total += page.count(from, to);
    });
    return total;
  }

  /** The smallest present cluster >= from, or -1. */
  nextSet(from: number): number {
    for (const pageIndex of this.sortedPages()) {
      const base = pageIndex * PAGE_BITS;
      if (base + PAGE_BITS <= from) continue;
      const bit = this.pages.get(pageIndex)!.first(Math.max(0, from - base), PAGE_BITS);
      if (bit >= 0) return base + bit;
    }
    return -1;
  }

  /** Runs [start, end) of present clusters, in increasing order. */
  *runs(): Generator<[number, number]> {
    let runStart = -1;
    let runEnd = -1;
    for (const pageIndex of this.sortedPages()) {
      const base = pageIndex * PAGE_BITS;
      for (const [from, to] of this.pages.get(pageIndex)!.runs()) {
        if (runEnd === base + from) runEnd = base + to;
        else {
          if (runStart >= 0) yield [runStart, runEnd];
          runStart = base + from;
          runEnd = base + to;
        }
      }
    }
    if (runStart >= 0) yield [runStart, runEnd];
  }

  private sortedPages(): number[] {
    this.sorted ??= [...this.pages.keys()].sort((a, b) => a - b);
    return this.sorted;
  }

  /**
   * Calls `visit` for each page overlapping [start, end) with the part of the range inside it (page-relative) and
   * the page's first cluster. With `create`, a missing page is made; afterwards a page that has become empty is
   * dropped, and a run list with too many runs becomes a bitmap (and a full bitmap one run again).
   */
  private forPages(start: number, end: number, create: boolean, visit: (page: Page, from: number, to: number, base: number) => void): void {
    let at = start;
    while (at < end) {
      const pageIndex = Math.floor(at / PAGE_BITS);
      const base = pageIndex * PAGE_BITS;
      const pageEnd = Math.min(end, base + PAGE_BITS);
      let page = this.pages.get(pageIndex);
      if (!page && create) {
        page = new RunPage();
        this.pages.set(pageIndex, page);
        this.sorted = undefined;
      }
      if (page) {
        visit(page, at - base, pageEnd - base, base);
        if (page.bits === 0) {
          this.pages.delete(pageIndex);
          this.sorted = undefined;
        } else if (page instanceof RunPage && page.starts.length > MAX_RUNS) {
          this.pages.set(pageIndex, BitPage.of(page));
        } else if (page instanceof BitPage && page.bits === PAGE_BITS) {
          const full = new RunPage();
          full.set(0, PAGE_BITS);
          this.pages.set(pageIndex, full);
        }
      }
      at = pageEnd;
    }
  }
}
