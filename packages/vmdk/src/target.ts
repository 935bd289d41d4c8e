import {
  IcError,
  isAllZero,
  isPowerOfTwo,
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
import { MAX_PARENT_NAME, NO_PARENT_CID } from './descriptor.js';
import { FORMAT } from './errors.js';
import { GTE_ZEROED, writeU32Entries } from './grain-tables.js';

/** Grain table entries gathered before they are written (4 MiB of entries per write, twice: GT and RGT copies). */
const GTE_WINDOW = 1024 * 1024;
import { descriptorBytes, HEADER_REGION_SIZE, headerRegion, monolithicHeader } from './header-region.js';
import { MAX_EXTENT_SECTORS, MAX_GD_ENTRIES, SECTOR_SIZE } from './header.js';
import { isDescriptorSafe, randomCid, resolveOptions, type ResolvedOptions } from './options.js';

/** Entries per grain table the target writes (VMware requires 512). */
const GTES_PER_GT = 512;
const GT_SECTORS = (GTES_PER_GT * 4) / SECTOR_SIZE; // 4

/**
 * Grain sizes the target accepts: 4 KiB (qemu reads and writes it; VMware prefers >= 8 KiB) to 64 MiB (qemu allows
 * up to 1 GiB, but a bigger grain only makes qemu's copy-on-write buffers huge).
 */
export const TARGET_CLUSTER_SIZES = { min: 4096, max: 64 * 1024 * 1024 };
/** Grains and tables are addressed by u32 sector numbers. */
export const TARGET_MAX_HOST_OFFSET = MAX_EXTENT_SECTORS * SECTOR_SIZE; // 2 TiB

/** The file name the embedded extent line carries when the request does not say (qemu ignores it). */
export const DEFAULT_EXTENT_NAME = 'image.vmdk';

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build' });
}

class VmdkTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: string[] = [];
  private readonly options: ResolvedOptions | undefined;
  private readonly capacity: number;
  private readonly gtCount: number;

  constructor(private readonly request: TargetRequest) {
    const { source, clusterSize } = request;
    // Grain table entries are sector numbers: a grain may start on any sector, whatever the grain size.
    this.layout = { clusterSize, hostAlignment: SECTOR_SIZE, headerRegionSize: HEADER_REGION_SIZE, maxHostOffset: TARGET_MAX_HOST_OFFSET, zeroExtents: true };
    this.capacity = source.virtualSize / SECTOR_SIZE;
    const grainSectors = clusterSize / SECTOR_SIZE;
    this.gtCount = Math.ceil(Math.ceil(this.capacity / grainSectors) / GTES_PER_GT);

    try {
      this.options = resolveOptions(request.options);
    } catch (error) {
      this.problems.push(error instanceof Error ? error.message : String(error));
    }
    if (this.options && this.options.subformat !== 'monolithicSparse') {
      this.problems.push(`VMDK subformat ${this.options.subformat} cannot be produced in place; only monolithicSparse can`);
    }
    if (!isPowerOfTwo(clusterSize) || clusterSize < TARGET_CLUSTER_SIZES.min || clusterSize > TARGET_CLUSTER_SIZES.max) {
      this.problems.push(`VMDK grain size ${clusterSize} is not a power of two between ${TARGET_CLUSTER_SIZES.min} and ${TARGET_CLUSTER_SIZES.max}`);
    }
    if (!Number.isSafeInteger(source.virtualSize) || source.virtualSize % SECTOR_SIZE !== 0) {
      this.problems.push(`VMDK sizes are whole 512-byte sectors; the virtual size ${source.virtualSize} is not`);
    }
    if (this.gtCount > MAX_GD_ENTRIES) this.problems.push(`virtual size ${source.virtualSize} needs more than ${MAX_GD_ENTRIES} grain tables`);

    const backing = source.backing;
    if (backing) {
      if (backing.format !== undefined && backing.format !== FORMAT) {
        this.problems.push(
          `VMDK can only have a VMDK parent, and the backing file "${backing.name}" is ${backing.format}; convert the backing file to VMDK first or use qemu-img convert`,
        );
      }
      if (!isDescriptorSafe(backing.name, MAX_PARENT_NAME)) {
        this.problems.push(`the backing file name cannot be stored in a VMDK descriptor (1 to ${MAX_PARENT_NAME} characters, no quotes or line breaks)`);
      }
      // The parent's CID comes from -o parent_cid, or from the parent itself when the caller opened it.
      const parentCid = request.backingInfo?.formatSpecific?.type === FORMAT ? request.backingInfo.formatSpecific.data.cid : undefined;
      if (this.options && this.options.parentCid === undefined && typeof parentCid === 'number') this.options.parentCid = parentCid;
      if (this.options && this.options.parentCid === undefined) {
        this.problems.push(
          `VMDK records its parent's CID and qemu refuses reads through a parent whose CID differs; pass -o parent_cid=<the CID= value in ${backing.name}'s descriptor>`,
        );
      }
    } else if (this.options?.parentCid !== undefined) {
      this.problems.push('option parent_cid needs a backing file');
    }
    if (this.problems.length === 0) {
      try {
        descriptorBytes(this.descriptorSpec(0));
      } catch (error) {
        this.problems.push(error instanceof Error ? error.message : String(error));
      }
    }
  }

  private descriptorSpec(cid: number) {
    const options = this.options!;
    const backing = this.request.source.backing;
    return {
      cid,
      parentCid: backing ? options.parentCid! : NO_PARENT_CID,
      createType: 'monolithicSparse',
      ...(backing ? { parentFileNameHint: backing.name } : {}),
      extents: [`RW ${this.capacity} SPARSE "${options.extentName ?? DEFAULT_EXTENT_NAME}"`],
      virtualHWVersion: options.hwVersion,
      virtualSize: this.request.source.virtualSize,
      adapterType: options.adapterType,
      toolsVersion: options.toolsVersion,
    };
  }

  /** Both directories and all their tables, like qemu (a GD entry of 0 makes qemu 7.2 write guest data over the header). */
  private blockBytes(): number {
    const gdSectors = Math.ceil((this.gtCount * 4) / SECTOR_SIZE);
    return (gdSectors + this.gtCount * GT_SECTORS) * SECTOR_SIZE;
  }

  /**
   * Refuses up front (dry runs included) when the tables would not fit below the 2 TiB that u32 sector numbers
   * address: they go past everything the source references, so a large source file leaves no room for them.
   */
  estimate(summary: PlanSummary): TargetEstimate {
    const metadataBytes = 2 * this.blockBytes() + SECTOR_SIZE;
    if (summary.spaceStart + metadataBytes > TARGET_MAX_HOST_OFFSET) {
      throw new IcError(
        'LIMIT',
        `${FORMAT} target: the grain directories and tables (${metadataBytes} bytes) would go past everything the source uses (${summary.spaceStart} bytes) and end beyond the 2 TiB (2^32 sectors) a sparse extent can address`,
        { format: FORMAT },
      );
    }
    return { metadataBytes };
  }

  /**
   * Allocates both copies of the directory and of every grain table up front (their size follows from the
   * virtual size), then fills the grain table entries window by window as the mapping streams in; a window of
   * only unallocated grains is not written (the space reads as zeros). Memory: one window of entries.
   */
  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT} target: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize } = this.layout;
    const virtualSize = this.request.source.virtualSize;
    const grainSectors = clusterSize / SECTOR_SIZE;
    const gdSectors = Math.ceil((this.gtCount * 4) / SECTOR_SIZE);
    const blockBytes = this.blockBytes();
    let rgdSector = 0;
    let gdSector = 0;
    if (blockBytes > 0) {
      const start = space.allocate(2 * blockBytes, SECTOR_SIZE);
      if (start % SECTOR_SIZE !== 0 || start < HEADER_REGION_SIZE) throw internal(`allocator returned unusable offset ${start}`);
      if (start + 2 * blockBytes > TARGET_MAX_HOST_OFFSET) {
        throw new IcError('LIMIT', `${FORMAT} target: the grain tables would start past the 2 TiB a sparse extent can address`, { format: FORMAT });
      }
      rgdSector = start / SECTOR_SIZE;
      gdSector = rgdSector + blockBytes / SECTOR_SIZE;
      for (const directorySector of [rgdSector, gdSector]) {
        const directory = new Uint8Array(gdSectors * SECTOR_SIZE);
        const entries = new Uint32Array(this.gtCount);
        for (let i = 0; i < this.gtCount; i++) entries[i] = directorySector + gdSectors + i * GT_SECTORS;
        writeU32Entries(directory, 0, entries);
        await out.write(directorySector * SECTOR_SIZE, directory);
      }
    }
    // Grain table entries are contiguous across tables (tables lie back to back), so a window of entries is one
    // write per copy.
    const window = new Uint32Array(GTE_WINDOW);
    // The window's bytes as written, one buffer for every window (the writer is done with it when write resolves).
    const windowBytes = new Uint8Array(GTE_WINDOW * 4);
    let windowFirst = 0; // grain index of window[0]
    const flushWindow = async (upTo: number) => {
      // The window holds GTE_WINDOW entries; a jump past it (a long unallocated stretch) flushes what it holds.
      const count = Math.min(upTo - windowFirst, GTE_WINDOW);
      if (count <= 0) return;
      const bytes = new Uint8Array(window.buffer, 0, count * 4);
      if (!isAllZero(bytes)) {
        const data = windowBytes.subarray(0, count * 4);
        writeU32Entries(data, 0, window.subarray(0, count));
        for (const directorySector of [rgdSector, gdSector]) await out.write((directorySector + gdSectors) * SECTOR_SIZE + windowFirst * 4, data);
      }
      window.fill(0, 0, count);
      windowFirst = upTo;
    };
    let zeroUsed = false;
    let dataEnd = 0;
    let covered = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== covered || extent.length <= 0) throw internal(`mapping skips or overlaps at guest ${covered}`);
        if (extent.guestOffset % clusterSize !== 0 || (extent.length % clusterSize !== 0 && extent.guestOffset + extent.length !== virtualSize)) {
          throw internal(`extent at guest ${extent.guestOffset} (length ${extent.length}) is not aligned to the grain size ${clusterSize}`);
        }
        covered += extent.length;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'zero' && extent.kind !== 'data') throw internal(`mapping contains a ${extent.kind} extent`);
        const first = extent.guestOffset / clusterSize;
        const count = Math.ceil(extent.length / clusterSize);
        let sector = 0;
        if (extent.kind === 'zero') zeroUsed = true;
        else {
          const end = extent.hostOffset + count * clusterSize;
          if (extent.hostOffset % SECTOR_SIZE !== 0 || extent.hostOffset < HEADER_REGION_SIZE || end > TARGET_MAX_HOST_OFFSET) {
            throw internal(`data at host ${extent.hostOffset} is outside the layout (sector-aligned, >= ${HEADER_REGION_SIZE}, ending <= ${TARGET_MAX_HOST_OFFSET})`);
          }
          sector = extent.hostOffset / SECTOR_SIZE;
          dataEnd = Math.max(dataEnd, end);
        }
        for (let grain = first; grain < first + count; grain++) {
          if (grain >= windowFirst + GTE_WINDOW) await flushWindow(grain - ((grain - windowFirst) % GTE_WINDOW));
          window[grain - windowFirst] = extent.kind === 'zero' ? GTE_ZEROED : sector + (grain - first) * grainSectors;
        }
      }
    }
    if (covered !== virtualSize) throw internal(`mapping covers ${covered} bytes of ${virtualSize}`);
    await flushWindow(Math.min(windowFirst + GTE_WINDOW, this.gtCount * GTES_PER_GT));

    const overHead = HEADER_REGION_SIZE / SECTOR_SIZE; // everything below it is header and descriptor
    const header = monolithicHeader({
      capacity: this.capacity,
      grainSectors,
      rgdOffset: rgdSector,
      gdOffset: gdSector,
      overHead,
      zeroedGrain: zeroUsed || this.options!.zeroedGrain,
    });
    const region = headerRegion(header, this.descriptorSpec(randomCid()));
    const fileSize = Math.max(space.end, dataEnd, HEADER_REGION_SIZE);
    return { header: region, fileSize };
  }
}

export const vmdkInPlaceTarget: InPlaceTargetFactory = {
  clusterSizes: TARGET_CLUSTER_SIZES,
  create(request: TargetRequest): InPlaceTarget {
    return new VmdkTarget(request);
  },
};
