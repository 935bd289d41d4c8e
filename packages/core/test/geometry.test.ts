import { describe, expect, it } from 'vitest';
import { candidateClusterSizes, chooseGeometry } from '../src/index.js';

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

/** A planned candidate as chooseGeometry sees it: bytes moved (all of them off the header region), metadata. */
function cost(clusterSize: number, bytesRelocated: number, metadataBytes: number): Parameters<typeof chooseGeometry>[0][number] {
  return {
    candidate: { clusterSize, relocatedElsewhere: bytesRelocated } as Parameters<typeof chooseGeometry>[0][number]['candidate'],
    stats: { clustersKept: 0, clustersRelocated: bytesRelocated / clusterSize, bytesRelocated, zeroClusters: 0, unallocatedClusters: 0 },
    metadataBytes,
    ioBytes: 2 * bytesRelocated + metadataBytes,
  };
}

describe('the geometry chosen', () => {
  const MiB = 1024 * KiB;

  it("stays at the source's size when another moves as much and only writes less metadata (a 1 MiB VHD back to qcow2)", () => {
    // qcow2's tables at 1 MiB clusters on a 32 MiB disk take 7 MiB, at 64 KiB 448 KiB; one 1 MiB block moves either way.
    const costs = [cost(64 * KiB, MiB, 448 * KiB), cost(256 * KiB, MiB, 1792 * KiB), cost(MiB, MiB, 7 * MiB)];
    const choice = chooseGeometry(costs, MiB, false);
    expect(choice.clusterSize).toBe(MiB);
    expect(choice.reason).toMatch(/source's cluster size/);
  });

  it('changes when a smaller size moves less (1 MiB VDI blocks at 64 KiB-aligned offsets)', () => {
    const costs = [cost(64 * KiB, 0, 448 * KiB), cost(256 * KiB, 8 * MiB, 1792 * KiB), cost(MiB, 8 * MiB, 7 * MiB)];
    const choice = chooseGeometry(costs, MiB, false);
    expect(choice.clusterSize).toBe(64 * KiB);
    expect(choice.reason).toMatch(/least I\/O/);
  });

  it('changes to the cheapest of the sizes that move less, not to a cheaper one that moves as much', () => {
    const costs = [cost(64 * KiB, 0, 6 * MiB), cost(MiB, 8 * MiB, 2 * MiB), cost(2 * MiB, 8 * MiB, MiB)];
    expect(chooseGeometry(costs, MiB, false).clusterSize).toBe(64 * KiB);
  });

  it('needs the saving to be at least half the I/O even when fewer bytes move', () => {
    const costs = [cost(64 * KiB, 7 * MiB, 448 * KiB), cost(MiB, 8 * MiB, 2 * MiB)];
    expect(chooseGeometry(costs, MiB, false).clusterSize).toBe(MiB);
  });
});
