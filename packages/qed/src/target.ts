import {
  alignUp,
  IcError,
  type Extent,
  type InPlaceTarget,
  type InPlaceTargetFactory,
  type SpaceAllocator,
  type TargetBuild,
  type TargetLayout,
  type TargetRequest,
} from '@ic/core/sdk';
import { ClusterSet } from './check.js';
import { encodeBackingName, geometryOptions, headerRegionBytes, newHeader, type QedGeometryOptions } from './create.js';
import { FORMAT, isValidClusterSize, MAX_CLUSTER_SIZE, maxImageSize, MIN_CLUSTER_SIZE, SECTOR_SIZE } from './header.js';
import { ENTRY_SIZE, ENTRY_ZERO, MAX_TABLE_WRITE, TableBuilder } from './tables.js';

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
    this.geometry = geometryOptions({ ...request.options, cluster_size: request.clusterSize });
    const { clusterSize, tableSize } = this.geometry;
    this.layout = {
      clusterSize,
      headerRegionSize: HEADER_CLUSTERS * clusterSize,
      maxHostOffset: Number.MAX_SAFE_INTEGER,
      zeroExtents: true,
    };
    const problems: string[] = [];
    const { virtualSize, backing } = request.source;
    const maximum = maxImageSize(clusterSize, tableSize);
    if (BigInt(virtualSize) > maximum) {
      problems.push(
        `the virtual size ${virtualSize} exceeds the ${maximum} bytes a QED image with cluster_size=${clusterSize} and table_size=${tableSize} can address; choose a larger cluster_size or table_size`,
      );
    }
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

  async build(mapping: readonly Extent[], space: SpaceAllocator): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize, tableSize } = this.geometry;
    const { virtualSize } = this.request.source;
    const { headerRegionSize } = this.layout;
    const tableBytes = tableSize * clusterSize;
    const tableEntries = tableBytes / ENTRY_SIZE;
    const l2Coverage = tableEntries * clusterSize;

    const usedHostClusters = new ClusterSet();
    const claim = (hostOffset: number, length: number, what: string): void => {
      for (let cluster = hostOffset / clusterSize; cluster < (hostOffset + length) / clusterSize; cluster++) {
        if (!usedHostClusters.add(cluster)) throw internal(`${what} at host 0x${hostOffset.toString(16)} overlaps a cluster already in use`);
      }
    };
    const allocateTable = (what: string): number => {
      const offset = space.allocate(tableBytes, clusterSize);
      if (!Number.isSafeInteger(offset) || offset % clusterSize !== 0 || offset < headerRegionSize) {
        throw internal(`the allocator returned ${offset} for the ${what}; it must be cluster-aligned and past the header region`);
      }
      claim(offset, tableBytes, what);
      return offset;
    };

    // The mapping must be exactly what layout promised: data/zero/unallocated, aligned, covering the disk.
    let expected = 0;
    let hostEnd = 0;
    for (const extent of mapping) {
      if (extent.guestOffset !== expected || extent.length <= 0) throw internal(`mapping extent at guest ${extent.guestOffset} does not continue from ${expected}`);
      const extentEnd = extent.guestOffset + extent.length;
      if (extent.guestOffset % clusterSize !== 0 || (extentEnd % clusterSize !== 0 && extentEnd !== virtualSize)) {
        throw internal(`mapping extent ${extent.guestOffset}+${extent.length} is not aligned to the ${clusterSize}-byte cluster size`);
      }
      if (extent.kind === 'data') {
        if (extent.hostOffset % clusterSize !== 0 || extent.hostOffset < headerRegionSize) {
          throw internal(`data at host 0x${extent.hostOffset.toString(16)} is not cluster-aligned past the ${headerRegionSize}-byte header region`);
        }
        const hostLength = alignUp(extent.length, clusterSize);
        claim(extent.hostOffset, hostLength, 'data');
        hostEnd = Math.max(hostEnd, extent.hostOffset + hostLength);
      } else if (extent.kind !== 'zero' && extent.kind !== 'unallocated') {
        throw internal(`mapping holds a ${extent.kind} extent; only data, zero and unallocated can be built`);
      }
      expected = extentEnd;
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    if (hostEnd > this.layout.maxHostOffset) throw internal(`data ends at ${hostEnd}, past the maximum host offset`);

    const l1 = new TableBuilder(allocateTable('L1 table'), tableBytes);
    const l2Tables: TableBuilder[] = [];
    let current: { l1Index: number; table: TableBuilder } | undefined;
    const tableFor = (l1Index: number): TableBuilder => {
      if (current?.l1Index === l1Index) return current.table;
      // Extents arrive in guest order, so a table is never reopened once left.
      const table = new TableBuilder(allocateTable(`L2 table for L1 entry ${l1Index}`), tableBytes);
      l1.set(l1Index, table.hostOffset);
      l2Tables.push(table);
      current = { l1Index, table };
      return table;
    };

    for (const extent of mapping) {
      if (extent.kind !== 'data' && extent.kind !== 'zero') continue;
      const clusters = Math.ceil(extent.length / clusterSize);
      for (let k = 0; k < clusters; k++) {
        const guest = extent.guestOffset + k * clusterSize;
        const l1Index = Math.floor(guest / l2Coverage);
        const l2Index = (guest - l1Index * l2Coverage) / clusterSize;
        tableFor(l1Index).set(l2Index, extent.kind === 'data' ? extent.hostOffset + k * clusterSize : ENTRY_ZERO);
      }
    }

    const zeros = new Uint8Array(Math.min(tableBytes, MAX_TABLE_WRITE));
    const writes = l1.writes(zeros);
    let tablesEnd = l1.hostOffset + tableBytes;
    for (const table of l2Tables) {
      for (const write of table.writes(zeros)) writes.push(write);
      tablesEnd = Math.max(tablesEnd, table.hostOffset + tableBytes);
    }
    // qemu validates offsets against EOF rounded down to a cluster, so the file must end on a cluster.
    const fileSize = alignUp(Math.max(space.end, hostEnd, tablesEnd), clusterSize);

    const header = newHeader(
      this.geometry,
      virtualSize,
      l1.hostOffset,
      this.request.source.backing && this.backingName ? { reference: this.request.source.backing, nameLength: this.backingName.length } : undefined,
    );
    return { writes, header: headerRegionBytes(header, this.backingName), fileSize };
  }
}

/** driver.inPlace for QED. */
export const qedInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: MIN_CLUSTER_SIZE, max: MAX_CLUSTER_SIZE },
  clusterSizeOption: 'cluster_size',
  create: (request) => new QedInPlaceTarget(request),
};
