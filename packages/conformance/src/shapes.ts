import type { ImageContent } from '@ic/core';

/** A named image layout used by the conformance kit and the conversion matrix. */
export interface Shape {
  name: string;
  /** Whether the shape needs backing-file support from the formats involved. */
  needsBacking?: boolean;
  /** Whether the shape uses zero extents. */
  usesZero?: boolean;
  content(clusterSize: number): ImageContent;
}

/** Deterministic bytes: different for every offset and seed, never all zero. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = (state >>> 0) & 0xff || 1;
  }
  return out;
}

const MiB = 1024 * 1024;

/**
 * Shapes are sized in clusters; past 64 KiB clusters the counts shrink so that no shape holds more than about
 * 64 MiB of guest space per cluster-count (a 2 MiB-cluster format gets 32 clusters where a 64 KiB one gets 64),
 * never below what the shape's layout needs.
 */
function clusters(wanted: number, clusterSize: number, atLeast: number): number {
  return Math.max(atLeast, Math.min(wanted, Math.floor((64 * MiB) / clusterSize)));
}

export const shapes: readonly Shape[] = [
  { name: 'empty', content: () => ({ virtualSize: 8 * MiB, data: [] }) },
  {
    name: 'full',
    content: (clusterSize) => {
      const virtualSize = Math.max(clusters(16, clusterSize, 2) * clusterSize, 2 * MiB);
      return { virtualSize, data: [{ guestOffset: 0, bytes: pattern(virtualSize, 1) }] };
    },
  },
  {
    name: 'checkerboard',
    content: (clusterSize) => {
      const count = clusters(64, clusterSize, 8);
      const virtualSize = count * clusterSize;
      const data = [];
      for (let cluster = 0; cluster < count; cluster += 2) data.push({ guestOffset: cluster * clusterSize, bytes: pattern(clusterSize, cluster + 7) });
      return { virtualSize, data };
    },
  },
  {
    name: 'unaligned writes and the last byte',
    content: (clusterSize) => {
      const virtualSize = clusters(40, clusterSize, 8) * clusterSize + 512; // not a cluster multiple
      return {
        virtualSize,
        data: [
          { guestOffset: 1000, bytes: pattern(3000, 2) },
          { guestOffset: 5 * clusterSize - 700, bytes: pattern(1400, 3) },
          { guestOffset: virtualSize - 100, bytes: pattern(100, 4) },
        ],
      };
    },
  },
  {
    name: 'zero extents',
    usesZero: true,
    content: (clusterSize) => ({
      virtualSize: clusters(32, clusterSize, 16) * clusterSize,
      data: [{ guestOffset: 3 * clusterSize, bytes: pattern(2 * clusterSize, 5) }],
      zero: [
        { guestOffset: 0, length: 2 * clusterSize },
        { guestOffset: 10 * clusterSize, length: 4 * clusterSize },
      ],
    }),
  },
  {
    name: 'spread over a large sparse disk',
    content: (clusterSize) => {
      const virtualSize = 6 * 1024 * MiB;
      return {
        virtualSize,
        data: [
          { guestOffset: 0, bytes: pattern(clusterSize, 6) },
          { guestOffset: Math.floor((2500 * MiB) / clusterSize) * clusterSize, bytes: pattern(clusterSize, 7) },
          { guestOffset: virtualSize - clusterSize, bytes: pattern(clusterSize, 8) },
        ],
      };
    },
  },
  {
    name: 'backing reference',
    needsBacking: true,
    content: (clusterSize) => ({
      virtualSize: 16 * clusterSize,
      backing: { name: 'base.img' },
      data: [{ guestOffset: clusterSize, bytes: pattern(clusterSize, 9) }],
    }),
  },
];

