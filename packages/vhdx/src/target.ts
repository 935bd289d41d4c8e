import {
  IcError,
  isAllZero,
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
import { BAT_ENTRY_SIZE, batGeometry, batRegionLength, encodeEntry, PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_ZERO, payloadIndex, type BatGeometry } from './bat.js';
import { DEFAULT_LOG_SIZE, headerSection, isValidBlockSize, MAX_VIRTUAL_SIZE } from './create.js';
import { randomGuid } from './guid.js';
import { FORMAT, HEADER_SECTION_SIZE, MiB } from './header.js';
import { MAX_BLOCK_SIZE, METADATA_TABLE_SIZE, MIN_BLOCK_SIZE, serializeMetadata } from './metadata.js';

/** BAT bytes kept in memory while building: pieces of 4 MiB, written when the mapping leaves them. */
const BAT_PIECE = 4 * MiB;

function internal(message: string): IcError {
  return new IcError('INTERNAL', `${FORMAT} target: ${message}`, { format: FORMAT, step: 'build VHDX metadata' });
}

/**
 * A dynamic VHDX image built around payload blocks that already sit in the file: blocks must be 1 MiB-aligned (the
 * BAT stores MiB offsets) and lie past the header section, the first 1 MiB, which is the header region: the commit
 * writes all of it (file identifier, two headers with CRC-32C, two region tables, zeros up to 1 MiB, as qemu-img
 * create leaves it), so no byte of the source's metadata is left in it. Everything else is new space from the
 * allocator, past the source: an empty 1 MiB log (the headers' log GUID is zero, so there is nothing to replay),
 * the BAT region and a 1 MiB metadata region. Placement 'anywhere' (1 MiB host alignment): a VHDX block may sit at
 * any MiB offset and blocks need not be in guest order. Data blocks are "fully present", zero runs (only when a
 * caller passes them) "zero", the rest "not present".
 */
export class VhdxInPlaceTarget implements InPlaceTarget {
  readonly layout: TargetLayout;
  readonly problems: readonly string[];
  private readonly geometry: BatGeometry;

  constructor(private readonly request: TargetRequest) {
    const blockSize = request.clusterSize;
    if (!isValidBlockSize(blockSize)) throw new IcError('INVALID', `${FORMAT}: block size ${blockSize} is not a power of two from 1 MiB to 256 MiB`);
    const { virtualSize, backing } = request.source;
    this.geometry = batGeometry(virtualSize, blockSize, false);
    this.layout = {
      clusterSize: blockSize,
      hostAlignment: MiB,
      headerRegionSize: HEADER_SECTION_SIZE,
      maxHostOffset: Number.MAX_SAFE_INTEGER,
      // Without a parent (a target never has one) "zero" and "not present" are alike: the planner sends no zero
      // extents; build() still writes any it is given as "zero" blocks.
      zeroExtents: false,
    };
    const problems: string[] = [];
    if (backing) problems.push(`ic does not write differencing VHDX images, so the backing file "${backing.name}" cannot be kept`);
    if (virtualSize % 512 !== 0) problems.push(`the virtual size ${virtualSize} is not a multiple of the 512-byte logical sector`);
    if (virtualSize > MAX_VIRTUAL_SIZE) problems.push(`the virtual size ${virtualSize} is larger than the 64 TiB of a VHDX image`);
    this.problems = problems;
  }

  estimate(_summary: PlanSummary): TargetEstimate {
    return { metadataBytes: DEFAULT_LOG_SIZE + batRegionLength(this.geometry) + MiB + 3 * MiB };
  }

  async build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild> {
    if (this.problems.length > 0) throw new IcError('UNSUPPORTED', `${FORMAT}: ${this.problems[0]}`, { format: FORMAT });
    const { virtualSize } = this.request.source;
    const { blockSize } = this.geometry;
    const allocate = (length: number, what: string): number => {
      const offset = space.allocate(length, MiB);
      if (!Number.isSafeInteger(offset) || offset % MiB !== 0 || offset < HEADER_SECTION_SIZE) throw internal(`the allocator returned ${offset} for the ${what}; it must be 1 MiB-aligned past the header section`);
      return offset;
    };
    const logOffset = allocate(DEFAULT_LOG_SIZE, 'log');
    const batLength = batRegionLength(this.geometry);
    const batOffset = allocate(batLength, 'BAT');
    const metadataOffset = allocate(MiB, 'metadata region');

    // The BAT, written piece by piece as the mapping moves past it (pieces that stay all zero are never written:
    // allocated space reads as zeros).
    let pieceIndex = -1;
    let piece = new Uint8Array(BAT_PIECE);
    const flushPiece = async () => {
      if (pieceIndex >= 0 && !isAllZero(piece)) {
        const at = pieceIndex * BAT_PIECE;
        await out.write(batOffset + at, piece.subarray(0, Math.min(BAT_PIECE, batLength - at)));
      }
    };
    const setEntry = async (block: number, state: number, offset: number) => {
      const byte = payloadIndex(this.geometry, block) * BAT_ENTRY_SIZE;
      const index = Math.floor(byte / BAT_PIECE);
      if (index !== pieceIndex) {
        if (index < pieceIndex) throw internal(`the mapping went back to block ${block}`);
        await flushPiece();
        pieceIndex = index;
        piece = new Uint8Array(BAT_PIECE);
      }
      encodeEntry(new DataView(piece.buffer), (byte - index * BAT_PIECE) / BAT_ENTRY_SIZE, state, offset);
    };

    let expected = 0;
    let hostEnd = 0;
    for await (const batch of mapping) {
      for (const extent of batch) {
        if (extent.guestOffset !== expected || extent.length <= 0) throw internal(`mapping extent at guest ${extent.guestOffset} does not continue from ${expected}`);
        const extentEnd = extent.guestOffset + extent.length;
        if (extent.guestOffset % blockSize !== 0 || (extentEnd % blockSize !== 0 && extentEnd !== virtualSize)) {
          throw internal(`mapping extent ${extent.guestOffset}+${extent.length} is not aligned to the ${blockSize}-byte block size`);
        }
        expected = extentEnd;
        if (extent.kind === 'unallocated') continue;
        if (extent.kind !== 'data' && extent.kind !== 'zero') throw internal(`mapping holds a ${extent.kind} extent; only data, zero and unallocated can be built`);
        const blocks = Math.ceil(extent.length / blockSize);
        const first = extent.guestOffset / blockSize;
        if (extent.kind === 'zero') {
          for (let k = 0; k < blocks; k++) await setEntry(first + k, PAYLOAD_BLOCK_ZERO, 0);
          continue;
        }
        if (extent.hostOffset % MiB !== 0 || extent.hostOffset < HEADER_SECTION_SIZE) throw internal(`data at host 0x${extent.hostOffset.toString(16)} is not 1 MiB-aligned past the header section`);
        for (let k = 0; k < blocks; k++) await setEntry(first + k, PAYLOAD_BLOCK_FULLY_PRESENT, extent.hostOffset + k * blockSize);
        hostEnd = Math.max(hostEnd, extent.hostOffset + blocks * blockSize);
      }
    }
    if (expected !== virtualSize) throw internal(`mapping ends at ${expected}, the virtual size is ${virtualSize}`);
    await flushPiece();
    const metadata = serializeMetadata({ blockSize, fileFlags: 0, virtualDiskSize: virtualSize, sectorSize: 512, page83: randomGuid() });
    await out.write(metadataOffset, metadata.table);
    await out.write(metadataOffset + METADATA_TABLE_SIZE, metadata.items);
    const header = new Uint8Array(HEADER_SECTION_SIZE);
    header.set(headerSection({ logOffset, logSize: DEFAULT_LOG_SIZE, batOffset, batLength, metadataOffset }));
    // The specification wants the file to end on a 1 MiB boundary.
    const fileSize = Math.ceil(Math.max(space.end, hostEnd) / MiB) * MiB;
    return { header, fileSize };
  }
}

/** driver.inPlace for VHDX. */
export const vhdxInPlace: InPlaceTargetFactory = {
  clusterSizes: { min: MIN_BLOCK_SIZE, max: MAX_BLOCK_SIZE },
  clusterSizeOption: 'block_size',
  create: (request) => new VhdxInPlaceTarget(request),
};
