import {
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
import { BAT_UNALLOCATED, BAT_UNIT, batBytesFor, encodeBat } from './bat.js';
import { bitmapSize, fullBitmap } from './bitmaps.js';
import { creationOptions, DYNAMIC_HEADER_OFFSET, newFooter } from './create.js';
import { DYNAMIC_HEADER_LENGTH, serializeDynamicHeader } from './dynamic-header.js';
import { CREATOR_CURRENT_SIZE, DISK_TYPE_DYNAMIC, DISK_TYPE_FIXED, FOOTER_LENGTH, FORMAT, MAX_CHS, MAX_SECTORS, SECTOR_SIZE, sizedGeometry, type SizedGeometry } from './footer.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Block sizes a VHD target builds: qemu opens any power of two from 512, but below 4 KiB its bitmap size is 0. */
export const TARGET_BLOCK_SIZES = { min: 4096, max: 256 * 1024 * 1024 };
/** A BAT entry is a u32 sector number and 0xFFFFFFFF means "unallocated": data must end below this. */
export const TARGET_MAX_HOST_OFFSET = (BAT_UNALLOCATED - 1) * BAT_UNIT;
/** BAT bytes written per call. */
const BAT_WRITE = 4 * 1024 * 1024;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build VHD metadata' });
}

/**
 * The geometry that keeps `virtualSize` exact: the CHS product qemu-img would pick when the size is one
 * (creator "qemu"), else the maximum geometry with creator "qem2" (qemu's force_size), whose size is current_size.
 */
export function exactGeometry(virtualSize: number, forceSize: boolean): SizedGeometry {
  const rounded = sizedGeometry(virtualSize, forceSize);
  if (rounded.virtualSize === virtualSize) return rounded;
  return { ...MAX_CHS, virtualSize, creatorApp: CREATOR_CURRENT_SIZE };
}

/** Problems shared by both subformats: what qemu would not open. */
function sizeProblems(request: TargetRequest): string[] {
  const { virtualSize, backing } = request.source;
  const problems: string[] = [];
  if (virtualSize % SECTOR_SIZE !== 0) problems.push(`the virtual size ${virtualSize} is not a multiple of 512 bytes, which VHD requires`);
  if (virtualSize / SECTOR_SIZE > MAX_SECTORS) problems.push(`the virtual size ${virtualSize} exceeds the 2040 GiB qemu opens as VHD`);
  if (backing) problems.push(`this VHD target makes no differencing disks, so it cannot keep the backing file "${backing.name}"`);
  return problems;
}

function checkMappingExtent(extent: { guestOffset: number; length: number }, expected: number, clusterSize: number, virtualSize: number): number {
  if (extent.guestOffset !== expected || extent.length <= 0) throw internal(`mapping extent at guest ${extent.guestOffset} does not continue from ${expected}`);
  const end = extent.guestOffset + extent.length;
  if (extent.guestOffset % clusterSize !== 0 || (end % clusterSize !== 0 && end !== virtualSize)) {
    throw internal(`mapping extent ${extent.guestOffset}+${extent.length} is not aligned to the ${clusterSize}-byte cluster size`);
  }
  return end;
}

/**
 * A dynamic VHD built around blocks already in the file.
 *
 * Layout it needs: the footer copy and the dynamic header own [0, 1536); each data block is *prefixed* by its
 * sector bitmap (512 bytes for 2 MiB blocks), which the target writes (all ones, as qemu does) right before the
 * block's data, so a block stays only where those bytes are free; data at a 512-byte boundary. The BAT and the
 * footer go into allocated space, the footer last: qemu appends new blocks at the end of the last block or of the
 * BAT, whichever is further, and rewrites the footer after them.
 */
export class VhdDynamicTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly geometry: SizedGeometry | undefined;
  private readonly entries: number;
  private readonly bitmapBytes: number;

  constructor(private readonly request: TargetRequest) {
    const { clusterSize } = request;
    const { virtualSize } = request.source;
    const problems = sizeProblems(request);
    const isPowerOfTwo = clusterSize > 0 && (clusterSize & (clusterSize - 1)) === 0;
    if (!isPowerOfTwo || clusterSize < TARGET_BLOCK_SIZES.min || clusterSize > TARGET_BLOCK_SIZES.max) {
      problems.push(`VHD block size ${clusterSize} is not a power of two from ${TARGET_BLOCK_SIZES.min} to ${TARGET_BLOCK_SIZES.max}`);
    }
    this.entries = Math.ceil(virtualSize / clusterSize);
    this.problems = problems;
    this.bitmapBytes = bitmapSize(clusterSize);
    this.geometry = problems.length === 0 ? exactGeometry(virtualSize, creationOptions(request.options).forceSize) : undefined;
    this.layout = {
      clusterSize,
      hostAlignment: SECTOR_SIZE,
      headerRegionSize: DYNAMIC_HEADER_OFFSET + DYNAMIC_HEADER_LENGTH,
      maxHostOffset: TARGET_MAX_HOST_OFFSET,
      zeroExtents: false,
      placement: { kind: 'prefixed', prefix: this.bitmapBytes },
    };
  }

  estimate(_summary: PlanSummary): TargetEstimate {
    // The BAT, the footer, and a sector of alignment for each.
    return { metadataBytes: batBytesFor(this.entries) + FOOTER_LENGTH + 2 * SECTOR_SIZE };
  }

  /**
   * Fills the BAT (4 bytes per block) from the mapping, writing each data block's bitmap in front of it; then
   * the BAT and the footer into allocated space. Returns the footer copy and the dynamic header (1536 bytes).
   */
  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0 || !this.geometry) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { clusterSize } = this.layout;
    const { virtualSize } = this.request.source;
    const headerEnd = this.layout.headerRegionSize;
    const bat = new Uint32Array(this.entries).fill(BAT_UNALLOCATED);
    const bitmap = fullBitmap(clusterSize);
    let expected = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        expected = checkMappingExtent(extent, expected, clusterSize, virtualSize);
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data') throw internal(`mapping holds a ${extent.kind} extent; a VHD target takes data and unallocated extents only`);
        const blocks = Math.ceil(extent.length / clusterSize);
        for (let k = 0; k < blocks; k++) {
          const block = extent.guestOffset / clusterSize + k;
          const data = extent.hostOffset + k * clusterSize;
          const bitmapAt = data - this.bitmapBytes;
          if (data % SECTOR_SIZE !== 0 || bitmapAt < headerEnd || data + clusterSize > TARGET_MAX_HOST_OFFSET) {
            throw internal(`data for block ${block} at host ${hex(data)} is not sector-aligned past the ${headerEnd}-byte header region with room for its ${this.bitmapBytes}-byte bitmap`);
          }
          bat[block] = bitmapAt / BAT_UNIT;
          if (this.bitmapBytes > 0) await out.write(bitmapAt, bitmap);
        }
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    const tableBytes = batBytesFor(this.entries);
    const tableOffset = space.allocate(Math.max(tableBytes, SECTOR_SIZE), SECTOR_SIZE);
    for (let at = 0; at < tableBytes; at += BAT_WRITE) {
      const entries = bat.subarray(at / 4, Math.min(this.entries, (at + BAT_WRITE) / 4));
      await out.write(tableOffset + at, encodeBat(entries, Math.min(BAT_WRITE, tableBytes - at)));
    }
    const footer = newFooter(this.geometry, DISK_TYPE_DYNAMIC);
    const footerOffset = space.allocate(FOOTER_LENGTH, SECTOR_SIZE);
    await out.write(footerOffset, footer);
    if (space.end !== footerOffset + FOOTER_LENGTH) throw internal(`the footer at ${hex(footerOffset)} is not the last thing allocated (allocations end at ${hex(space.end)})`);
    const header = new Uint8Array(headerEnd);
    header.set(footer, 0);
    header.set(serializeDynamicHeader({ tableOffset, maxTableEntries: this.entries, blockSize: clusterSize }), DYNAMIC_HEADER_OFFSET);
    return { header, fileSize: footerOffset + FOOTER_LENGTH };
  }
}

/**
 * A fixed VHD: the guest disk is the file itself (identity placement), followed by a 512-byte footer at the
 * virtual size, which is the header region (headerOffset = virtual size) the commit writes. Nothing moves and
 * nothing else is written: raw becomes fixed VHD by one footer.
 */
export class VhdFixedTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly geometry: SizedGeometry | undefined;

  constructor(private readonly request: TargetRequest) {
    const { virtualSize } = request.source;
    this.problems = sizeProblems(request);
    this.geometry = this.problems.length === 0 ? exactGeometry(virtualSize, creationOptions(request.options).forceSize) : undefined;
    this.layout = {
      clusterSize: request.clusterSize,
      headerRegionSize: FOOTER_LENGTH,
      headerOffset: virtualSize,
      maxHostOffset: virtualSize,
      zeroExtents: false,
      placement: { kind: 'identity' },
    };
  }

  estimate(_summary: PlanSummary): TargetEstimate {
    return { metadataBytes: 0 };
  }

  async build(mapping: MappingBatches, _space: SpaceAllocator, _out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0 || !this.geometry) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { virtualSize } = this.request.source;
    let expected = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        expected = checkMappingExtent(extent, expected, this.layout.clusterSize, virtualSize);
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data' || extent.hostOffset !== extent.guestOffset) {
          throw internal(`a fixed disk maps guest byte g to host byte g; got a ${extent.kind} extent at guest ${hex(extent.guestOffset)}${extent.kind === 'data' ? ` at host ${hex(extent.hostOffset)}` : ''}`);
        }
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    // Unallocated ranges read as zeros where they lie (the engine refuses an identity conversion otherwise). Nothing
    // is allocated (the engine's space may start past the footer, and stays unused): the footer ends the file.
    return { header: newFooter(this.geometry, DISK_TYPE_FIXED), fileSize: virtualSize + FOOTER_LENGTH };
  }
}

/**
 * driver.inPlace for VHD: `-o subformat=fixed` builds a fixed disk (identity placement), the default a dynamic one
 * (prefixed placement).
 */
export const vpcInPlace: InPlaceTargetFactory = {
  clusterSizes: TARGET_BLOCK_SIZES,
  create: (request) => (creationOptions(request.options).fixed ? new VhdFixedTarget(request) : new VhdDynamicTarget(request)),
};
