import {
  IcError,
  type InPlaceTarget,
  type InPlaceTargetFactory,
  type MappingBatches,
  type PlanSummary,
  type SpaceAllocator,
  type TargetBuild,
  type TargetEstimate,
  type TargetLayout,
  type TargetRequest,
} from '@ic/core/sdk';
import { encodeBat } from './bat.js';
import { MAX_CLUSTERS } from './create.js';
import { BAT_ENTRY_SIZE, FORMAT, HEADER_LENGTH, newHeader, SECTOR_SIZE, serializeHeader } from './header.js';

/**
 * The most header bytes the engine commits (its intent record keeps the old and the new header region; @ic/core
 * MAX_HEAD_LENGTH, 64 MiB, which a test compares with this). The Parallels header region holds the whole BAT, so
 * a disk of more than 16,777,200 clusters (just under 16 TiB at 1 MiB clusters, 1 TiB at 64 KiB) cannot be produced in place.
 */
export const ENGINE_HEAD_LIMIT = 64 * 1024 * 1024;

/**
 * Smallest and largest cluster sizes offered to the engine (qemu accepts any multiple of 512). The header region
 * is padded to a cluster (data_off), so a cluster larger than the engine's header limit could never be committed.
 */
export const MIN_TARGET_CLUSTER = 4096;
export const MAX_TARGET_CLUSTER = ENGINE_HEAD_LIMIT;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build Parallels BAT' });
}

/**
 * A "WithouFreSpacExt" image (what qemu-img create makes) built around data clusters already in the file. Its BAT
 * counts in clusters, so every data cluster must be cluster-aligned in the file; the BAT is part of the header
 * region (64 + 4 * clusters bytes at offset 0, padded to a cluster), written by the commit. Nothing is allocated.
 */
export class ParallelsInPlaceTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly batEntries: number;

  constructor(private readonly request: TargetRequest) {
    const clusterSize = request.clusterSize;
    if (!Number.isSafeInteger(clusterSize) || clusterSize <= 0 || clusterSize % SECTOR_SIZE !== 0) {
      throw new IcError('INVALID', `${FORMAT}: cluster size ${clusterSize} is not a multiple of 512`);
    }
    const { virtualSize, backing } = request.source;
    const header = newHeader(virtualSize, clusterSize);
    this.batEntries = header.batEntries;
    this.layout = {
      clusterSize,
      hostAlignment: clusterSize,
      headerRegionSize: header.dataOff * SECTOR_SIZE,
      // A BAT entry is a u32 count of clusters.
      maxHostOffset: Math.min(Number.MAX_SAFE_INTEGER, (MAX_CLUSTERS - 1) * clusterSize + clusterSize),
      zeroExtents: false,
      // qemu-img check counts the file past the last data cluster as leaked: the engine packs the file.
      unreferencedClustersLeak: true,
      // qemu 7.2 measures the image's end from the highest data cluster (from 0 with none): an image without data
      // whose header region spans more than one cluster (a BAT past 4 KiB - 64 bytes) would show the rest leaked.
      needsDataCluster: header.dataOff * SECTOR_SIZE > clusterSize,
    };
    const problems: string[] = [];
    if (backing) problems.push(`a Parallels image cannot name a backing file ("${backing.name}")`);
    if (virtualSize % SECTOR_SIZE !== 0) problems.push(`the virtual size ${virtualSize} is not a multiple of 512 bytes, which Parallels requires`);
    if (virtualSize >= MAX_CLUSTERS * clusterSize) problems.push(`the virtual size ${virtualSize} needs more than 2^32 clusters of ${clusterSize} bytes`);
    this.problems = problems;
  }

  /**
   * All of the metadata is in the header region. A header bigger than the engine commits is refused here, before
   * anything is written (it is no limit of the format: writeImage and the build itself handle any size).
   */
  estimate(_summary: PlanSummary): TargetEstimate {
    const headerBytes = HEADER_LENGTH + BAT_ENTRY_SIZE * this.batEntries;
    if (headerBytes > ENGINE_HEAD_LIMIT) {
      throw new IcError(
        'UNSUPPORTED',
        `${FORMAT}: the header and BAT would take ${headerBytes} bytes at offset 0 (${this.batEntries} clusters of ${this.layout.clusterSize} bytes); this engine commits at most ${ENGINE_HEAD_LIMIT} header bytes: choose a larger cluster_size`,
        { format: FORMAT },
      );
    }
    return { metadataBytes: 0 };
  }

  async build(mapping: MappingBatches, space: SpaceAllocator): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize, headerRegionSize, maxHostOffset } = this.layout;
    const { virtualSize } = this.request.source;
    const bat = new Uint32Array(this.batEntries);
    let expected = 0;
    let hostEnd = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== expected || extent.length <= 0) throw internal(`mapping extent at guest ${extent.guestOffset} does not continue from ${expected}`);
        const extentEnd = extent.guestOffset + extent.length;
        if (extent.guestOffset % clusterSize !== 0 || (extentEnd % clusterSize !== 0 && extentEnd !== virtualSize)) {
          throw internal(`mapping extent ${extent.guestOffset}+${extent.length} is not aligned to the ${clusterSize}-byte cluster size`);
        }
        expected = extentEnd;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data') throw internal(`mapping holds a ${extent.kind} extent; only data and unallocated can be built`);
        const clusters = Math.ceil(extent.length / clusterSize);
        if (extent.hostOffset % clusterSize !== 0 || extent.hostOffset < headerRegionSize || extent.hostOffset + clusters * clusterSize > maxHostOffset) {
          throw internal(`data at host 0x${extent.hostOffset.toString(16)} is not cluster-aligned past the ${headerRegionSize}-byte header region`);
        }
        const first = extent.guestOffset / clusterSize;
        const firstValue = extent.hostOffset / clusterSize;
        for (let k = 0; k < clusters; k++) bat[first + k] = firstValue + k;
        hostEnd = Math.max(hostEnd, extent.hostOffset + clusters * clusterSize);
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    const header = newHeader(virtualSize, clusterSize);
    const out = new Uint8Array(HEADER_LENGTH + BAT_ENTRY_SIZE * this.batEntries);
    out.set(serializeHeader(header), 0);
    out.set(encodeBat(bat), HEADER_LENGTH);
    // A file that ends before the header region would be a truncated image.
    return { header: out, fileSize: Math.max(space.end, hostEnd, headerRegionSize) };
  }
}

/** driver.inPlace for Parallels. */
export const parallelsInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: MIN_TARGET_CLUSTER, max: MAX_TARGET_CLUSTER },
  clusterSizeOption: 'cluster_size',
  create: (request) => new ParallelsInPlaceTarget(request),
};
