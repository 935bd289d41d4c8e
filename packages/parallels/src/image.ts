import {
  IcError,
  readExtents,
  type BlockIO,
  type CheckOptions,
  type CheckReport,
  type ConversionBlocker,
  type ConversionSource,
  type Extent,
  type HostRange,
  type Image,
  type ImageInfo,
  type OpenOptions,
  type UnitRun,
} from '@ic/core/sdk';
import { batEntryOffset, readBat } from './bat.js';
import { checkImage, repairImage } from './check.js';
import { FORMAT, HEADER_LENGTH, INUSE_MAGIC, SECTOR_SIZE, type ParallelsGeometry, type ParallelsHeader } from './header.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** The blockers conversionSource() reports. */
export const INUSE_BLOCKER: ConversionBlocker = {
  feature: 'image in use',
  reason: 'the Parallels image was not closed correctly (inuse is set): run `qemu-img check -r all -f parallels` first',
};
export const EXTENSION_BLOCKER: ConversionBlocker = {
  feature: 'format extension',
  reason: 'the Parallels image has a format extension cluster (dirty bitmaps) that no other format keeps: convert it by copying (qemu-img convert)',
};

/** An opened Parallels image, read-only. */
export class ParallelsImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly header: ParallelsHeader,
    readonly geometry: ParallelsGeometry,
    private readonly options: OpenOptions = {},
  ) {}

  /** inuse is set: qemu's "image was not closed correctly" (it refuses to open such an image read-write). */
  get inUse(): boolean {
    return this.header.inuse === INUSE_MAGIC;
  }

  info(): ImageInfo {
    // qemu-img info shows neither a cluster size nor a dirty flag for Parallels (its driver has no get_info), so
    // neither does ic: conversionSource() has the cluster size (the engine packs by it), check() the inuse marker.
    return { format: FORMAT, virtualSize: this.geometry.virtualSize };
  }

  map(): AsyncIterable<Extent[]> {
    return this.extentsInRange(0, this.geometry.virtualSize, false);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const size = this.geometry.virtualSize;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > size) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} lies outside the ${size}-byte disk`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    return readExtents(this.io, this.extentsInRange(guestOffset, guestOffset + length, false), guestOffset, length, this.options.backing ? { backing: this.options.backing } : {});
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    const context = { io: this.io, header: this.header, geometry: this.geometry };
    if (options.repair !== undefined) return repairImage(context, options.repair);
    const { clustersOutside: _outside, ...report } = await checkImage(context);
    return report;
  }

  async conversionSource(): Promise<ConversionSource> {
    const { batEnd, clusterSize, virtualSize, dataStart } = this.geometry;
    const blockers: ConversionBlocker[] = [];
    if (this.inUse) blockers.push({ ...INUSE_BLOCKER });
    if (this.header.extOff !== 0) blockers.push({ ...EXTENSION_BLOCKER });
    const extOff = this.header.extOff * SECTOR_SIZE;
    const ranges: HostRange[] = [
      { offset: 0, length: HEADER_LENGTH, kind: 'header', role: 'Parallels header' },
      { offset: HEADER_LENGTH, length: batEnd - HEADER_LENGTH, kind: 'metadata', role: 'Parallels BAT' },
    ];
    if (extOff !== 0) ranges.push({ offset: extOff, length: clusterSize, kind: 'metadata', role: 'Parallels format extension' });
    const image = this;
    return {
      options: { virtualSize, clusterSize },
      blockers,
      metadataRanges: () => ranges.filter((range) => range.length > 0),
      map: () => image.extentsInRange(0, virtualSize, true),
      headerRegionSize: Math.max(dataStart, batEnd),
    };
  }

  /** Runs of host-contiguous data clusters, each cluster named by its BAT entry. */
  async *units(): AsyncGenerator<UnitRun[]> {
    const { clusterSize, entryUnit } = this.geometry;
    const pointer = { encoding: 'u32le' as const, unit: entryUnit };
    let out: UnitRun[] = [];
    let run: UnitRun | undefined;
    for await (const chunk of readBat(this.io, 0, this.geometry.batEntries)) {
      for (let i = 0; i < chunk.count; i++) {
        const entry = chunk.entries[i]!;
        if (entry === 0) {
          run = undefined;
          continue;
        }
        const host = this.checkedHost(entry, chunk.firstIndex + i);
        if (run && run.hostOffset + run.count * clusterSize === host) {
          run.count++;
          continue;
        }
        run = { kind: 'data', hostOffset: host, unitLength: clusterSize, count: 1, pointerOffset: batEntryOffset(chunk.firstIndex + i), pointerStride: 4, pointer };
        out.push(run);
      }
      if (out.length >= 4096) {
        yield out;
        out = [];
        run = undefined;
      }
    }
    if (out.length > 0) yield out;
  }

  async close(): Promise<void> {}

  /** The host offset qemu would read a cluster from; only offsets past 2^53 (no file is that large) are refused. */
  private plainHost(entry: number, index: number): number {
    const host = entry * this.geometry.entryUnit;
    if (!Number.isSafeInteger(host + this.geometry.clusterSize)) {
      throw new IcError('CORRUPT', `${FORMAT}: BAT entry ${index} (host ${hex(batEntryOffset(index))}) names a cluster past 2^53 bytes`, { format: FORMAT, offset: batEntryOffset(index) });
    }
    return host;
  }

  /** The host offset of a data cluster, refused unless the whole cluster lies between the BAT and the end of the file. */
  private checkedHost(entry: number, index: number): number {
    const { clusterSize, entryUnit, batEnd, fileSize } = this.geometry;
    const host = entry * entryUnit;
    if (host % SECTOR_SIZE !== 0 || host < batEnd || host + clusterSize > fileSize) {
      const where = host < batEnd ? `overlaps the header or the BAT (which end at ${hex(batEnd)})` : host % SECTOR_SIZE !== 0 ? 'is not sector-aligned' : `runs past the end of the file (${hex(fileSize)})`;
      throw new IcError('CORRUPT', `${FORMAT}: BAT entry ${index} (host ${hex(batEntryOffset(index))}) names a cluster at ${hex(host)} that ${where}`, { format: FORMAT, offset: batEntryOffset(index) });
    }
    return host;
  }

  /**
   * Extents covering guest [start, end), merged, in batches. Guest clusters past bat_entries are unallocated (qemu
   * reads them as zeros). `strict` (conversion) refuses clusters that do not lie whole between the BAT and EOF; a
   * plain map reports them as qemu does.
   */
  async *extentsInRange(start: number, end: number, strict: boolean): AsyncGenerator<Extent[]> {
    if (end <= start) return;
    const { clusterSize, batEntries } = this.geometry;
    let out: Extent[] = [];
    let last: Extent | undefined;
    const add = (kind: 'data' | 'unallocated', from: number, to: number, hostOffset: number): void => {
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
    const firstCluster = Math.floor(start / clusterSize);
    const lastCluster = Math.floor((end - 1) / clusterSize);
    const inBat = Math.min(lastCluster, batEntries - 1);
    if (firstCluster <= inBat) {
      for await (const chunk of readBat(this.io, firstCluster, inBat - firstCluster + 1)) {
        for (let i = 0; i < chunk.count; i++) {
          const index = chunk.firstIndex + i;
          const entry = chunk.entries[i]!;
          const guest = index * clusterSize;
          if (entry === 0) add('unallocated', guest, guest + clusterSize, 0);
          else add('data', guest, guest + clusterSize, strict ? this.checkedHost(entry, index) : this.plainHost(entry, index));
        }
        if (out.length >= 4096) {
          const done = out.slice(0, -1);
          out = [last!];
          yield done;
        }
      }
    }
    if (lastCluster >= batEntries) add('unallocated', Math.max(firstCluster, batEntries) * clusterSize, end, 0);
    if (out.length > 0) yield out;
  }
}
