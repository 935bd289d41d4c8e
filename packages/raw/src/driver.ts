import {
  alignUp,
  DRIVER_API_VERSION,
  readExtents,
  type BlockIO,
  type ConversionSource,
  type CreateSpec,
  type Driver,
  type Extent,
  type Image,
  type ImageInfo,
  type OpenOptions,
  IcError,
} from '@ic/core';

/** Data of a raw image is guest offset == host offset; the guest sees the file, rounded up to a sector. */
const SECTOR = 512;

/**
 * The allocation unit a raw image reports to in-place targets. A raw file has none of its own; 64 KiB is
 * qemu-img's default cluster size for qcow2, QED and VMDK, so their targets keep the most data in place.
 */
export const RAW_CONVERSION_CLUSTER_SIZE = 65536;

class RawImage implements Image {
  readonly format = 'raw';

  constructor(
    private readonly io: BlockIO,
    private readonly fileSize: number,
    private readonly options: OpenOptions,
  ) {}

  info(): ImageInfo {
    return { format: 'raw', virtualSize: this.fileSize, dirty: false };
  }

  private virtualSizeForConversion(): number {
    return alignUp(this.fileSize, SECTOR);
  }

  private *extents(virtualSize: number): Generator<Extent> {
    if (this.fileSize > 0) yield { kind: 'data', guestOffset: 0, length: this.fileSize, hostOffset: 0 };
    if (virtualSize > this.fileSize) yield { kind: 'unallocated', guestOffset: this.fileSize, length: virtualSize - this.fileSize };
  }

  async *map(): AsyncIterable<Extent> {
    yield* this.extents(this.fileSize);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    if (guestOffset + length > this.virtualSizeForConversion()) {
      throw new IcError('OUT_OF_BOUNDS', `raw: read at ${guestOffset}+${length} is past the end of the disk`);
    }
    return readExtents(this.io, this.extents(this.virtualSizeForConversion()), guestOffset, length);
  }

  async conversionSource(): Promise<ConversionSource> {
    return {
      options: { virtualSize: this.virtualSizeForConversion(), clusterSize: RAW_CONVERSION_CLUSTER_SIZE, zeroExtents: false },
      blockers: [],
      metadataRanges: [],
    };
  }

  async close(): Promise<void> {}
}

export const rawDriver: Driver = {
  name: 'raw',
  description: 'raw disk image: guest byte N is file byte N',
  version: '0.1.0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { read: true, create: true, inPlaceSource: true },
  options: [],
  // Any file is a valid raw image, so raw only wins when no other driver recognises the bytes.
  probe: () => 1,
  async open(io: BlockIO, options: OpenOptions = {}): Promise<Image> {
    return new RawImage(io, await io.size(), options);
  },
  async create(io: BlockIO, spec: CreateSpec): Promise<void> {
    if (spec.backing) throw new IcError('UNSUPPORTED', 'raw: images cannot have a backing file');
    await io.truncate(spec.virtualSize);
    await io.flush();
  },
};

export default rawDriver;
