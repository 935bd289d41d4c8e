import {
  IcError,
  pushExtent,
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
  type MovableUnit,
  type OpenOptions,
} from '@ic/core/sdk';
import { checkImage, scanTables } from './check.js';
import {
  clusterOffsetProblem,
  FEATURE_NEED_CHECK,
  FORMAT,
  HEADER_LENGTH,
  tableOffsetProblem,
  type QedGeometry,
  type QedHeader,
} from './header.js';
import { decodeEntry, ENTRY_UNALLOCATED, ENTRY_ZERO, entryHex, entryHostOffset, readTableEntries } from './tables.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Header field that holds the L1 table offset (u64 LE at byte 40). */
const L1_TABLE_OFFSET_FIELD = 40;

/** A table entry or the l1_table_offset field: a little-endian u64 byte offset. */
function encodeEntry(hostOffset: number): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(hostOffset), true);
  return bytes;
}

/** The blocker conversionSource() reports while the need-check flag is set. */
export const NEED_CHECK_BLOCKER = {
  feature: 'need-check flag',
  reason: 'the QED image needs a consistency check (need-check flag set): run `qemu-img check -r all` first',
} as const;

/** An opened QED image. Reads only; every offset is validated on the way (qemu's rules, formats.md §2.4). */
export class QedImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly header: QedHeader,
    readonly geometry: QedGeometry,
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

  map(): AsyncIterable<Extent> {
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
    return checkImage({ io: this.io, header: this.header, geometry: this.geometry, needCheck: this.needCheck }, options.repair);
  }

  async conversionSource(): Promise<ConversionSource> {
    const scan = await scanTables({ io: this.io, header: this.header, geometry: this.geometry }, { stopAtFirst: true });
    if (scan.firstProblem) {
      throw new IcError('CORRUPT', scan.firstProblem.message, { format: FORMAT, offset: scan.firstProblem.offset });
    }
    const { tableBytes } = this.geometry;
    const metadataRanges: HostRange[] = [{ offset: 0, length: HEADER_LENGTH, role: 'QED header' }];
    if (this.backing && this.header.backingFilenameSize > 0) {
      metadataRanges.push({ offset: this.header.backingFilenameOffset, length: this.header.backingFilenameSize, role: 'QED backing file name' });
    }
    metadataRanges.push({ offset: this.header.l1TableOffset, length: tableBytes, role: 'QED L1 table' });
    for (const table of scan.l2Tables) {
      metadataRanges.push({ offset: table.offset, length: tableBytes, role: `QED L2 table (L1 entry ${table.l1Index})` });
    }
    const source: ConversionSource = {
      options: { virtualSize: this.geometry.imageSize, clusterSize: this.geometry.clusterSize, zeroExtents: scan.hasZeroClusters },
      blockers: this.needCheck ? [{ ...NEED_CHECK_BLOCKER }] : [],
      metadataRanges,
      headerRegionSize: this.header.headerSize * this.geometry.clusterSize,
    };
    if (this.backing) source.options.backing = { ...this.backing };
    return source;
  }

  /**
   * Every unit compaction may move, with the one pointer that names it: the L1 table (header field
   * l1_table_offset), each L2 table (its L1 entry), each data cluster (its L2 entry).
   */
  async movableUnits(): Promise<MovableUnit[]> {
    const scan = await scanTables({ io: this.io, header: this.header, geometry: this.geometry }, { stopAtFirst: true });
    if (scan.firstProblem) throw new IcError('CORRUPT', scan.firstProblem.message, { format: FORMAT, offset: scan.firstProblem.offset });
    const { tableBytes, clusterSize, l2Coverage } = this.geometry;
    const l1Offset = this.header.l1TableOffset;
    const units: MovableUnit[] = [
      { hostOffset: l1Offset, length: tableBytes, role: 'QED L1 table', pointerOffset: L1_TABLE_OFFSET_FIELD, encodePointer: encodeEntry },
    ];
    const l2ByIndex = new Map<number, number>();
    for (const table of scan.l2Tables) {
      l2ByIndex.set(table.l1Index, table.offset);
      units.push({ hostOffset: table.offset, length: tableBytes, role: `QED L2 table ${table.l1Index}`, pointerOffset: entryHostOffset(l1Offset, table.l1Index), encodePointer: encodeEntry });
    }
    for await (const extent of this.map()) {
      if (extent.kind !== 'data') continue;
      for (let at = 0; at < extent.length; at += clusterSize) {
        const guestOffset = extent.guestOffset + at;
        const l1Index = Math.floor(guestOffset / l2Coverage);
        const l2Offset = l2ByIndex.get(l1Index)!;
        const l2Index = (guestOffset - l1Index * l2Coverage) / clusterSize;
        units.push({
          hostOffset: extent.hostOffset + at,
          length: clusterSize,
          role: `data cluster of guest ${guestOffset}`,
          pointerOffset: entryHostOffset(l2Offset, l2Index),
          encodePointer: encodeEntry,
        });
      }
    }
    return units;
  }

  async close(): Promise<void> {}

  /**
   * Extents covering guest [start, end) exactly, merged, in guest order. Only the table entries that map
   * the range are read, in bounded chunks.
   */
  async *extentsInRange(start: number, end: number): AsyncGenerator<Extent> {
    if (end <= start) return;
    const { clusterSize, l2Coverage, tableEntries } = this.geometry;
    const l1Offset = this.header.l1TableOffset;
    const pending: Extent[] = [];
    const add = (extent: Extent): void => {
      // Clip to the requested range (the first and last cluster may stick out).
      const from = Math.max(extent.guestOffset, start);
      const to = Math.min(extent.guestOffset + extent.length, end);
      if (to <= from) return;
      if (extent.kind === 'data') {
        pushExtent(pending, { kind: 'data', guestOffset: from, length: to - from, hostOffset: extent.hostOffset + (from - extent.guestOffset) });
      } else {
        pushExtent(pending, { ...extent, guestOffset: from, length: to - from });
      }
    };

    const firstL1 = Math.floor(start / l2Coverage);
    const lastL1 = Math.floor((end - 1) / l2Coverage);
    for await (const l1Chunk of readTableEntries(this.io, l1Offset, firstL1, lastL1 - firstL1 + 1)) {
      for (let i = 0; i < l1Chunk.count; i++) {
        const l1Index = l1Chunk.firstIndex + i;
        const l1Base = l1Index * l2Coverage;
        const l2Offset = decodeEntry(l1Chunk.view, i);
        if (l2Offset === ENTRY_UNALLOCATED) {
          add({ kind: 'unallocated', guestOffset: l1Base, length: l2Coverage });
        } else {
          const problem = tableOffsetProblem(this.geometry, l2Offset);
          if (problem) {
            const where = entryHostOffset(l1Offset, l1Index);
            throw new IcError('CORRUPT', `${FORMAT}: L1 entry ${l1Index} (host ${hex(where)}) names an L2 table at ${entryHex(l1Chunk.view, i)} that ${problem}`, { format: FORMAT, offset: where });
          }
          const rangeStart = Math.max(start, l1Base);
          const rangeEnd = Math.min(end, l1Base + l2Coverage);
          const firstL2 = Math.floor((rangeStart - l1Base) / clusterSize);
          const lastL2 = Math.min(tableEntries - 1, Math.floor((rangeEnd - 1 - l1Base) / clusterSize));
          for await (const l2Chunk of readTableEntries(this.io, l2Offset, firstL2, lastL2 - firstL2 + 1)) {
            if (l2Chunk.allZero) {
              add({ kind: 'unallocated', guestOffset: l1Base + l2Chunk.firstIndex * clusterSize, length: l2Chunk.count * clusterSize });
              continue;
            }
            for (let j = 0; j < l2Chunk.count; j++) {
              const l2Index = l2Chunk.firstIndex + j;
              const guestOffset = l1Base + l2Index * clusterSize;
              const entry = decodeEntry(l2Chunk.view, j);
              if (entry === ENTRY_UNALLOCATED) {
                add({ kind: 'unallocated', guestOffset, length: clusterSize });
              } else if (entry === ENTRY_ZERO) {
                add({ kind: 'zero', guestOffset, length: clusterSize });
              } else {
                const dataProblem = clusterOffsetProblem(this.geometry, entry);
                if (dataProblem) {
                  const where = entryHostOffset(l2Offset, l2Index);
                  throw new IcError('CORRUPT', `${FORMAT}: L2 entry ${l2Index} (host ${hex(where)}, guest ${hex(guestOffset)}) names a data cluster at ${entryHex(l2Chunk.view, j)} that ${dataProblem}`, { format: FORMAT, offset: where });
                }
                add({ kind: 'data', guestOffset, length: clusterSize, hostOffset: entry });
              }
            }
            // Everything but the last extent is final; hand it out so memory stays bounded.
            if (pending.length > 1) yield* pending.splice(0, pending.length - 1);
          }
        }
        if (pending.length > 1) yield* pending.splice(0, pending.length - 1);
      }
    }
    yield* pending;
  }
}
