import {
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
import { encodeBlockMap, ENTRY_UNALLOCATED } from './blockmap.js';
import { defaultOffsetData, newHeader } from './create.js';
import { BLOCK_SIZE, bmapBytesFor, FORMAT, HEADER_LENGTH, MAX_DISK_SIZE, SECTOR_SIZE, serializeHeader, VDI_TYPE_DYNAMIC } from './header.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** offset_data is a u32 multiple of 512. */
export const MAX_OFFSET_DATA = 0xfffffe00;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build VDI metadata' });
}

/**
 * A dynamic VDI built around 1 MiB blocks that already sit in the file.
 *
 * Layout it needs (TargetLayout): the header and the block map own [0, start) (qemu's layout: map at 512, data
 * right after it); data blocks are *packed*: block index k lives at offset_data + k MiB, and the indexes in use
 * must be exactly 0 .. n-1, because qemu (like VirtualBox) puts the next new block at index blocks_allocated: a
 * gap, or an index past n, is overwritten by the next guest write to an unallocated block. Guest order does not
 * matter (the block map is a permutation). offset_data is wherever the packed run begins: `start` at the least,
 * or further (any 512-byte boundary up to 0xFFFFFE00, the field is a u32), so a run the engine packs past the
 * source's own structures is as good as one right after the map; build() reads it from the mapping. Nothing is
 * allocated: all metadata is the header region, written at the commit.
 */
export class VdiInPlaceTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly blocks: number;
  /** qemu's offset_data: header, then the block map rounded up to a sector. */
  private readonly minimumStart: number;

  constructor(private readonly request: TargetRequest) {
    const { virtualSize, backing } = request.source;
    const problems: string[] = [];
    if (request.clusterSize !== BLOCK_SIZE) problems.push(`VDI blocks are ${BLOCK_SIZE} bytes (qemu accepts no other size), not ${request.clusterSize}`);
    if (virtualSize % SECTOR_SIZE !== 0) problems.push(`the virtual size ${virtualSize} is not a multiple of 512 bytes, which VDI requires`);
    if (virtualSize > MAX_DISK_SIZE) problems.push(`the virtual size ${virtualSize} exceeds the ${MAX_DISK_SIZE} bytes qemu opens as VDI`);
    if (backing) problems.push(`VDI cannot name a backing file (the source refers to "${backing.name}"); qemu supports no differencing VDI`);
    if (request.options['static'] === true) problems.push('an in-place VDI target is dynamic; static=on is for ic create');
    this.problems = problems;
    this.blocks = Math.ceil(virtualSize / BLOCK_SIZE);
    this.minimumStart = defaultOffsetData(this.blocks);
    this.layout = {
      clusterSize: BLOCK_SIZE,
      // qemu only requires offset_data to be a multiple of 512, so every block is at a 512-byte boundary.
      hostAlignment: SECTOR_SIZE,
      headerRegionSize: this.minimumStart,
      maxHostOffset: MAX_OFFSET_DATA + this.blocks * BLOCK_SIZE,
      zeroExtents: false,
      placement: { kind: 'packed', start: this.minimumStart },
    };
  }

  /** Nothing past the header region: the block map is part of it. */
  estimate(_summary: PlanSummary): TargetEstimate {
    return { metadataBytes: 0 };
  }

  /**
   * Reads the mapping (8 bytes per MiB of disk), takes the lowest data block as offset_data, checks that the blocks
   * are packed from there (indexes 0 .. n-1, each once), and returns the header and the block map as the header
   * region.
   */
  async build(mapping: MappingBatches, space: SpaceAllocator, _out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { virtualSize } = this.request.source;
    // Host offset of each guest block's data (NaN: unallocated); indexes follow once the run's start is known.
    const hosts = new Float64Array(this.blocks).fill(Number.NaN);
    let allocated = 0;
    let runStart = Number.POSITIVE_INFINITY;
    let expected = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== expected || extent.length <= 0) throw internal(`mapping extent at guest ${extent.guestOffset} does not continue from ${expected}`);
        const end = extent.guestOffset + extent.length;
        if (extent.guestOffset % BLOCK_SIZE !== 0 || (end % BLOCK_SIZE !== 0 && end !== virtualSize)) {
          throw internal(`mapping extent ${extent.guestOffset}+${extent.length} is not aligned to the ${BLOCK_SIZE}-byte block size`);
        }
        expected = end;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data') throw internal(`mapping holds a ${extent.kind} extent; a VDI target takes data and unallocated extents only`);
        const count = Math.ceil(extent.length / BLOCK_SIZE);
        const firstBlock = extent.guestOffset / BLOCK_SIZE;
        for (let k = 0; k < count; k++) hosts[firstBlock + k] = extent.hostOffset + k * BLOCK_SIZE;
        allocated += count;
        runStart = Math.min(runStart, extent.hostOffset);
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    const offsetData = allocated > 0 ? runStart : this.minimumStart;
    if (offsetData < this.minimumStart || offsetData % SECTOR_SIZE !== 0 || offsetData > MAX_OFFSET_DATA) {
      throw internal(`the data blocks start at host ${hex(offsetData)}; offset_data must be a multiple of 512 from ${hex(this.minimumStart)} (past the header and block map) to ${hex(MAX_OFFSET_DATA)}`);
    }
    const entries = new Uint32Array(this.blocks).fill(ENTRY_UNALLOCATED);
    const used = new ClusterBitmap();
    for (let block = 0; block < this.blocks; block++) {
      const host = hosts[block]!;
      if (Number.isNaN(host)) continue;
      const index = (host - offsetData) / BLOCK_SIZE;
      // Packed: every index below blocks_allocated, each once (so they are exactly 0 .. n-1).
      if (!Number.isInteger(index) || index >= allocated) {
        throw internal(`guest block ${block} at host ${hex(host)} is not one of the ${allocated} slots packed from offset_data ${hex(offsetData)}: qemu's next new block (index ${allocated}) would not land on free space`);
      }
      if (!used.add(index)) throw internal(`two guest blocks map to block index ${index} (host ${hex(host)})`);
      entries[block] = index;
    }
    const header = newHeader({ diskSize: virtualSize, imageType: VDI_TYPE_DYNAMIC, blocksAllocated: allocated, offsetData });
    const region = new Uint8Array(this.minimumStart);
    region.set(serializeHeader(header), 0);
    region.set(encodeBlockMap(entries, bmapBytesFor(this.blocks)), HEADER_LENGTH);
    return { header: region, fileSize: Math.max(space.end, offsetData + allocated * BLOCK_SIZE) };
  }
}

/** driver.inPlace for VDI: 1 MiB blocks, packed placement. */
export const vdiInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: BLOCK_SIZE, max: BLOCK_SIZE },
  create: (request) => new VdiInPlaceTarget(request),
};
