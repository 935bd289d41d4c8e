import { AppendAllocator } from './allocator.js';
import { alignUp, IcError, isPowerOfTwo, pushExtent, type BackingReference, type Driver, type Extent, type ImageInfo } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';

export interface ImageContent {
  virtualSize: number;
  /** Cluster size of the new image; the driver's nearest supported size to 64 KiB by default. */
  clusterSize?: number;
  backing?: BackingReference;
  /** info() of the backing image, for formats that record facts about their parent. */
  backingInfo?: ImageInfo;
  /** Guest data to store; ranges may be unaligned but must not overlap. */
  data: readonly { guestOffset: number; bytes: Uint8Array }[];
  /** Guest ranges that read as zero and hide the backing file (cluster-aligned). */
  zero?: readonly { guestOffset: number; length: number }[];
  /** Order of the data clusters in the file: guest order (default) or reversed (a fragmented file). */
  hostOrder?: 'guest' | 'reverse';
}

/**
 * Writes a complete image of any in-place-target format into an empty BlockIO: the data clusters first, in
 * guest order after the header region, then the driver's metadata and header, exactly as an in-place
 * conversion would. Used for the built-in sample, benchmarks and tests that need images without qemu-img.
 */
export async function writeImage(io: BlockIO, driver: Driver, content: ImageContent): Promise<void> {
  const factory = driver.inPlace;
  if (!factory) throw new IcError('UNSUPPORTED', `the ${driver.name} driver cannot build images`);
  const clusterSize = content.clusterSize ?? Math.min(factory.clusterSizes.max, Math.max(factory.clusterSizes.min, 65536));
  if (!isPowerOfTwo(clusterSize)) throw new IcError('INVALID', `cluster size ${clusterSize} is not a power of two`);
  const { virtualSize } = content;
  const target = factory.create({
    source: { virtualSize, clusterSize, ...(content.backing ? { backing: content.backing } : {}) },
    clusterSize,
    options: {},
    ...(content.backingInfo ? { backingInfo: content.backingInfo } : {}),
  });
  const [problem] = target.problems;
  if (problem) throw new IcError('UNSUPPORTED', `${driver.name}: ${problem}`);

  // Gather guest clusters touched by data, assemble their content.
  const clusters = new Map<number, Uint8Array>();
  for (const { guestOffset, bytes } of content.data) {
    if (guestOffset < 0 || guestOffset + bytes.length > virtualSize) throw new IcError('INVALID', `data at ${guestOffset}+${bytes.length} is outside the disk`);
    for (let at = 0; at < bytes.length; ) {
      const guest = guestOffset + at;
      const index = Math.floor(guest / clusterSize);
      const within = guest - index * clusterSize;
      const take = Math.min(clusterSize - within, bytes.length - at);
      let cluster = clusters.get(index);
      if (!cluster) clusters.set(index, (cluster = new Uint8Array(clusterSize)));
      cluster.set(bytes.subarray(at, at + take), within);
      at += take;
    }
  }
  // A target that needs a data cluster (TargetLayout.needsDataCluster) gets its last cluster as zeros, as in place.
  if (target.layout.needsDataCluster && clusters.size === 0 && virtualSize > 0) clusters.set(Math.ceil(virtualSize / clusterSize) - 1, new Uint8Array(clusterSize));
  const zeroClusters = new Set<number>();
  if ((content.zero?.length ?? 0) > 0 && !target.layout.zeroExtents && content.backing) {
    throw new IcError('UNSUPPORTED', `${driver.name}: this image cannot record zero clusters over a backing file`);
  }
  // Without zero-extent support (and without a backing file) zero runs are simply left unallocated.
  for (const { guestOffset, length } of target.layout.zeroExtents ? (content.zero ?? []) : []) {
    for (let at = guestOffset; at < guestOffset + length; at += clusterSize) zeroClusters.add(Math.floor(at / clusterSize));
  }

  const mapping: Extent[] = [];
  // A prefixed placement (VHD's sector bitmaps) needs `prefix` free bytes before each data cluster, which the
  // target writes: each cluster then takes the cluster-aligned room of its prefix as well.
  const placement = target.layout.placement;
  const prefix = placement?.kind === 'prefixed' ? placement.prefix : 0;
  const lead = alignUp(prefix, clusterSize);
  const firstHost = alignUp(target.layout.headerRegionSize, clusterSize) + lead;
  const clusterCount = Math.ceil(virtualSize / clusterSize);
  const dataIndexes = [...clusters.keys()].sort((a, b) => a - b);
  const hostOf = (rank: number) => firstHost + (content.hostOrder === 'reverse' ? dataIndexes.length - 1 - rank : rank) * (lead + clusterSize);
  const isPrefix = (offset: number, length: number) => {
    if (prefix === 0) return false;
    const rank = Math.ceil((offset + length - firstHost) / (lead + clusterSize));
    const host = firstHost + rank * (lead + clusterSize);
    return rank >= 0 && rank < dataIndexes.length && offset >= host - prefix && offset + length <= host;
  };
  let next = 0;
  const emitGap = (from: number, to: number) => {
    for (let index = from; index < to; index++) {
      const guestOffset = index * clusterSize;
      const length = Math.min(clusterSize, virtualSize - guestOffset);
      pushExtent(mapping, { kind: zeroClusters.has(index) ? 'zero' : 'unallocated', guestOffset, length });
    }
  };
  for (const [rank, index] of dataIndexes.entries()) {
    emitGap(next, index);
    const guestOffset = index * clusterSize;
    await io.write(hostOf(rank), clusters.get(index)!);
    pushExtent(mapping, { kind: 'data', guestOffset, length: Math.min(clusterSize, virtualSize - guestOffset), hostOffset: hostOf(rank) });
    next = index + 1;
  }
  if (zeroClusters.size > 0) emitGap(next, clusterCount);
  else if (next < clusterCount) pushExtent(mapping, { kind: 'unallocated', guestOffset: next * clusterSize, length: virtualSize - next * clusterSize });

  const allocator = new AppendAllocator(firstHost + dataIndexes.length * (lead + clusterSize), clusterSize, target.layout.maxHostOffset);
  async function* batches(): AsyncGenerator<readonly Extent[]> {
    yield mapping;
  }
  const build = await target.build(batches(), allocator, {
    write: async (offset, data) => {
      if (!allocator.owns(offset, data.length) && !isPrefix(offset, data.length)) throw new IcError('INTERNAL', `${driver.name} target wrote ${data.length} bytes at ${offset}, outside its allocations`);
      await io.write(offset, data);
    },
  });
  const region = new Uint8Array(Math.min(target.layout.headerRegionSize, alignUp(build.header.length, 512)));
  region.set(build.header);
  await io.write(0, region);
  if ((await io.size()) < build.fileSize) await io.truncate(build.fileSize);
  await io.flush();
}
