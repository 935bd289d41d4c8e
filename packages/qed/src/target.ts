import {
  alignUp,
  IcError,
  type InPlaceTarget,
  type InPlaceTargetFactory,
  type MappingBatches,
  type MetadataWriter,
  type PlanSummary,
  type SpaceAllocator,
  type TargetBuild,
  type TargetEstimate,
  type TargetLayout,
  type TargetRequest,
} from '@ic/core/sdk';
import { encodeBackingName, geometryOptions, headerRegionBytes, newHeader, type QedGeometryOptions } from './create.js';
import { DEFAULT_TABLE_SIZE, FORMAT, isValidClusterSize, MAX_CLUSTER_SIZE, MAX_TABLE_SIZE, MIN_CLUSTER_SIZE, qemuGeometryProblem, qemuMaxImageSize, SECTOR_SIZE } from './header.js';
import { ENTRY_SIZE, ENTRY_ZERO, TableBuilder } from './tables.js';

/** The header region an in-place QED target owns: header_size (1) clusters. */
const HEADER_CLUSTERS = 1;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build QED metadata' });
}

/** A QED image built around data clusters that already sit in the file. */
export class QedInPlaceTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly geometry: QedGeometryOptions;
  private readonly backingName: Uint8Array | undefined;

  constructor(private readonly request: TargetRequest) {
    if (!isValidClusterSize(request.clusterSize)) {
      throw new IcError('INVALID', `${FORMAT}: cluster size ${request.clusterSize} is not a power of two from 4096 to 67108864 bytes`);
    }
    const table_size = request.options['table_size'] ?? fittingTableSize(request.clusterSize, request.source.virtualSize);
    this.geometry = geometryOptions({ ...request.options, cluster_size: request.clusterSize, table_size });
    const { clusterSize, tableSize } = this.geometry;
    this.layout = {
      clusterSize,
      headerRegionSize: HEADER_CLUSTERS * clusterSize,
      maxHostOffset: Number.MAX_SAFE_INTEGER,
      zeroExtents: true,
      tableCoverage: (tableSize * clusterSize * clusterSize) / ENTRY_SIZE,
      // No reference counts: a cluster nothing references is a leak to qemu-img check, so the engine packs.
      unreferencedClustersLeak: true,
    };
    const problems: string[] = [];
    const { virtualSize, backing } = request.source;
    // What qemu 7.2 can open and use, not only what the format can address (its size arithmetic wraps).
    const geometryProblem = qemuGeometryProblem(clusterSize, tableSize, virtualSize);
    if (geometryProblem) problems.push(geometryProblem);
    if (virtualSize % SECTOR_SIZE !== 0) {
      problems.push(`the virtual size ${virtualSize} is not a multiple of 512 bytes, which QED requires; resize the image to a whole number of sectors first`);
    }
    if (backing) {
      const encoded = encodeBackingName(backing, this.layout.headerRegionSize);
      if ('problem' in encoded) problems.push(encoded.problem);
      else this.backingName = encoded.bytes;
    }
    this.problems = problems;
  }

  estimate(summary: PlanSummary): TargetEstimate {
    const tableBytes = this.geometry.tableSize * this.geometry.clusterSize;
    return { metadataBytes: tableBytes * (1 + summary.tablesUsed) + this.geometry.clusterSize };
  }

  /**
   * Streams the L2 tables out as the mapping leaves their range (only the pieces of a table that hold entries are
   * written: the space the allocator hands out reads as zeros), then the L1 table. Memory: the touched pieces of
   * the L1 and of one L2 table.
   */
  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize, tableSize } = this.geometry;
    const { virtualSize } = this.request.source;
    const { headerRegionSize } = this.layout;
    const tableBytes = tableSize * clusterSize;
    const tableEntries = tableBytes / ENTRY_SIZE;
    const allocateTable = (what: string): number => {
      const offset = space.allocate(tableBytes, clusterSize);
      if (!Number.isSafeInteger(offset) || offset % clusterSize !== 0 || offset < headerRegionSize) {
        throw internal(`the allocator returned ${offset} for the ${what}; it must be cluster-aligned and past the header region`);
      }
      return offset;
    };

    // One builder for every L2 table, cleared once a table is written (the writer is done with its bytes).
    let l2: { l1Index: number; table: TableBuilder } | undefined;
    const l2Table = new TableBuilder(0, tableBytes);
    const l1Pieces = new TableBuilder(0, tableBytes);
    const finishTable = async () => {
      if (!l2) return;
      const offset = allocateTable(`L2 table for L1 entry ${l2.l1Index}`);
      l1Pieces.set(l2.l1Index, offset);
      for (const [at, bytes] of l2.table.touched()) await out.write(offset + at, bytes);
      l2.table.clear();
      l2 = undefined;
    };

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
        if (extent.kind !== 'data' && extent.kind !== 'zero') throw internal(`mapping holds a ${extent.kind} extent; only data, zero and unallocated can be built`);
        const clusters = Math.ceil(extent.length / clusterSize);
        if (extent.kind === 'data') {
          if (extent.hostOffset % clusterSize !== 0 || extent.hostOffset < headerRegionSize) {
            throw internal(`data at host 0x${extent.hostOffset.toString(16)} is not cluster-aligned past the ${headerRegionSize}-byte header region`);
          }
          hostEnd = Math.max(hostEnd, extent.hostOffset + clusters * clusterSize);
        }
        let cluster = extent.guestOffset / clusterSize;
        const last = cluster + clusters;
        let host = extent.kind === 'data' ? extent.hostOffset : 0;
        while (cluster < last) {
          const l1Index = Math.floor(cluster / tableEntries);
          if (l2?.l1Index !== l1Index) {
            await finishTable();
            l2 = { l1Index, table: l2Table };
          }
          const stop = Math.min(last, (l1Index + 1) * tableEntries);
          if (extent.kind === 'data') {
            l2.table.setRun(cluster - l1Index * tableEntries, stop - cluster, host, clusterSize);
            host += (stop - cluster) * clusterSize;
          } else l2.table.setRun(cluster - l1Index * tableEntries, stop - cluster, ENTRY_ZERO, 0);
          cluster = stop;
        }
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    await finishTable();
    const l1Offset = allocateTable('L1 table');
    for (const [at, bytes] of l1Pieces.touched()) await out.write(l1Offset + at, bytes);
    // qemu validates offsets against EOF rounded down to a cluster, so the file must end on a cluster.
    const fileSize = alignUp(Math.max(space.end, hostEnd), clusterSize);
    const header = newHeader(
      this.geometry,
      virtualSize,
      l1Offset,
      this.request.source.backing && this.backingName ? { reference: this.request.source.backing, nameLength: this.backingName.length } : undefined,
    );
    return { header: headerRegionBytes(header, this.backingName), fileSize };
  }
}

/**
 * The largest cluster size qemu 7.2 can use for a non-empty image with some table_size (2 to 16): 4 MiB, with
 * table_size=2 only (qemuMaxImageSize wraps to 0 beyond). The specification's 8 to 64 MiB clusters are not offered.
 */
export const QEMU_USABLE_MAX_CLUSTER_SIZE = ((): number => {
  let best = MIN_CLUSTER_SIZE;
  for (let size = MIN_CLUSTER_SIZE; size <= MAX_CLUSTER_SIZE; size *= 2) {
    for (let table = 2; table <= MAX_TABLE_SIZE; table *= 2) if (qemuMaxImageSize(size, table) > 0n) best = size;
  }
  return best;
})();

/**
 * The table_size an in-place target uses when none is asked for: qemu's default (4) when qemu 7.2 can address the
 * virtual size with it at this cluster size, else the smallest larger one that can (with 4 KiB clusters, table_size
 * 4 reaches 16 GiB and 16 reaches 256 GiB), else 2; so a cluster size stays a candidate and its data in place.
 */
export function fittingTableSize(clusterSize: number, virtualSize: number): number {
  // 2 last: the only one qemu 7.2's size arithmetic leaves usable at 4 MiB clusters.
  for (const table of [DEFAULT_TABLE_SIZE, 8, MAX_TABLE_SIZE, 2]) if (BigInt(virtualSize) <= qemuMaxImageSize(clusterSize, table)) return table;
  return DEFAULT_TABLE_SIZE;
}

/** driver.inPlace for QED. */
export const qedInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: MIN_CLUSTER_SIZE, max: QEMU_USABLE_MAX_CLUSTER_SIZE },
  clusterSizeOption: 'cluster_size',
  create: (request) => new QedInPlaceTarget(request),
};
