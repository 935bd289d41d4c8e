import {
  assertCoverage,
  IcError,
  type Extent,
  type InPlaceTarget,
  type InPlaceTargetFactory,
  type SpaceAllocator,
  type TargetBuild,
  type TargetLayout,
  type TargetRequest,
} from '@ic/core/sdk';
import { backingProblems, encodeHeaderRegion, resolveParameters, type Qcow2Parameters } from './create.js';
import { FORMAT, hex } from './errors.js';
import { l1EntriesNeeded, MAX_CLUSTER_BITS, MAX_HOST_OFFSET, MAX_L1_ENTRIES, MIN_CLUSTER_BITS } from './header.js';
import { encodeRefcounts, layoutRefcounts, refcountGeometry, type ClusterRun } from './refcount.js';
import { encodeL1Entry, encodeL2Entry, tableGeometry } from './tables.js';

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT}: ${message}`, { format: FORMAT });
}

/**
 * Builds qcow2 metadata around data clusters that already sit in the file: L2 tables (only where data
 * or zero clusters are), the L1 table, refcount blocks and table (every cluster in use counted exactly
 * once, COPIED set everywhere), and a minimal header for cluster 0.
 */
export class Qcow2Target implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly parameters: Qcow2Parameters;

  constructor(private readonly request: TargetRequest) {
    this.parameters = resolveParameters(request.options, request.clusterSize);
    const clusterSize = request.clusterSize;
    this.layout = {
      clusterSize,
      // The whole of cluster 0 is header territory.
      headerRegionSize: clusterSize,
      maxHostOffset: Math.min(MAX_HOST_OFFSET, Number.MAX_SAFE_INTEGER),
      zeroExtents: this.parameters.version === 3,
    };
    const problems = backingProblems(request.source.backing, this.parameters, false);
    const { virtualSize } = request.source;
    if (virtualSize % 512 !== 0) {
      problems.push(`qcow2 virtual sizes are whole 512-byte sectors; ${virtualSize} bytes is not (qemu would drop the partial sector).`);
    }
    if (l1EntriesNeeded(virtualSize, this.parameters.clusterBits, 8) > MAX_L1_ENTRIES) {
      problems.push(`a ${virtualSize}-byte disk needs more than 32 MiB of L1 table with ${clusterSize}-byte clusters; choose a larger cluster_size.`);
    }
    this.problems = problems;
  }

  async build(mapping: readonly Extent[], space: SpaceAllocator): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize, headerRegionSize, maxHostOffset } = this.layout;
    const { virtualSize } = this.request.source;
    const parameters = this.parameters;
    const geometry = tableGeometry(parameters.clusterBits, { version: parameters.version });
    const refcounts = refcountGeometry(parameters.clusterBits, parameters.refcountOrder);
    assertCoverage(mapping, virtualSize, `${FORMAT} target mapping`);

    // Fill L2 tables, created on demand for the L1 ranges that hold data or zero clusters.
    const l2Tables = new Map<number, DataView>();
    const tableFor = (l1Index: number): DataView => {
      let table = l2Tables.get(l1Index);
      if (!table) {
        table = new DataView(new ArrayBuffer(clusterSize));
        l2Tables.set(l1Index, table);
      }
      return table;
    };
    const runs: ClusterRun[] = [{ start: 0, end: 1, role: 'header cluster' }];
    let dataEnd = 0;
    for (const extent of mapping) {
      if (extent.guestOffset % clusterSize !== 0) throw internal(`mapping extent at guest ${extent.guestOffset} is not cluster-aligned`);
      if (extent.kind === 'unallocated') continue;
      if (extent.kind !== 'data' && extent.kind !== 'zero') throw internal(`mapping holds a ${extent.kind} extent, which an in-place target cannot take`);
      if (extent.kind === 'zero' && parameters.version === 2) throw internal('compat=0.10 cannot record zero extents (the layout said so)');
      const clusters = Math.ceil(extent.length / clusterSize);
      const firstCluster = extent.guestOffset / clusterSize;
      if (extent.kind === 'data') {
        const host = extent.hostOffset;
        if (host % clusterSize !== 0 || host < headerRegionSize || host + clusters * clusterSize > maxHostOffset) {
          throw internal(`data extent at guest ${extent.guestOffset} has host offset ${hex(host)}, not an aligned cluster past the header`);
        }
        runs.push({ start: host / clusterSize, end: host / clusterSize + clusters, role: 'data cluster' });
        dataEnd = Math.max(dataEnd, host + clusters * clusterSize);
      }
      for (let index = 0; index < clusters; index++) {
        const cluster = firstCluster + index;
        const table = tableFor(Math.floor(cluster / geometry.l2Entries));
        const l2Index = cluster % geometry.l2Entries;
        if (extent.kind === 'data') {
          encodeL2Entry(table, l2Index, geometry, { hostOffset: extent.hostOffset + index * clusterSize, copied: true });
        } else {
          // A zero cluster owns no host cluster, so it has no COPIED flag.
          encodeL2Entry(table, l2Index, geometry, { hostOffset: 0, copied: false, zero: true });
        }
      }
    }

    const writes: { offset: number; data: Uint8Array }[] = [];
    const l1Size = l1EntriesNeeded(virtualSize, parameters.clusterBits, 8);
    const l1 = new DataView(new ArrayBuffer(l1Size * 8));
    for (const l1Index of [...l2Tables.keys()].sort((a, b) => a - b)) {
      const offset = space.allocate(clusterSize, clusterSize);
      encodeL1Entry(l1, l1Index, offset, true);
      writes.push({ offset, data: new Uint8Array(l2Tables.get(l1Index)!.buffer) });
      runs.push({ start: offset / clusterSize, end: offset / clusterSize + 1, role: 'L2 table' });
    }
    let l1Offset = 0;
    if (l1Size > 0) {
      const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
      l1Offset = space.allocate(l1Clusters * clusterSize, clusterSize);
      writes.push({ offset: l1Offset, data: new Uint8Array(l1.buffer) });
      runs.push({ start: l1Offset / clusterSize, end: l1Offset / clusterSize + l1Clusters, role: 'L1 table' });
    }

    const { layout, runs: allRuns } = layoutRefcounts(runs, refcounts, (count) => space.allocate(count * clusterSize, clusterSize));
    writes.push(...encodeRefcounts(layout, allRuns, refcounts));
    for (const write of writes) {
      if (write.offset % clusterSize !== 0 || write.offset < headerRegionSize) throw internal(`allocator returned ${hex(write.offset)}, not an aligned offset past the header`);
    }

    const header = encodeHeaderRegion({
      parameters,
      size: virtualSize,
      l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: layout.tableOffset,
      refcountTableClusters: layout.tableClusters,
      featureNameTable: false,
      ...(this.request.source.backing ? { backing: this.request.source.backing } : {}),
    });
    let metadataEnd = 0;
    for (const write of writes) metadataEnd = Math.max(metadataEnd, write.offset + write.data.length);
    return { writes, header, fileSize: Math.max(space.end, dataEnd, metadataEnd, clusterSize) };
  }
}

export const qcow2InPlace: InPlaceTargetFactory = {
  clusterSizes: { min: 2 ** MIN_CLUSTER_BITS, max: 2 ** MAX_CLUSTER_BITS },
  clusterSizeOption: 'cluster_size',
  create(request: TargetRequest): InPlaceTarget {
    return new Qcow2Target(request);
  },
};
