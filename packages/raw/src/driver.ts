import {
  alignUp,
  DRIVER_API_VERSION,
  IcError,
  pushExtent,
  type BlockIO,
  type ConversionSource,
  type CreateSpec,
  type Driver,
  type Extent,
  type Image,
  type ImageInfo,
} from '@ic/core/sdk';

/** qemu rounds image sizes of the other formats to whole sectors; a raw source is padded the same way. */
const SECTOR = 512;

/**
 * The allocation unit a raw image reports to in-place targets. A raw file has none of its own; 64 KiB is
 * qemu-img's default cluster size for qcow2, QED and VMDK, so their targets keep the most data in place.
 */
export const RAW_CONVERSION_CLUSTER_SIZE = 65536;

/**
 * Guest byte N is file byte N. Holes of a sparse file (where the BlockIO can report them, i.e. lseek
 * SEEK_DATA/SEEK_HOLE on Linux) are zero extents that still "own" their host range, which is how
 * `qemu-img map` shows them; without hole information the whole file is data.
 */
class RawImage implements Image {
  readonly format = 'raw';

  constructor(
    private readonly io: BlockIO,
    private readonly fileSize: number,
  ) {}

  info(): ImageInfo {
    return { format: 'raw', virtualSize: this.fileSize, dirty: false };
  }

  /** Data and hole extents, asked from the store a window at a time so that a file with millions of extents streams. */
  async *map(): AsyncIterable<Extent[]> {
    const window = 64 * 1024 * 1024 * 1024;
    let at = 0;
    for (let start = 0; start < this.fileSize; start += window) {
      const length = Math.min(window, this.fileSize - start);
      const ranges = this.io.dataRanges ? await this.io.dataRanges(start, length) : [{ offset: start, length }];
      const extents: Extent[] = [];
      for (const range of ranges) {
        if (range.offset > at) pushExtent(extents, { kind: 'zero', guestOffset: at, length: range.offset - at, hostOffset: at });
        pushExtent(extents, { kind: 'data', guestOffset: range.offset, length: range.length, hostOffset: range.offset });
        at = range.offset + range.length;
      }
      if (extents.length > 0) yield extents;
    }
    if (at < this.fileSize) yield [{ kind: 'zero', guestOffset: at, length: this.fileSize - at, hostOffset: at }];
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const paddedSize = alignUp(this.fileSize, SECTOR);
    if (guestOffset < 0 || guestOffset + length > paddedSize) {
      throw new IcError('OUT_OF_BOUNDS', `raw: read at ${guestOffset}+${length} is past the end of the disk (${paddedSize})`);
    }
    // The file reads as zeros past its end, which is exactly the padding to a whole sector.
    return this.io.read(guestOffset, length);
  }

  async conversionSource(): Promise<ConversionSource> {
    const virtualSize = alignUp(this.fileSize, SECTOR);
    return {
      // Without a backing file, holes and zeros need no zero extents in the target: they stay unallocated.
      options: { virtualSize, clusterSize: RAW_CONVERSION_CLUSTER_SIZE },
      blockers: [],
      metadataRanges: () => [],
      // Holes of the file read as zeros where they are, so a cluster that is part data, part hole stays in place.
      zeroHostRangesReadAsZero: true,
    };
  }

  async close(): Promise<void> {}
}

export const rawDriver: Driver = {
  name: 'raw',
  description: 'raw disk image: guest byte N is file byte N',
  version: '0.1.0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { read: true, create: true, inPlaceSource: true, identityTarget: true },
  options: [],
  // Any file is a valid raw image, so raw only wins when no other driver recognises the bytes.
  probe: () => 1,
  async open(io: BlockIO): Promise<Image> {
    return new RawImage(io, await io.size());
  },
  async create(io: BlockIO, spec: CreateSpec): Promise<void> {
    if (spec.backing) throw new IcError('UNSUPPORTED', 'raw: images cannot have a backing file');
    await io.truncate(alignUp(spec.virtualSize, SECTOR));
    await io.flush();
  },
};

export default rawDriver;
