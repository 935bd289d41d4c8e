/**
 * The toy format as an in-place target: the engine hands over the final mapping (data already sitting at its host
 * offsets); the target allocates its table in space the engine owns, writes the table a window at a time as the
 * mapping streams past, and returns the header, which the engine writes last (the commit).
 */
import {
  alignUp,
  ByteView,
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
import { encodeHeader, ENTRY_SIZE, ENTRY_ZERO, FORMAT, MAX_CLUSTER_BITS, MAX_ENTRIES, MIN_CLUSTER_BITS, tableEntries, tableLength } from './header.js';

/** Entries built in memory before they are written: 512 KiB of table at a time. */
const WINDOW_ENTRIES = 65536;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build the toy table' });
}

class ToyTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];

  constructor(private readonly request: TargetRequest) {
    const { clusterSize } = request;
    // The header owns cluster 0; any cluster-aligned host offset past it can hold data.
    this.layout = { clusterSize, headerRegionSize: clusterSize, maxHostOffset: Number.MAX_SAFE_INTEGER, zeroExtents: true };
    const problems: string[] = [];
    const { virtualSize, backing } = request.source;
    if (backing) problems.push(`the toy format cannot name a backing file ("${backing.name}"); convert a flattened copy instead`);
    if (virtualSize % 512 !== 0) problems.push(`the virtual size ${virtualSize} is not a multiple of 512 bytes, which the toy format requires`);
    if (tableEntries({ clusterSize, virtualSize }) > MAX_ENTRIES) problems.push(`${virtualSize} bytes need more than ${MAX_ENTRIES} table entries at ${clusterSize}-byte clusters; choose a larger cluster_size`);
    this.problems = problems;
  }

  estimate(_summary: PlanSummary): TargetEstimate {
    return { metadataBytes: tableLength({ clusterSize: this.request.clusterSize, virtualSize: this.request.source.virtualSize }) };
  }

  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize } = this.request;
    const { virtualSize } = this.request.source;
    const geometry = { clusterSize, virtualSize };
    const total = tableEntries(geometry);
    // The space reads as zeros (unallocated entries) until written, so only windows holding entries are written.
    const tableOffset = space.allocate(tableLength(geometry), clusterSize);
    let window = { first: 0, entries: ByteView.alloc(Math.min(WINDOW_ENTRIES, total) * ENTRY_SIZE), touched: false };
    const flushWindow = async () => {
      if (window.touched) await out.write(tableOffset + window.first * ENTRY_SIZE, window.entries.bytes);
    };
    const set = async (index: number, entry: number) => {
      if (index >= window.first + WINDOW_ENTRIES) {
        await flushWindow();
        const first = index - (index % WINDOW_ENTRIES);
        window = { first, entries: ByteView.alloc(Math.min(WINDOW_ENTRIES, total - first) * ENTRY_SIZE), touched: false };
      }
      window.entries.setU64le((index - window.first) * ENTRY_SIZE, entry);
      window.touched = true;
    };

    let expected = 0;
    let dataEnd = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== expected) throw internal(`the mapping jumps from guest ${expected} to ${extent.guestOffset}`);
        expected = extent.guestOffset + extent.length;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data' && extent.kind !== 'zero') throw internal(`the mapping holds a ${extent.kind} extent`);
        const first = extent.guestOffset / clusterSize;
        if (!Number.isInteger(first)) throw internal(`extent at guest ${extent.guestOffset} is not cluster-aligned`);
        const clusters = Math.ceil(extent.length / clusterSize);
        for (let c = 0; c < clusters; c++) {
          if (extent.kind === 'zero') await set(first + c, ENTRY_ZERO);
          else await set(first + c, extent.hostOffset + c * clusterSize);
        }
        if (extent.kind === 'data') dataEnd = Math.max(dataEnd, extent.hostOffset + clusters * clusterSize);
      }
    }
    if (expected !== virtualSize) throw internal(`the mapping ends at ${expected}, the disk at ${virtualSize}`);
    await flushWindow();
    return { header: encodeHeader({ clusterSize, virtualSize, tableOffset }), fileSize: alignUp(Math.max(space.end, dataEnd), clusterSize) };
  }
}

export const toyInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: 2 ** MIN_CLUSTER_BITS, max: 2 ** MAX_CLUSTER_BITS },
  clusterSizeOption: 'cluster_size',
  create: (request) => new ToyTarget(request),
};
