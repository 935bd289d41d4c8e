/** An opened toy image: info, a streamed map, reads, check, and what an in-place conversion away from it needs. */
import {
  ByteView,
  ClusterBitmap,
  corrupt,
  pushExtent,
  readExtents,
  type BlockIO,
  type CheckReport,
  type ConversionSource,
  type Extent,
  type Image,
  type ImageInfo,
} from '@ic/core/sdk';
import { decodeHeader, ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_ZERO, FORMAT, HEADER_LENGTH, tableEntries, tableLength, type ToyHeader } from './header.js';

/** Entries read from the table at a time while mapping: 512 KiB, whatever the image's size. */
const WINDOW_ENTRIES = 65536;

export class ToyImage implements Image {
  readonly format = FORMAT;

  private constructor(
    private readonly io: BlockIO,
    private readonly header: ToyHeader,
    private readonly fileSize: number,
  ) {}

  static async open(io: BlockIO): Promise<ToyImage> {
    const fileSize = await io.size();
    const header = decodeHeader(await io.read(0, Math.min(HEADER_LENGTH, fileSize)), fileSize);
    return new ToyImage(io, header, fileSize);
  }

  info(): ImageInfo {
    return { format: FORMAT, virtualSize: this.header.virtualSize, clusterSize: this.header.clusterSize, dirty: false };
  }

  /** The extent of one table entry, validated: data must be a whole cluster past the header, inside the file, off the table. */
  private extentOf(index: number, entry: number): Extent {
    const { clusterSize, virtualSize, tableOffset } = this.header;
    const guestOffset = index * clusterSize;
    const length = Math.min(clusterSize, virtualSize - guestOffset);
    if (entry === ENTRY_UNALLOCATED) return { kind: 'unallocated', guestOffset, length };
    if (entry === ENTRY_ZERO) return { kind: 'zero', guestOffset, length };
    const where = tableOffset + index * ENTRY_SIZE;
    if (entry % clusterSize !== 0 || entry < clusterSize) throw corrupt(FORMAT, `table entry ${index} (${entry}) is not a cluster past the header`, where);
    if (entry + length > this.fileSize) throw corrupt(FORMAT, `table entry ${index} points past the end of the file (${entry})`, where);
    if (entry < tableOffset + tableLength(this.header) && tableOffset < entry + clusterSize) throw corrupt(FORMAT, `table entry ${index} points into the table`, where);
    return { kind: 'data', guestOffset, length, hostOffset: entry };
  }

  /** Entries [first, first + count) of the table. */
  private async entries(first: number, count: number): Promise<ByteView> {
    return new ByteView(await this.io.read(this.header.tableOffset + first * ENTRY_SIZE, count * ENTRY_SIZE));
  }

  /** Extents of clusters [first, first + count), merged. */
  private async extentsOf(first: number, count: number): Promise<Extent[]> {
    const table = await this.entries(first, count);
    const out: Extent[] = [];
    for (let i = 0; i < count; i++) pushExtent(out, this.extentOf(first + i, table.u64le(i * ENTRY_SIZE, `table entry ${first + i}`)));
    return out;
  }

  /** Streams the table a window at a time; the last extent of a window waits for the next so runs merge across windows. */
  async *map(): AsyncIterable<readonly Extent[]> {
    const total = tableEntries(this.header);
    let carried: Extent | undefined;
    for (let first = 0; first < total; first += WINDOW_ENTRIES) {
      const batch = await this.extentsOf(first, Math.min(WINDOW_ENTRIES, total - first));
      if (carried) batch.splice(0, 1, ...mergeInto(carried, batch[0]!));
      carried = batch.pop();
      if (batch.length > 0) yield batch;
    }
    if (carried) yield [carried];
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const { clusterSize, virtualSize } = this.header;
    if (guestOffset < 0 || length < 0 || guestOffset + length > virtualSize) throw corrupt(FORMAT, `read ${guestOffset}+${length} is outside the ${virtualSize}-byte disk`);
    if (length === 0) return new Uint8Array(0);
    const first = Math.floor(guestOffset / clusterSize);
    const last = Math.floor((guestOffset + length - 1) / clusterSize);
    return readExtents(this.io, await this.extentsOf(first, last - first + 1), guestOffset, length);
  }

  /** Corruptions: entries that fail validation or name a host cluster twice. The format keeps no free-space record, so it has no leaks. */
  async check(): Promise<CheckReport> {
    const messages: string[] = [];
    const used = new ClusterBitmap();
    let allocated = 0;
    const total = tableEntries(this.header);
    for (let first = 0; first < total; first += WINDOW_ENTRIES) {
      const count = Math.min(WINDOW_ENTRIES, total - first);
      const table = await this.entries(first, count);
      for (let i = 0; i < count; i++) {
        try {
          const extent = this.extentOf(first + i, table.u64le(i * ENTRY_SIZE));
          if (extent.kind !== 'data') continue;
          allocated++;
          if (!used.add(extent.hostOffset / this.header.clusterSize)) messages.push(`host cluster ${extent.hostOffset} is used by table entry ${first + i} and an earlier one`);
        } catch (error) {
          messages.push(error instanceof Error ? error.message : String(error));
        }
      }
    }
    return { corruptions: messages.length, leaks: 0, checkErrors: 0, totalClusters: total, allocatedClusters: allocated, imageEndOffset: this.fileSize, messages };
  }

  async conversionSource(): Promise<ConversionSource> {
    const { clusterSize, virtualSize, tableOffset } = this.header;
    return {
      options: { virtualSize, clusterSize },
      blockers: [],
      headerRegionSize: clusterSize,
      metadataRanges: () => [
        { offset: 0, length: HEADER_LENGTH, kind: 'header', role: 'toy header' },
        { offset: tableOffset, length: tableLength(this.header), kind: 'metadata', role: 'table' },
      ],
    };
  }

  async close(): Promise<void> {}
}

/** `next` merged onto `previous` when they continue each other, else both. */
function mergeInto(previous: Extent, next: Extent): Extent[] {
  const merged: Extent[] = [previous];
  pushExtent(merged, next);
  return merged;
}
