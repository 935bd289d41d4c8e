import {
  IcError,
  pushExtent,
  readExtents,
  type BlockIO,
  type CheckOptions,
  type CheckReport,
  type ConversionSource,
  type Extent,
  type HostRange,
  type Image,
  type ImageInfo,
} from '@ic/core/sdk';
import { blockHostOffset, entryHostOffset, isAllocated, readBlockMap } from './blockmap.js';
import { checkImage, repairImage } from './check.js';
import { FORMAT, HEADER_LENGTH, type VdiGeometry, type VdiHeader } from './header.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Extents handed out per batch. */
const BATCH = 4096;
/** Host bytes asked of BlockIO.dataRanges at a time while splitting a static image's blocks at file holes. */
const HOLE_QUERY_WINDOW = 1024 ** 3;

/**
 * Why disk block `block`, whose map entry is `entry` (allocated), cannot be read, or undefined. qemu's check calls
 * an index past blocks_in_image corrupt; a block past the end of the file is what a truncated copy looks like.
 */
export function blockProblem(geometry: VdiGeometry, block: number, entry: number): string | undefined {
  if (entry >= geometry.blocksInImage) return `names block index ${entry}, not below blocks_in_image ${geometry.blocksInImage}`;
  if (block < geometry.blocksInDisk) {
    const guestPart = Math.min(geometry.blockSize, geometry.virtualSize - block * geometry.blockSize);
    const host = blockHostOffset(geometry, entry);
    if (host + guestPart > geometry.fileSize) return `names block index ${entry} at host ${hex(host)}, past the end of the file (${geometry.fileSize} bytes): the image is truncated`;
  }
  return undefined;
}

/** An opened VDI image. Reads only. */
export class VdiImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly header: VdiHeader,
    readonly geometry: VdiGeometry,
  ) {}

  info(): ImageInfo {
    // qemu-img info shows the block size as cluster-size and no format-specific data for VDI.
    return { format: FORMAT, virtualSize: this.geometry.virtualSize, clusterSize: this.geometry.blockSize, dirty: false };
  }

  /**
   * The mapping: allocated blocks are data; unallocated and discarded ones read as zeros (qemu-img map: present,
   * zero). In a static image qemu also asks the file which parts of a block are holes; so does this map, when the
   * store can tell, and reports them as zero runs that own their host range (they read as zeros there).
   */
  map(): AsyncIterable<Extent[]> {
    const blocks = this.extentsInRange(0, this.geometry.virtualSize);
    return this.geometry.isStatic && this.io.dataRanges ? this.splitAtHoles(blocks) : blocks;
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const { virtualSize } = this.geometry;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > virtualSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} lies outside the ${virtualSize}-byte disk`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    return readExtents(this.io, this.extentsInRange(guestOffset, guestOffset + length), guestOffset, length);
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    if (options.repair !== undefined) return repairImage(this.io, this.header, this.geometry, options.repair);
    const { allocated: _allocated, highestIndex: _highest, ...report } = await checkImage(this.io, this.header, this.geometry);
    return report;
  }

  /**
   * The conversion's view: the header and the block map are the format's own ranges; allocated entries of blocks
   * past the disk's end (blocks_in_image may exceed the disk) still hold data the image references.
   */
  async conversionSource(): Promise<ConversionSource> {
    const { geometry, io } = this;
    async function* metadataRanges(): AsyncGenerator<HostRange[]> {
      yield [
        { offset: 0, length: HEADER_LENGTH, kind: 'header', role: 'VDI header' },
        { offset: geometry.offsetBmap, length: geometry.bmapBytes, kind: 'metadata', role: 'VDI block map' },
      ];
      const beyond = geometry.blocksInImage - geometry.blocksInDisk;
      if (beyond <= 0) return;
      for await (const chunk of readBlockMap(io, geometry, geometry.blocksInDisk, beyond)) {
        const ranges: HostRange[] = [];
        chunk.entries.forEach((entry, i) => {
          if (!isAllocated(entry)) return;
          const problem = blockProblem(geometry, chunk.firstBlock + i, entry);
          if (problem) throw new IcError('CORRUPT', `${FORMAT}: block map entry ${chunk.firstBlock + i} (host ${hex(entryHostOffset(geometry, chunk.firstBlock + i))}) ${problem}`, { format: FORMAT });
          ranges.push({ offset: blockHostOffset(geometry, entry), length: geometry.blockSize, kind: 'data', role: 'VDI block past the disk end' });
        });
        if (ranges.length > 0) yield ranges;
      }
    }
    return {
      options: { virtualSize: geometry.virtualSize, clusterSize: geometry.blockSize },
      blockers: [],
      metadataRanges,
      zeroHostRangesReadAsZero: geometry.isStatic,
    };
  }

  async close(): Promise<void> {}

  /**
   * Extents covering guest [start, end) exactly, merged, in guest order, in batches; only the map entries of the
   * range are read, in bounded chunks. An entry that qemu's check would call corrupt, or a block past the end of
   * the file, is refused (CORRUPT) rather than read.
   */
  async *extentsInRange(start: number, end: number): AsyncGenerator<Extent[]> {
    if (end <= start) return;
    const { blockSize } = this.geometry;
    const firstBlock = Math.floor(start / blockSize);
    const lastBlock = Math.floor((end - 1) / blockSize);
    let out: Extent[] = [];
    for await (const chunk of readBlockMap(this.io, this.geometry, firstBlock, lastBlock - firstBlock + 1)) {
      for (let i = 0; i < chunk.entries.length; i++) {
        const block = chunk.firstBlock + i;
        const entry = chunk.entries[i]!;
        const from = Math.max(start, block * blockSize);
        const to = Math.min(end, (block + 1) * blockSize);
        if (!isAllocated(entry)) {
          pushExtent(out, { kind: 'zero', guestOffset: from, length: to - from });
          continue;
        }
        const problem = blockProblem(this.geometry, block, entry);
        if (problem) {
          const where = entryHostOffset(this.geometry, block);
          throw new IcError('CORRUPT', `${FORMAT}: block map entry ${block} (host ${hex(where)}, guest ${hex(block * blockSize)}) ${problem}`, { format: FORMAT, offset: where });
        }
        pushExtent(out, { kind: 'data', guestOffset: from, length: to - from, hostOffset: blockHostOffset(this.geometry, entry) + (from - block * blockSize) });
      }
      if (out.length > BATCH) {
        // Everything but the last extent is final (the next block may still extend it).
        yield out.slice(0, -1);
        out = out.slice(-1);
      }
    }
    if (out.length > 0) yield out;
  }

  /** Splits data extents where the file has holes: those parts become zero runs at their host offset. */
  private async *splitAtHoles(source: AsyncIterable<Extent[]>): AsyncGenerator<Extent[]> {
    const dataRanges = this.io.dataRanges!.bind(this.io);
    for await (const batch of source) {
      const out: Extent[] = [];
      for (const extent of batch) {
        if (extent.kind !== 'data') {
          pushExtent(out, extent);
          continue;
        }
        const delta = extent.guestOffset - extent.hostOffset;
        const hostEnd = extent.hostOffset + extent.length;
        for (let window = extent.hostOffset; window < hostEnd; window += HOLE_QUERY_WINDOW) {
          const windowEnd = Math.min(hostEnd, window + HOLE_QUERY_WINDOW);
          let at = window;
          const emit = (kind: 'data' | 'zero', from: number, to: number) => {
            if (to > from) pushExtent(out, { kind, guestOffset: from + delta, length: to - from, hostOffset: from });
          };
          for (const range of await dataRanges(window, windowEnd - window)) {
            const from = Math.max(range.offset, window);
            const to = Math.min(range.offset + range.length, windowEnd);
            if (to <= from) continue;
            emit('zero', at, from);
            emit('data', from, to);
            at = to;
          }
          emit('zero', at, windowEnd);
        }
      }
      yield out;
    }
  }
}
