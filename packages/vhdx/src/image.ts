import {
  IcError,
  readExtents,
  type BackingReference,
  type BlockIO,
  type CheckOptions,
  type CheckReport,
  type ConversionSource,
  type Extent,
  type HostRange,
  type Image,
  type ImageInfo,
  type OpenOptions,
} from '@ic/core/sdk';
import {
  BAT_ENTRY_SIZE,
  batGeometry,
  entryOffset,
  entryState,
  isBitmapIndex,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_PARTIALLY_PRESENT,
  PAYLOAD_BLOCK_UNDEFINED,
  PAYLOAD_BLOCK_UNMAPPED,
  PAYLOAD_BLOCK_UNMAPPED_V095,
  PAYLOAD_BLOCK_ZERO,
  payloadIndex,
  readBat,
  SB_BLOCK_PRESENT,
  type BatGeometry,
} from './bat.js';
import { checkImage } from './check.js';
import { FORMAT, hasVhdxSignature, HEADER_SECTION_SIZE, MiB, readCurrentHeader, validateLogFields, vhdxError, type VhdxHeader } from './header.js';
import { findActiveLogEntry } from './log.js';
import { backingOf, HAS_PARENT, LEAVE_BLOCKS_ALLOCATED, readMetadata, type VhdxMetadata } from './metadata.js';
import { overlapping, readRegionTable, type OwnedRange, type RegionTable } from './region.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Everything open() validated, shared by map, read, check and the conversion view. */
export interface VhdxLayout {
  header: VhdxHeader;
  regions: RegionTable;
  metadata: VhdxMetadata;
  bat: BatGeometry;
  /** The virtual size qemu uses: the stored size rounded down to whole 512-byte sectors. */
  virtualSize: number;
  /** The log and every region: what a payload block must not overlap. */
  owned: OwnedRange[];
  fileSize: number;
}

/**
 * Opens a VHDX image read-only, validating it in qemu's order (vhdx_open): signature, headers, log fields and an
 * active log (refused: qemu replays it only on a read-write open), region table, metadata, BAT size.
 */
export async function openVhdx(io: BlockIO, options: OpenOptions = {}): Promise<VhdxImage> {
  const fileSize = await io.size();
  if (!hasVhdxSignature(await io.read(0, Math.min(8, fileSize)))) throw new IcError('WRONG_FORMAT', `${FORMAT}: ${io.name} is not a VHDX image (no "vhdxfile" signature)`, { format: FORMAT, path: io.name });
  if (fileSize < HEADER_SECTION_SIZE) throw vhdxError('CORRUPT', `the file is ${fileSize} bytes, shorter than the 1 MiB header section`, 0);
  const header = await readCurrentHeader(io);
  validateLogFields(header);
  const active = await findActiveLogEntry(io, header);
  if (active) {
    throw new IcError(
      'UNSUPPORTED',
      `${FORMAT}: ${io.name} contains a log that needs to be replayed (entry ${active.sequenceNumber} at ${hex(header.logOffset + active.position)}; the image was not closed cleanly): replay it with \`qemu-img check -r all -f vhdx\` first`,
      { format: FORMAT, path: io.name, offset: header.logOffset + active.position },
    );
  }
  const owned: OwnedRange[] = [{ start: header.logOffset, end: header.logOffset + header.logLength, what: 'log' }];
  const regions = await readRegionTable(io, owned);
  const metadataEnd = regions.metadata.fileOffset + regions.metadata.length;
  if (metadataEnd > fileSize) {
    throw vhdxError('CORRUPT', `the metadata region at ${hex(regions.metadata.fileOffset)}+${hex(regions.metadata.length)} runs past the end of the file (${hex(fileSize)})`, regions.metadata.fileOffset);
  }
  const metadata = await readMetadata(io, regions.metadata);
  const virtualSize = Math.floor(metadata.virtualDiskSize / 512) * 512;
  const hasParent = (metadata.fileFlags & HAS_PARENT) !== 0;
  const bat = batGeometry(virtualSize, metadata.blockSize, hasParent);
  if (bat.batEntries > regions.bat.length / BAT_ENTRY_SIZE) {
    throw vhdxError('CORRUPT', `the BAT region (${regions.bat.length} bytes at ${hex(regions.bat.fileOffset)}) is too small for the ${bat.batEntries} entries a ${virtualSize}-byte disk of ${metadata.blockSize}-byte blocks needs`, regions.bat.fileOffset);
  }
  if (regions.bat.fileOffset + bat.batEntries * BAT_ENTRY_SIZE > fileSize) {
    throw vhdxError('CORRUPT', `the BAT at ${hex(regions.bat.fileOffset)} runs past the end of the file (${hex(fileSize)})`, regions.bat.fileOffset);
  }
  let backing: BackingReference | undefined;
  if (metadata.parent) {
    backing = backingOf(metadata.parent);
    if (!backing) throw vhdxError('CORRUPT', 'the parent locator names no parent path (relative_path, absolute_win32_path or volume_path)', regions.metadata.fileOffset);
    if (options.untrusted) throw new IcError('EXTERNAL_REF', `${FORMAT}: ${io.name} is a differencing image of "${backing.name}", refused for an untrusted image`, { format: FORMAT, path: io.name });
  }
  return new VhdxImage(io, { header, regions, metadata, bat, virtualSize, owned, fileSize }, backing, options);
}

/** An opened VHDX image. Reads only. */
export class VhdxImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly layout: VhdxLayout,
    readonly backing: BackingReference | undefined,
    private readonly options: OpenOptions = {},
  ) {}

  /** "fixed" when the file parameters say blocks stay allocated, else "dynamic" (or "differencing"). */
  get subformat(): 'fixed' | 'dynamic' | 'differencing' {
    const flags = this.layout.metadata.fileFlags;
    if ((flags & HAS_PARENT) !== 0) return 'differencing';
    return (flags & LEAVE_BLOCKS_ALLOCATED) !== 0 ? 'fixed' : 'dynamic';
  }

  info(): ImageInfo {
    // qemu-img info: virtual size, the block size as the cluster size, dirty-flag false, no format-specific data.
    const info: ImageInfo = { format: FORMAT, virtualSize: this.layout.virtualSize, clusterSize: this.layout.metadata.blockSize, dirty: false };
    if (this.backing) info.backing = { ...this.backing };
    return info;
  }

  map(): AsyncIterable<Extent[]> {
    return this.extentsInRange(0, this.layout.virtualSize);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const size = this.layout.virtualSize;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > size) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} lies outside the ${size}-byte disk`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    return readExtents(this.io, this.extentsInRange(guestOffset, guestOffset + length), guestOffset, length, this.options.backing ? { backing: this.options.backing } : {});
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    return checkImage(this.io, this.layout, options.repair);
  }

  async conversionSource(): Promise<ConversionSource> {
    const { header, regions, bat, virtualSize, metadata } = this.layout;
    const image = this;
    async function* metadataRanges(): AsyncGenerator<HostRange[]> {
      const ranges: HostRange[] = [
        { offset: 0, length: HEADER_SECTION_SIZE, kind: 'header', role: 'VHDX header section (file identifier, headers, region tables)' },
        { offset: header.logOffset, length: header.logLength, kind: 'metadata', role: 'VHDX log' },
        { offset: regions.bat.fileOffset, length: regions.bat.length, kind: 'metadata', role: 'VHDX BAT' },
        { offset: regions.metadata.fileOffset, length: regions.metadata.length, kind: 'metadata', role: 'VHDX metadata region' },
        ...regions.others.map((region): HostRange => ({ offset: region.fileOffset, length: region.length, kind: 'metadata', role: 'VHDX optional region' })),
      ];
      yield ranges.filter((range) => range.length > 0);
      // Sector bitmap blocks that are present belong to the image too (1 MiB each).
      for await (const chunk of readBat(image.io, regions.bat.fileOffset, 0, bat.batEntries)) {
        const found: HostRange[] = [];
        for (let i = 0; i < chunk.count; i++) {
          const index = chunk.firstIndex + i;
          if (!isBitmapIndex(bat, index) || entryState(chunk.view, i) !== SB_BLOCK_PRESENT) continue;
          const offset = entryOffset(chunk.view, i);
          if (offset < HEADER_SECTION_SIZE || offset + MiB > image.layout.fileSize) {
            throw vhdxError('CORRUPT', `sector bitmap entry ${index} names a block at ${offset < 0 ? 'past 2^53' : hex(offset)} outside the file`, regions.bat.fileOffset + index * BAT_ENTRY_SIZE);
          }
          found.push({ offset, length: MiB, kind: 'metadata', role: 'VHDX sector bitmap block' });
        }
        if (found.length > 0) yield found;
      }
    }
    const source: ConversionSource = {
      options: { virtualSize, clusterSize: metadata.blockSize },
      blockers: [],
      metadataRanges,
      headerRegionSize: HEADER_SECTION_SIZE,
    };
    if (this.backing) source.options.backing = { ...this.backing };
    return source;
  }

  async close(): Promise<void> {}

  /**
   * Extents covering guest [start, end), merged, in batches. Fully present blocks are data (validated: inside the
   * file, past the header section, clear of the log and the regions); without a parent every block that reads as
   * zero (not present, zero, undefined, unmapped) is unallocated; with one, "not present" falls through to the
   * parent and the others read as zero. Partially present blocks (differencing images) are not supported.
   */
  async *extentsInRange(start: number, end: number): AsyncGenerator<Extent[]> {
    if (end <= start) return;
    const { bat, virtualSize, regions, owned, fileSize } = this.layout;
    const { blockSize } = bat;
    const hasParent = this.backing !== undefined;
    let out: Extent[] = [];
    let last: Extent | undefined;
    const add = (kind: 'data' | 'zero' | 'unallocated', from: number, to: number, hostOffset: number): void => {
      const clippedFrom = Math.max(from, start);
      const clippedTo = Math.min(to, end);
      if (clippedTo <= clippedFrom) return;
      const host = hostOffset + (clippedFrom - from);
      if (last && last.kind === kind && last.guestOffset + last.length === clippedFrom && (kind !== 'data' || (last as { hostOffset: number }).hostOffset + last.length === host)) {
        last.length += clippedTo - clippedFrom;
        return;
      }
      const extent: Extent = kind === 'data' ? { kind, guestOffset: clippedFrom, length: clippedTo - clippedFrom, hostOffset: host } : { kind, guestOffset: clippedFrom, length: clippedTo - clippedFrom };
      out.push(extent);
      last = extent;
    };
    const firstBlock = Math.floor(start / blockSize);
    const lastBlock = Math.floor((end - 1) / blockSize);
    const firstIndex = payloadIndex(bat, firstBlock);
    const lastIndex = payloadIndex(bat, lastBlock);
    for await (const chunk of readBat(this.io, regions.bat.fileOffset, firstIndex, lastIndex - firstIndex + 1)) {
      for (let i = 0; i < chunk.count; i++) {
        const index = chunk.firstIndex + i;
        if (isBitmapIndex(bat, index)) continue;
        const block = index - Math.floor(index / (bat.chunkRatio + 1));
        const guest = block * blockSize;
        const guestEnd = Math.min(guest + blockSize, virtualSize);
        const state = entryState(chunk.view, i);
        const where = regions.bat.fileOffset + index * BAT_ENTRY_SIZE;
        switch (state) {
          case PAYLOAD_BLOCK_FULLY_PRESENT: {
            const offset = entryOffset(chunk.view, i);
            const length = guestEnd - guest;
            if (offset < HEADER_SECTION_SIZE || offset + length > fileSize) {
              throw vhdxError('CORRUPT', `BAT entry ${index} (at ${hex(where)}, guest ${hex(guest)}) names a block at ${offset < 0 ? 'an offset past 2^53' : hex(offset)} that does not lie between the header section and the end of the file (${hex(fileSize)})`, where);
            }
            const clash = overlapping(owned, offset, offset + blockSize);
            if (clash) throw vhdxError('CORRUPT', `BAT entry ${index} (at ${hex(where)}, guest ${hex(guest)}) names a block at ${hex(offset)} that overlaps the ${clash.what}`, where);
            add('data', guest, guestEnd, offset);
            break;
          }
          case PAYLOAD_BLOCK_NOT_PRESENT:
            add('unallocated', guest, guestEnd, 0);
            break;
          case PAYLOAD_BLOCK_ZERO:
          case PAYLOAD_BLOCK_UNDEFINED:
          case PAYLOAD_BLOCK_UNMAPPED:
          case PAYLOAD_BLOCK_UNMAPPED_V095:
            add(hasParent ? 'zero' : 'unallocated', guest, guestEnd, 0);
            break;
          case PAYLOAD_BLOCK_PARTIALLY_PRESENT:
            if (hasParent) throw vhdxError('UNSUPPORTED', `BAT entry ${index} (guest ${hex(guest)}) is a partially present block of a differencing image; reading its sector bitmap is not supported`, where);
            throw vhdxError('CORRUPT', `BAT entry ${index} (at ${hex(where)}, guest ${hex(guest)}) says "partially present" in an image without a parent (qemu reads it as an I/O error)`, where);
          default:
            throw vhdxError('CORRUPT', `BAT entry ${index} (at ${hex(where)}, guest ${hex(guest)}) has the undefined state ${state} (qemu reads it as an I/O error)`, where);
        }
      }
      if (out.length >= 4096) {
        const done = out.slice(0, -1);
        out = [last!];
        yield done;
      }
    }
    if (out.length > 0) yield out;
  }
}
