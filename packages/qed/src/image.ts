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
  type AmendReport,
  type Image,
  type ImageFeature,
  type ImageInfo,
  type OpenOptions,
  type UnitRun,
} from '@ic/core/sdk';
import { checkImage } from './check.js';
import { repairImage } from './repair.js';
import { countZeroEntries, expandZeroEntries } from './zero.js';
import {
  clusterOffsetProblem,
  FEATURE_BACKING_FILE,
  FEATURE_BACKING_FORMAT_NO_PROBE,
  FEATURE_NEED_CHECK,
  FORMAT,
  HEADER_LENGTH,
  parseHeader,
  tableOffsetProblem,
  validateHeader,
  type QedGeometry,
  type QedHeader,
} from './header.js';
import { decodeEntry, ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_ZERO, entryHex, entryHostOffset, readTableEntries, tableScratch } from './tables.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Header field that holds the L1 table offset (u64 LE at byte 40). */
const L1_TABLE_OFFSET_FIELD = 40;

/** The blocker conversionSource() reports while the need-check flag is set. */
export const NEED_CHECK_BLOCKER = {
  feature: 'need-check flag',
  reason: 'the QED image needs a consistency check (need-check flag set): run `ic check -r all` (or `qemu-img check -r all`) first',
} as const;

/** An opened QED image. Reads only, but for check({ repair }); every offset is validated on the way (qemu's rules, formats.md §2.4). */
export class QedImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    /** Replaced by reload() after a repair rewrote the header or resized the file. */
    public header: QedHeader,
    public geometry: QedGeometry,
    readonly backing: BackingReference | undefined,
    private readonly options: OpenOptions = {},
  ) {}

  /** The need-check feature bit: the image was not closed cleanly. qemu-img info does not show it. */
  get needCheck(): boolean {
    return (this.header.features & FEATURE_NEED_CHECK) !== 0n;
  }

  info(): ImageInfo {
    const info: ImageInfo = {
      format: FORMAT,
      virtualSize: this.geometry.imageSize,
      clusterSize: this.geometry.clusterSize,
      // qemu-img info prints "dirty-flag": false for QED even with need-check set (verified with 7.2);
      // the flag is available as `needCheck` and as a conversion blocker.
      dirty: false,
    };
    if (this.backing) info.backing = { ...this.backing };
    return info;
  }

  map(): AsyncIterable<Extent[]> {
    return this.extentsInRange(0, this.geometry.imageSize);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > this.geometry.imageSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} lies outside the ${this.geometry.imageSize}-byte disk`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    const readOptions = this.options.backing ? { backing: this.options.backing } : {};
    return readExtents(this.io, this.extentsInRange(guestOffset, guestOffset + length), guestOffset, length, readOptions);
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    if (options.repair) return repairImage(this);
    return checkImage({ io: this.io, header: this.header, geometry: this.geometry, needCheck: this.needCheck });
  }

  /** The features in use, as data (`ic info --features`): need-check and zero clusters can be removed. */
  async features(): Promise<ImageFeature[]> {
    const features: ImageFeature[] = [];
    if (this.needCheck) {
      features.push({
        name: 'need_check',
        kind: 'incompatible',
        description: 'need-check flag: the image was not closed cleanly, its tables must be checked before they are trusted',
        removal: { possible: true, cost: 'metadata', how: 'the tables scanned and repaired, the flag cleared (check -r all)' },
      });
    }
    const zeroEntries = await countZeroEntries(this);
    if (zeroEntries > 0) {
      // No header bit says so: a reader without zero-cluster support takes entry 1 for data at byte 1.
      features.push({
        name: 'zero_clusters',
        kind: 'incompatible',
        description: `${zeroEntries} L2 entries are 1 (zero cluster, a later addition to QED); a reader without it takes them for data at byte 1`,
        removal: this.backing
          ? { possible: true, cost: 'zeros', how: `a scan of the L2 tables; ${zeroEntries} clusters of zeros written (they must hide the backing file)` }
          : { possible: true, cost: 'metadata', how: 'a scan of the L2 tables; the entries made unallocated (no backing file: they read as zeros)' },
      });
    }
    if ((this.header.features & FEATURE_BACKING_FILE) !== 0n) {
      features.push({ name: 'backing_file', kind: 'incompatible', description: 'the image has a backing file', removal: { possible: false, why: 'its data would have to be copied in (qemu-img rebase or convert)' } });
    }
    if ((this.header.features & FEATURE_BACKING_FORMAT_NO_PROBE) !== 0n) {
      features.push({ name: 'backing_format_no_probe', kind: 'incompatible', description: 'the backing file is raw and must not be probed', removal: { possible: false, why: 'clearing it would let a reader probe the backing file' } });
    }
    return features;
  }

  /** Removes need-check (by the repair of check -r all), then zero clusters (zero.ts). */
  async demote(features: readonly string[]): Promise<AmendReport> {
    const known = await this.features();
    for (const name of features) {
      const feature = known.find((candidate) => candidate.name === name);
      if (!feature) throw new IcError('INVALID', `${FORMAT}: the image does not use feature '${name}'`, { format: FORMAT });
      if (!feature.removal.possible) throw new IcError('UNSUPPORTED', `${FORMAT}: feature '${name}' cannot be removed: ${feature.removal.why}`, { format: FORMAT });
    }
    if (features.includes('zero_clusters') && this.needCheck && !features.includes('need_check')) {
      throw new IcError('UNSUPPORTED', `${FORMAT}: zero clusters are not expanded while the need-check flag is set: demote need_check too (or run check -r all) first`, { format: FORMAT });
    }
    const changes: string[] = [];
    if (features.includes('need_check')) {
      const report = await repairImage(this);
      if (this.needCheck) throw new IcError('CORRUPT', `${FORMAT}: the need-check flag stays: ${report.messages[0] ?? 'the image is not consistent'}`, { format: FORMAT });
      changes.push('need-check flag cleared (tables checked)');
    }
    if (features.includes('zero_clusters')) {
      const expanded = await expandZeroEntries(this);
      if (expanded.leaksFreed) changes.push('unreferenced clusters freed first (check -r leaks)');
      changes.push(
        expanded.written > 0
          ? `zero clusters expanded: ${expanded.count} (${expanded.written} clusters of zeros written)`
          : `zero clusters expanded: ${expanded.count} (made unallocated)`,
      );
    }
    return { changes };
  }

  /** Reads the header again and sizes the geometry for the file as it is now. */
  async reload(): Promise<void> {
    const fileSize = await this.io.size();
    this.header = parseHeader(await this.io.read(0, Math.min(HEADER_LENGTH, fileSize)));
    this.geometry = validateHeader(this.header, fileSize);
  }

  /**
   * The conversion's view: header-level facts and the host ranges of the header, backing name, L1 and every L2
   * table (read from the L1 only; the data offsets are validated as the map is walked, and overlaps between
   * any of these are the engine's to find).
   */
  async conversionSource(): Promise<ConversionSource> {
    const { tableBytes, clusterSize, tableEntries } = this.geometry;
    const l2Tables = await this.l2Tables();
    const clustersInImage = Math.ceil(this.geometry.imageSize / clusterSize);
    const image = this;
    async function* metadataRanges(): AsyncGenerator<HostRange[]> {
      const ranges: HostRange[] = [{ offset: 0, length: HEADER_LENGTH, kind: 'header', role: 'QED header' }];
      if (image.backing && image.header.backingFilenameSize > 0) {
        const { backingFilenameOffset: offset, backingFilenameSize: length } = image.header;
        // qemu reads a name that overlaps the header itself without complaint: one range then.
        if (offset < HEADER_LENGTH) ranges[0]!.length = Math.max(HEADER_LENGTH, offset + length);
        else ranges.push({ offset, length, kind: 'header', role: 'QED backing file name' });
      }
      ranges.push({ offset: image.header.l1TableOffset, length: tableBytes, kind: 'metadata', role: 'QED L1 table' });
      for (const table of l2Tables) ranges.push({ offset: table.offset, length: tableBytes, kind: 'metadata', role: 'QED L2 table' });
      yield ranges;
      // Entries past the disk's end still reference clusters (qemu checks them too): they count as referenced
      // data, so a cluster shared with them, or an invalid one, is refused like any other.
      for (const table of l2Tables) {
        const firstBeyond = Math.max(0, clustersInImage - table.l1Index * tableEntries);
        if (firstBeyond >= tableEntries) continue;
        const beyond: HostRange[] = [];
        for await (const chunk of readTableEntries(image.io, table.offset, firstBeyond, tableEntries - firstBeyond)) {
          if (chunk.allZero) continue;
          for (let j = 0; j < chunk.count; j++) {
            const entry = decodeEntry(chunk.view, j);
            if (entry === ENTRY_UNALLOCATED || entry === ENTRY_ZERO) continue;
            const problem = clusterOffsetProblem(image.geometry, entry);
            const where = entryHostOffset(table.offset, chunk.firstIndex + j);
            if (problem) throw new IcError('CORRUPT', `${FORMAT}: L2 entry ${chunk.firstIndex + j} (host ${hex(where)}, past the disk's end) names a data cluster at ${entryHex(chunk.view, j)} that ${problem}`, { format: FORMAT, offset: where });
            beyond.push({ offset: entry, length: clusterSize, kind: 'data', role: 'data cluster past the disk end' });
          }
        }
        if (beyond.length > 0) yield beyond;
      }
    }
    const source: ConversionSource = {
      options: { virtualSize: this.geometry.imageSize, clusterSize: this.geometry.clusterSize },
      blockers: this.needCheck ? [{ ...NEED_CHECK_BLOCKER }] : [],
      metadataRanges,
      headerRegionSize: this.header.headerSize * this.geometry.clusterSize,
    };
    if (this.backing) source.options.backing = { ...this.backing };
    return source;
  }

  /** The L2 tables the L1 names, each offset validated (qemu's table offset rules). */
  async l2Tables(): Promise<{ l1Index: number; offset: number }[]> {
    const tables: { l1Index: number; offset: number }[] = [];
    const l1Offset = this.header.l1TableOffset;
    for await (const chunk of readTableEntries(this.io, l1Offset, 0, this.geometry.tableEntries)) {
      if (chunk.allZero) continue;
      for (let i = 0; i < chunk.count; i++) {
        const l1Index = chunk.firstIndex + i;
        const l2Offset = decodeEntry(chunk.view, i);
        if (l2Offset === ENTRY_UNALLOCATED) continue;
        const problem = tableOffsetProblem(this.geometry, l2Offset);
        if (problem) {
          const where = entryHostOffset(l1Offset, l1Index);
          throw new IcError('CORRUPT', `${FORMAT}: L1 entry ${l1Index} (host ${hex(where)}) names an L2 table at ${entryHex(chunk.view, i)} that ${problem}`, { format: FORMAT, offset: where });
        }
        tables.push({ l1Index, offset: l2Offset });
      }
    }
    return tables;
  }

  /**
   * Every unit packing may move, as runs, with the one pointer that names each: the L1 table (header field
   * l1_table_offset), each L2 table (its L1 entry), runs of host-contiguous data clusters (consecutive L2 entries).
   */
  async *units(): AsyncGenerator<UnitRun[]> {
    const { tableBytes, clusterSize, tableEntries } = this.geometry;
    const pointer = { encoding: 'u64le' as const };
    // Data clusters' L2 entries can also say "zero cluster" (1) and "unallocated" (0): compaction uses them.
    const dataPointer = { encoding: 'u64le' as const, zeroValue: BigInt(ENTRY_ZERO), unallocatedValue: BigInt(ENTRY_UNALLOCATED) };
    const l1Offset = this.header.l1TableOffset;
    const tables = await this.l2Tables();
    const runs: UnitRun[] = [{ kind: 'table', hostOffset: l1Offset, unitLength: tableBytes, count: 1, pointerOffset: L1_TABLE_OFFSET_FIELD, pointerStride: 0, pointer, role: 'QED L1 table' }];
    for (const table of tables) {
      runs.push({ kind: 'table', hostOffset: table.offset, unitLength: tableBytes, count: 1, pointerOffset: entryHostOffset(l1Offset, table.l1Index), pointerStride: 0, pointer, role: `QED L2 table ${table.l1Index}` });
    }
    yield runs;
    const scratch = tableScratch(this.geometry);
    for (const table of tables) {
      const out: UnitRun[] = [];
      let run: UnitRun | undefined;
      for await (const chunk of readTableEntries(this.io, table.offset, 0, tableEntries, scratch)) {
        if (chunk.allZero) {
          run = undefined;
          continue;
        }
        const validEnd = this.geometry.validationFileSize;
        for (let j = 0; j < chunk.count; j++) {
          const entry = decodeEntry(chunk.view, j);
          if (run && run.hostOffset + run.count * clusterSize === entry && entry < validEnd) {
            run.count++;
            continue;
          }
          if (entry === ENTRY_UNALLOCATED || entry === ENTRY_ZERO) {
            run = undefined;
            continue;
          }
          const problem = clusterOffsetProblem(this.geometry, entry);
          if (problem) throw new IcError('CORRUPT', `${FORMAT}: L2 entry ${chunk.firstIndex + j} of the table at ${hex(table.offset)} names a data cluster that ${problem}`, { format: FORMAT });
          run = { kind: 'data', hostOffset: entry, unitLength: clusterSize, count: 1, pointerOffset: entryHostOffset(table.offset, chunk.firstIndex + j), pointerStride: ENTRY_SIZE, pointer: dataPointer };
          out.push(run);
        }
      }
      if (out.length > 0) yield out;
    }
  }

  async close(): Promise<void> {}

  /**
   * Extents covering guest [start, end) exactly, merged, in guest order, in batches. Only the table entries that
   * map the range are read, in bounded chunks; entries are decoded inline (no object per cluster).
   */
  async *extentsInRange(start: number, end: number): AsyncGenerator<Extent[]> {
    if (end <= start) return;
    const { clusterSize, l2Coverage, tableEntries } = this.geometry;
    const l1Offset = this.header.l1TableOffset;
    let out: Extent[] = [];
    let last: Extent | undefined;
    /** Appends [from, to) of one kind, clipped to the range, extending the last extent when it continues it. */
    const add = (kind: 'data' | 'zero' | 'unallocated', from: number, to: number, hostOffset: number): void => {
      const clippedFrom = Math.max(from, start);
      const clippedTo = Math.min(to, end);
      if (clippedTo <= clippedFrom) return;
      const host = kind === 'data' ? hostOffset + (clippedFrom - from) : 0;
      if (last && last.kind === kind && last.guestOffset + last.length === clippedFrom && (kind !== 'data' || (last as { hostOffset: number }).hostOffset + last.length === host)) {
        last.length += clippedTo - clippedFrom;
        return;
      }
      const extent: Extent = kind === 'data' ? { kind, guestOffset: clippedFrom, length: clippedTo - clippedFrom, hostOffset: host } : { kind, guestOffset: clippedFrom, length: clippedTo - clippedFrom };
      out.push(extent);
      last = extent;
    };
    /** Everything but the last extent is final; hand it out so memory stays bounded. */
    const ready = (): Extent[] | undefined => {
      if (out.length < 4096) return undefined;
      const done = out.slice(0, -1);
      out = [last!];
      return done;
    };

    const firstL1 = Math.floor(start / l2Coverage);
    const lastL1 = Math.floor((end - 1) / l2Coverage);
    // The raw entry that would continue the last extent as a data run, that cluster's host offset, and the bytes
    // of continuing clusters not yet added to the last extent: plain locals (no closure reads them), so the walk
    // over an allocated table (most entries continue the run) costs little per entry.
    let nextLow = -1;
    let nextHigh = -1;
    let nextHost = 0;
    let pending = 0;
    const scratch = tableScratch(this.geometry);
    for await (const l1Chunk of readTableEntries(this.io, l1Offset, firstL1, lastL1 - firstL1 + 1)) {
      for (let i = 0; i < l1Chunk.count; i++) {
        const l1Index = l1Chunk.firstIndex + i;
        const l1Base = l1Index * l2Coverage;
        const l2Offset = decodeEntry(l1Chunk.view, i);
        if (l2Offset === ENTRY_UNALLOCATED) {
          add('unallocated', l1Base, l1Base + l2Coverage, 0);
          nextLow = -1;
          continue;
        }
        const problem = tableOffsetProblem(this.geometry, l2Offset);
        if (problem) {
          const where = entryHostOffset(l1Offset, l1Index);
          throw new IcError('CORRUPT', `${FORMAT}: L1 entry ${l1Index} (host ${hex(where)}) names an L2 table at ${entryHex(l1Chunk.view, i)} that ${problem}`, { format: FORMAT, offset: where });
        }
        const rangeStart = Math.max(start, l1Base);
        const rangeEnd = Math.min(end, l1Base + l2Coverage);
        const firstL2 = Math.floor((rangeStart - l1Base) / clusterSize);
        const lastL2 = Math.min(tableEntries - 1, Math.floor((rangeEnd - 1 - l1Base) / clusterSize));
        for await (const l2Chunk of readTableEntries(this.io, l2Offset, firstL2, lastL2 - firstL2 + 1, scratch)) {
          const chunkGuest = l1Base + l2Chunk.firstIndex * clusterSize;
          if (l2Chunk.allZero) {
            add('unallocated', chunkGuest, chunkGuest + l2Chunk.count * clusterSize, 0);
            nextLow = -1;
            continue;
          }
          const view = l2Chunk.view;
          const validEnd = this.geometry.validationFileSize;
          for (let j = 0; j < l2Chunk.count; j++) {
            const guestOffset = chunkGuest + j * clusterSize;
            const low = view.getUint32(j * ENTRY_SIZE, true);
            const high = view.getUint32(j * ENTRY_SIZE + 4, true);
            // Most entries of an allocated image continue the last data run: the next host cluster, still inside
            // the file (the run's start was validated in full). Entries are walked in guest order and every other
            // entry resets nextLow, so the run ends right at this entry's guest offset.
            if (low === nextLow && high === nextHigh && nextHost < validEnd && guestOffset + clusterSize <= end) {
              pending += clusterSize;
              nextHost += clusterSize;
              nextLow += clusterSize;
              if (nextLow >= 4294967296) {
                nextLow -= 4294967296;
                nextHigh++;
              }
              continue;
            }
            nextLow = -1;
            if (pending > 0) {
              last!.length += pending;
              pending = 0;
            }
            if (high === 0 && low <= ENTRY_ZERO) {
              add(low === ENTRY_ZERO ? 'zero' : 'unallocated', guestOffset, guestOffset + clusterSize, 0);
              continue;
            }
            const entry = high * 2 ** 32 + low;
            const dataProblem = clusterOffsetProblem(this.geometry, entry);
            if (dataProblem) {
              const where = entryHostOffset(l2Offset, l2Chunk.firstIndex + j);
              throw new IcError('CORRUPT', `${FORMAT}: L2 entry ${l2Chunk.firstIndex + j} (host ${hex(where)}, guest ${hex(guestOffset)}) names a data cluster at ${entryHex(view, j)} that ${dataProblem}`, { format: FORMAT, offset: where });
            }
            add('data', guestOffset, guestOffset + clusterSize, entry);
            nextHost = entry + clusterSize;
            nextLow = low + clusterSize;
            nextHigh = high;
            if (nextLow >= 4294967296) {
              nextLow -= 4294967296;
              nextHigh++;
            }
          }
          if (pending > 0) {
            last!.length += pending;
            pending = 0;
          }
          const batch = ready();
          if (batch) yield batch;
        }
        const batch = ready();
        if (batch) yield batch;
      }
    }
    if (out.length > 0) yield out;
  }
}
