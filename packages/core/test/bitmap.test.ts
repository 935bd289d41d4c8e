import { describe, expect, it } from 'vitest';
import { ClusterBitmap } from '../src/sdk/index.js';

const PAGE = 65536;

/** A tiny deterministic generator (xorshift32), so a failure names its seed. */
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
}

/** The model: the same set as sorted runs, computed from a plain Set. */
function runsOf(model: Set<number>): [number, number][] {
  const sorted = [...model].sort((a, b) => a - b);
  const out: [number, number][] = [];
  for (const value of sorted) {
    const last = out[out.length - 1];
    if (last && last[1] === value) last[1]++;
    else out.push([value, value + 1]);
  }
  return out;
}

describe('ClusterBitmap', () => {
  it('matches a Set under random adds, deletes and ranges that fill, empty and refill whole pages', () => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const next = random(seed);
      const bitmap = new ClusterBitmap();
      const model = new Set<number>();
      const span = 4 * PAGE;
      for (let step = 0; step < 200; step++) {
        const pick = next();
        const start = Math.floor(next() * span);
        // Ranges up to two pages long, so some cover whole pages and some end exactly at a page boundary.
        const length = next() < 0.3 ? PAGE - (start % PAGE) : 1 + Math.floor(next() * 2 * PAGE);
        const end = Math.min(span, start + length);
        if (pick < 0.08) {
          // Many single clusters in one page: more runs than a run list keeps, so the page becomes a bitmap.
          const base = Math.floor(next() * 4) * PAGE;
          for (let k = 0; k < 300; k++) {
            const c = base + Math.floor(next() * PAGE);
            expect(bitmap.add(c)).toBe(!model.has(c));
            model.add(c);
          }
        } else if (pick < 0.35) {
          let clash = -1;
          for (let c = start; c < end; c++) if (model.has(c)) {
            clash = c;
            break;
          }
          expect(bitmap.addRange(start, end), `seed ${seed} step ${step}`).toBe(clash);
          if (clash < 0) for (let c = start; c < end; c++) model.add(c);
        } else if (pick < 0.6) {
          bitmap.deleteRange(start, end);
          for (let c = start; c < end; c++) model.delete(c);
        } else if (pick < 0.8) {
          expect(bitmap.add(start)).toBe(!model.has(start));
          model.add(start);
        } else {
          bitmap.delete(start);
          model.delete(start);
        }
        if (step % 20 === 0 || step === 199) {
          expect([...bitmap.runs()], `seed ${seed} step ${step}`).toEqual(runsOf(model));
          expect(bitmap.count()).toBe(model.size);
          const probe = Math.floor(next() * span);
          expect(bitmap.has(probe)).toBe(model.has(probe));
          const from = Math.floor(next() * span);
          const expected = [...model].filter((c) => c >= from).sort((a, b) => a - b)[0] ?? -1;
          expect(bitmap.nextSet(from)).toBe(expected);
          expect(bitmap.count(from, from + PAGE)).toBe([...model].filter((c) => c >= from && c < from + PAGE).length);
        }
      }
    }
  });

  it('holds long runs as runs, fragmented pages as bitmaps, and drops empty pages', () => {
    const bitmap = new ClusterBitmap();
    const clusters = 2 ** 24; // every cluster of a 1 TiB image with 64 KiB clusters
    // As a preallocated image is walked: runs that end inside pages, and single clusters between them.
    for (let at = 0; at < clusters; at += 8193) {
      bitmap.addRange(at, Math.min(clusters, at + 8192));
      if (at + 8192 < clusters) bitmap.add(at + 8192);
    }
    expect(bitmap.count()).toBe(clusters);
    expect([...bitmap.runs()]).toEqual([[0, clusters]]);
    expect(bitmap.pageCount).toBe(0);
    // A cleared cluster splits a run; a page of many runs becomes a bitmap, and a bitmap that fills up one run again.
    bitmap.delete(5 * PAGE + 7);
    expect(bitmap.has(5 * PAGE + 7)).toBe(false);
    expect(bitmap.has(5 * PAGE + 8)).toBe(true);
    expect(bitmap.has(6 * PAGE + 7)).toBe(true);
    expect(bitmap.pageCount).toBe(0);
    for (let c = 9 * PAGE; c < 9 * PAGE + 1000; c += 2) bitmap.delete(c);
    expect(bitmap.pageCount).toBe(1);
    expect(bitmap.count(9 * PAGE, 10 * PAGE)).toBe(PAGE - 500);
    for (let c = 9 * PAGE; c < 9 * PAGE + 1000; c += 2) expect(bitmap.add(c)).toBe(true);
    expect(bitmap.add(5 * PAGE + 7)).toBe(true);
    expect(bitmap.pageCount).toBe(0);
    expect([...bitmap.runs()]).toEqual([[0, clusters]]);
    bitmap.deleteRange(0, clusters);
    expect(bitmap.count()).toBe(0);
    expect(bitmap.nextSet(0)).toBe(-1);
    expect(bitmap.pageCount).toBe(0);
  });
});
