import { describe, expect, it } from 'vitest';
import { candidateClusterSizes } from '../src/index.js';

const factory = { clusterSizes: { min: 512, max: 2 * 1024 * 1024 }, create: () => { throw new Error('not built'); } };
const KiB = 1024;

describe('candidate cluster sizes', () => {
  it('are the source size and two steps either side', () => {
    expect(candidateClusterSizes(factory, 64 * KiB, {})).toEqual([16, 32, 64, 128, 256].map((k) => k * KiB));
    expect(candidateClusterSizes(factory, 4 * KiB, {})).toEqual([1, 2, 4, 8, 16].map((k) => k * KiB));
  });

  it('reach down to 64 KiB below a large source size (1 MiB VDI blocks at unaligned offsets stay at 64 KiB)', () => {
    expect(candidateClusterSizes(factory, 1024 * KiB, {})).toEqual([64, 128, 256, 512, 1024, 2048].map((k) => k * KiB));
  });

  it("the user's size alone when asked for", () => {
    expect(candidateClusterSizes({ ...factory, clusterSizeOption: 'cluster_size' }, 1024 * KiB, { cluster_size: 4096 })).toEqual([4096]);
  });
});
