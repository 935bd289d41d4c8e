import {
  alignUp,
  ClusterBitmap,
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
import { backingProblems, encodeHeaderRegion, resolveParameters, type Qcow2Parameters } from './create.js';
import { FORMAT, hex } from './errors.js';
import { l1EntriesNeeded, MAX_CLUSTER_BITS, MAX_HOST_OFFSET, MAX_L1_ENTRIES, MIN_CLUSTER_BITS } from './header.js';
import { refcountGeometry, setRefcountEntry, type RefcountGeometry } from './refcount.js';
import { tableGeometry, type TableGeometry } from './tables.js';

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT}: ${message}`, { format: FORMAT });
}

const TWO_32 = 2 ** 32;
const COPIED_HIGH = 0x80000000;

/** Writes a standard table entry (L1 or L2): a host offset, COPIED, and the zero flag, from 32-bit halves. */
function setEntry(table: DataView, index: number, hostOffset: number, copied: boolean, zero = false): void {
  const high = Math.floor(hostOffset / TWO_32);
  const low = hostOffset - high * TWO_32;
  table.setUint32(index * 8, (high | (copied ? COPIED_HIGH : 0)) >>> 0);
  table.setUint32(index * 8 + 4, (low | (zero ? 1 : 0)) >>> 0);
}

/** Refcount blocks and table for the clusters in use, sized by a fixed point (they count themselves). */
interface RefcountPlan {
  /** Refcount block index -> its cluster index, in increasing block order. */
  blocks: number[];
  blockClusters: number[];
  tableCluster: number;
  tableClusters: number;
}

/**
 * Places refcount blocks and the table in the clusters from `next` on (blocks first, then the table), so that
 * every block index holding a cluster in use, these new ones included, has a block.
 */
function planRefcounts(used: ClusterBitmap, next: number, refcounts: RefcountGeometry, clusterSize: number): RefcountPlan {
  const perBlock = refcounts.entriesPerBlock;
  const needed = new Set<number>();
  let highest = 0;
  const need = (block: number): boolean => {
    if (needed.has(block)) return false;
    needed.add(block);
    highest = Math.max(highest, block);
    return true;
  };
  for (const [start, end] of used.runs()) for (let block = Math.floor(start / perBlock); block <= Math.floor((end - 1) / perBlock); block++) need(block);
  let tableClusters = 1;
  for (let round = 0; round < 64; round++) {
    // The new structures occupy [next, end): their own blocks must exist too, and the table must reach them all.
    const end = next + needed.size + tableClusters;
    let grew = false;
    for (let block = Math.floor(next / perBlock); block <= Math.floor((end - 1) / perBlock); block++) grew = need(block) || grew;
    const tableNeeded = Math.max(1, Math.ceil(((highest + 1) * 8) / clusterSize));
    if (!grew && tableNeeded <= tableClusters) {
      const blocks = [...needed].sort((a, b) => a - b);
      return { blocks, blockClusters: blocks.map((_, i) => next + i), tableCluster: next + blocks.length, tableClusters };
    }
    tableClusters = Math.max(tableClusters, tableNeeded);
  }
  throw internal('refcount layout did not converge');
}

/**
 * Builds qcow2 metadata around data clusters that already sit in the file, as the mapping streams in: each L2
 * table is written when the mapping leaves its range (only tables holding data or zero clusters exist), then
 * the L1 table, then refcount blocks and the table (every cluster in use counted exactly once, COPIED set
 * everywhere), and a minimal header for cluster 0. Memory: the L1 table, one L2 table (one buffer, reused), one
 * bit per host cluster in use.
 */
export class Qcow2Target implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly parameters: Qcow2Parameters;
  private readonly tables: TableGeometry;
  private readonly refcounts: RefcountGeometry;
  private readonly l1Size: number;

  constructor(private readonly request: TargetRequest) {
    this.parameters = resolveParameters(request.options, request.clusterSize);
    const clusterSize = request.clusterSize;
    this.tables = tableGeometry(this.parameters.clusterBits, { version: this.parameters.version });
    this.refcounts = refcountGeometry(this.parameters.clusterBits, this.parameters.refcountOrder);
    this.layout = {
      clusterSize,
      // The whole of cluster 0 is header territory.
      headerRegionSize: clusterSize,
      maxHostOffset: Math.min(MAX_HOST_OFFSET, Number.MAX_SAFE_INTEGER),
      zeroExtents: this.parameters.version === 3,
      tableCoverage: this.tables.l2Coverage,
    };
    const problems = backingProblems(request.source.backing, this.parameters, false);
    const { virtualSize } = request.source;
    if (virtualSize % 512 !== 0) {
      problems.push(`qcow2 virtual sizes are whole 512-byte sectors; ${virtualSize} bytes is not (qemu would drop the partial sector).`);
    }
    this.l1Size = l1EntriesNeeded(virtualSize, this.parameters.clusterBits, 8);
    if (this.l1Size > MAX_L1_ENTRIES) {
      problems.push(`a ${virtualSize}-byte disk needs more than 32 MiB of L1 table with ${clusterSize}-byte clusters; choose a larger cluster_size.`);
    }
    this.problems = problems;
  }

  estimate(summary: PlanSummary): TargetEstimate {
    const C = this.layout.clusterSize;
    const l2 = summary.tablesUsed * C;
    const l1 = alignUp(this.l1Size * 8, C);
    // Every cluster the file can hold once built: what lies before the new space, relocations, the tables, and
    // the refcount structures themselves (a fixed point, rounded up generously).
    let clusters = Math.ceil(summary.spaceStart / C) + summary.relocatedClusters + (l2 + l1) / C;
    let refcountClusters = 0;
    for (let round = 0; round < 8; round++) {
      const blocks = Math.ceil((clusters + refcountClusters) / this.refcounts.entriesPerBlock) + 1;
      const table = Math.ceil(((blocks + 2) * 8) / C) + 1;
      if (blocks + table <= refcountClusters) break;
      refcountClusters = blocks + table;
    }
    clusters += refcountClusters;
    return { metadataBytes: l2 + l1 + refcountClusters * C + C };
  }

  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize: C, headerRegionSize, maxHostOffset } = this.layout;
    const { virtualSize } = this.request.source;
    const parameters = this.parameters;
    const { l2Entries } = this.tables;
    const used = new ClusterBitmap();
    used.add(0);
    const claim = (offset: number, length: number, what: string) => {
      const first = offset / C;
      const clash = used.addRange(first, first + Math.ceil(length / C));
      if (clash >= 0) throw internal(`${what} at ${hex(offset)} overlaps host cluster ${clash}, already in use`);
    };
    const allocate = (length: number, what: string): number => {
      const offset = space.allocate(length, C);
      if (offset % C !== 0 || offset < headerRegionSize) throw internal(`allocator returned ${hex(offset)} for the ${what}, not an aligned offset past the header`);
      claim(offset, length, what);
      return offset;
    };

    const l1Bytes = new Uint8Array(this.l1Size * 8);
    const l1 = new DataView(l1Bytes.buffer);
    // One L2 buffer for every table: the writer is done with it when its write resolves.
    const l2Bytes = new Uint8Array(C);
    const l2 = new DataView(l2Bytes.buffer);
    let l2Index = -1; // the L1 index whose L2 table is being filled
    const finishTable = async () => {
      if (l2Index < 0) return;
      const offset = allocate(C, 'L2 table');
      setEntry(l1, l2Index, offset, true);
      await out.write(offset, l2Bytes);
      l2Bytes.fill(0);
      l2Index = -1;
    };

    let covered = 0;
    let dataEnd = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== covered || extent.guestOffset % C !== 0) throw internal(`mapping extent at guest ${extent.guestOffset} is not aligned or does not continue from ${covered}`);
        covered += extent.length;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data' && extent.kind !== 'zero') throw internal(`mapping holds a ${extent.kind} extent, which an in-place target cannot take`);
        if (extent.kind === 'zero' && parameters.version === 2) throw internal('compat=0.10 cannot record zero extents (the layout said so)');
        const clusters = Math.ceil(extent.length / C);
        if (extent.kind === 'data') {
          const host = extent.hostOffset;
          if (host % C !== 0 || host < headerRegionSize || host + clusters * C > maxHostOffset) {
            throw internal(`data extent at guest ${extent.guestOffset} has host offset ${hex(host)}, not an aligned cluster past the header`);
          }
          claim(host, clusters * C, 'data cluster');
          dataEnd = Math.max(dataEnd, host + clusters * C);
        }
        // Fill the L2 entries table by table.
        let cluster = extent.guestOffset / C;
        let host = extent.kind === 'data' ? extent.hostOffset : 0;
        const lastCluster = cluster + clusters;
        while (cluster < lastCluster) {
          const tableIndex = Math.floor(cluster / l2Entries);
          if (tableIndex !== l2Index) {
            await finishTable();
            l2Index = tableIndex;
          }
          const stop = Math.min(lastCluster, (tableIndex + 1) * l2Entries);
          for (let index = cluster - tableIndex * l2Entries, c = cluster; c < stop; c++, index++) {
            // A zero cluster owns no host cluster, so it has no COPIED flag.
            if (extent.kind === 'data') {
              setEntry(l2, index, host, true);
              host += C;
            } else setEntry(l2, index, 0, false, true);
          }
          cluster = stop;
        }
      }
    }
    if (covered !== virtualSize) throw internal(`the mapping covers ${covered} bytes of ${virtualSize}`);
    await finishTable();

    let l1Offset = 0;
    if (this.l1Size > 0) {
      l1Offset = allocate(alignUp(l1Bytes.length, C), 'L1 table');
      await out.write(l1Offset, l1Bytes);
    }

    // Refcounts: place blocks and table after everything else (space.end is where the next allocation lands).
    const plan = planRefcounts(used, alignUp(space.end, C) / C, this.refcounts, C);
    const firstBlock = allocate(plan.blocks.length * C, 'refcount blocks');
    const tableOffset = allocate(plan.tableClusters * C, 'refcount table');
    if (firstBlock !== plan.blockClusters[0]! * C || tableOffset !== plan.tableCluster * C) {
      throw internal('the refcount structures did not land where they were planned');
    }
    const table = new Uint8Array(plan.tableClusters * C);
    const tableView = new DataView(table.buffer);
    const perBlock = this.refcounts.entriesPerBlock;
    const runs = used.runs();
    let pendingRun = runs.next();
    const block = new Uint8Array(C);
    for (let i = 0; i < plan.blocks.length; i++) {
      const blockIndex = plan.blocks[i]!;
      const blockStart = blockIndex * perBlock;
      const blockEnd = blockStart + perBlock;
      block.fill(0);
      // Runs arrive in increasing order; a run may span several blocks.
      while (!pendingRun.done && pendingRun.value[0] < blockEnd) {
        const [start, end] = pendingRun.value;
        for (let cluster = Math.max(start, blockStart); cluster < Math.min(end, blockEnd); cluster++) setRefcountEntry(block, cluster - blockStart, this.refcounts.order, 1);
        if (end > blockEnd) break;
        pendingRun = runs.next();
      }
      setEntry(tableView, blockIndex, plan.blockClusters[i]! * C, false);
      await out.write(plan.blockClusters[i]! * C, block);
    }
    await out.write(tableOffset, table);

    const header = encodeHeaderRegion({
      parameters,
      size: virtualSize,
      l1Size: this.l1Size,
      l1TableOffset: l1Offset,
      refcountTableOffset: tableOffset,
      refcountTableClusters: plan.tableClusters,
      featureNameTable: false,
      ...(this.request.source.backing ? { backing: this.request.source.backing } : {}),
    });
    return { header, fileSize: Math.max(alignUp(space.end, C), dataEnd, C) };
  }
}

export const qcow2InPlace: InPlaceTargetFactory = {
  clusterSizes: { min: 2 ** MIN_CLUSTER_BITS, max: 2 ** MAX_CLUSTER_BITS },
  clusterSizeOption: 'cluster_size',
  create(request: TargetRequest): InPlaceTarget {
    return new Qcow2Target(request);
  },
};
