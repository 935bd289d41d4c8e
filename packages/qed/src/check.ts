import { IcError, isIcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { clusterOffsetProblem, FORMAT, tableOffsetProblem, type QedGeometry, type QedHeader } from './header.js';
import { ENTRY_UNALLOCATED, ENTRY_ZERO, entryHex, entryHostOffset, decodeEntry, readTableEntries } from './tables.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Messages kept per report; the rest are counted, so a hostile image cannot grow the report without bound. */
export const MAX_MESSAGES = 200;

/**
 * A set of cluster numbers kept as a bitmap in 512-byte pages allocated on first use: about one bit per
 * cluster where references are dense, and memory proportional to the references actually found (never to
 * the file size a sparse file claims) where they are not.
 */
export class ClusterSet {
  private static readonly PAGE_BITS = 4096;
  private readonly pages = new Map<number, Uint8Array>();
  private members = 0;

  get size(): number {
    return this.members;
  }

  /** Adds `cluster`; returns false when it was already there. */
  add(cluster: number): boolean {
    const pageIndex = Math.floor(cluster / ClusterSet.PAGE_BITS);
    const bit = cluster - pageIndex * ClusterSet.PAGE_BITS;
    let page = this.pages.get(pageIndex);
    if (!page) {
      page = new Uint8Array(ClusterSet.PAGE_BITS / 8);
      this.pages.set(pageIndex, page);
    }
    const mask = 1 << (bit & 7);
    const byte = bit >> 3;
    if ((page[byte]! & mask) !== 0) return false;
    page[byte] = page[byte]! | mask;
    this.members++;
    return true;
  }

  has(cluster: number): boolean {
    const pageIndex = Math.floor(cluster / ClusterSet.PAGE_BITS);
    const bit = cluster - pageIndex * ClusterSet.PAGE_BITS;
    const page = this.pages.get(pageIndex);
    return page !== undefined && (page[bit >> 3]! & (1 << (bit & 7))) !== 0;
  }
}

/** One valid, non-overlapping L2 table found by a scan. */
export interface L2TableRef {
  l1Index: number;
  offset: number;
}

export interface ScanResult {
  corruptions: number;
  checkErrors: number;
  /** Clusters between the header region and the (rounded-down) EOF that nothing references. */
  leaks: number;
  /** Counted the way qemu-img check counts them: every L2 entry other than 0 and 1, valid or not. */
  allocatedClusters: number;
  /** An allocated entry whose offset does not follow the previous allocated entry of the same L2 table. */
  fragmentedClusters: number;
  messages: string[];
  /** The first problem, for callers that refuse on any. */
  firstProblem?: { message: string; offset: number };
  l2Tables: L2TableRef[];
  /** Some L2 entry inside the image's clusters is a zero cluster. */
  hasZeroClusters: boolean;
}

export interface ScanContext {
  io: BlockIO;
  header: QedHeader;
  geometry: QedGeometry;
}

/**
 * Walks the whole L1 and every L2 it names, in qemu's order (qed_check with fix=false): the L1 clusters are
 * marked first; each L1 entry must name a valid table whose clusters are not yet in use (otherwise the
 * table is skipped); each L2 entry other than 0 and 1 must be a valid data offset referenced only once.
 * With `stopAtFirst` the walk ends at the first corruption (conversion refuses anyway).
 */
export async function scanTables(context: ScanContext, options: { stopAtFirst?: boolean } = {}): Promise<ScanResult> {
  const { io, header, geometry } = context;
  const { clusterSize, clusterBits, tableSize } = geometry;
  const result: ScanResult = {
    corruptions: 0,
    checkErrors: 0,
    leaks: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    messages: [],
    l2Tables: [],
    hasZeroClusters: false,
  };
  let suppressed = 0;
  const report = (message: string, offset: number, corruptions = 1): boolean => {
    result.corruptions += corruptions;
    result.firstProblem ??= { message, offset };
    if (result.messages.length < MAX_MESSAGES) result.messages.push(message);
    else suppressed++;
    return options.stopAtFirst === true;
  };

  const used = new ClusterSet();
  /** Marks `count` clusters from `offset`; returns how many were already in use. */
  const mark = (offset: number, count: number): number => {
    let duplicates = 0;
    const first = offset / clusterSize;
    for (let cluster = first; cluster < first + count; cluster++) if (!used.add(cluster)) duplicates++;
    return duplicates;
  };

  mark(header.l1TableOffset, tableSize);
  const clustersInImage = Math.ceil(geometry.imageSize / clusterSize);

  scan: for await (const l1Chunk of readTableEntries(io, header.l1TableOffset, 0, geometry.tableEntries)) {
    if (l1Chunk.allZero) continue;
    for (let i = 0; i < l1Chunk.count; i++) {
      const l1Index = l1Chunk.firstIndex + i;
      const l2Offset = decodeEntry(l1Chunk.view, i);
      if (l2Offset === ENTRY_UNALLOCATED) continue;
      const where = entryHostOffset(header.l1TableOffset, l1Index);
      const problem = tableOffsetProblem(geometry, l2Offset);
      if (problem) {
        if (report(`${FORMAT}: L1 entry ${l1Index} (host ${hex(where)}) names an L2 table at ${entryHex(l1Chunk.view, i)} that ${problem}`, where)) break scan;
        continue;
      }
      const overlapping = mark(l2Offset, tableSize);
      if (overlapping > 0) {
        const message = `${FORMAT}: L2 table at ${hex(l2Offset)} (L1 entry ${l1Index}, host ${hex(where)}) overlaps ${overlapping} cluster(s) already in use`;
        if (report(message, where, overlapping)) break scan;
        continue;
      }
      result.l2Tables.push({ l1Index, offset: l2Offset });
      const guestClusterBase = l1Index * geometry.tableEntries;
      let previous = 0;
      try {
        for await (const l2Chunk of readTableEntries(io, l2Offset, 0, geometry.tableEntries)) {
          if (l2Chunk.allZero) continue;
          for (let j = 0; j < l2Chunk.count; j++) {
            const l2Index = l2Chunk.firstIndex + j;
            const dataOffset = decodeEntry(l2Chunk.view, j);
            if (dataOffset === ENTRY_UNALLOCATED) continue;
            if (dataOffset === ENTRY_ZERO) {
              if (guestClusterBase + l2Index < clustersInImage) result.hasZeroClusters = true;
              continue;
            }
            result.allocatedClusters++;
            if (previous !== 0 && previous + clusterSize !== dataOffset) result.fragmentedClusters++;
            previous = dataOffset;
            const entryAt = entryHostOffset(l2Offset, l2Index);
            // Formatted only when there is something to report: this loop runs once per data cluster.
            const guest = () => hex((guestClusterBase + l2Index) * 2 ** clusterBits);
            const dataProblem = clusterOffsetProblem(geometry, dataOffset);
            if (dataProblem) {
              if (report(`${FORMAT}: L2 entry ${l2Index} (host ${hex(entryAt)}, guest ${guest()}) names a data cluster at ${entryHex(l2Chunk.view, j)} that ${dataProblem}`, entryAt)) break scan;
              continue;
            }
            if (mark(dataOffset, 1) > 0) {
              if (report(`${FORMAT}: data cluster ${hex(dataOffset)} (L2 entry ${l2Index}, host ${hex(entryAt)}, guest ${guest()}) is already in use: clusters must be referenced once`, entryAt)) break scan;
            }
          }
        }
      } catch (error) {
        // A table that cannot be read is a check error (qemu: check_errors), not a verdict on the image.
        if (!isIcError(error) || error.code !== 'IO' || options.stopAtFirst) throw error;
        result.checkErrors++;
        if (result.messages.length < MAX_MESSAGES) result.messages.push(`${FORMAT}: could not read the L2 table at ${hex(l2Offset)}: ${error.message}`);
      }
    }
  }

  // Like qemu, leaks are only counted when every table could be read.
  if (result.checkErrors === 0 && !(options.stopAtFirst && result.corruptions > 0)) {
    const candidates = geometry.validationFileSize / clusterSize - geometry.headerRegionSize / clusterSize;
    result.leaks = Math.max(0, candidates - used.size);
    if (result.leaks > 0) {
      result.messages.push(`${FORMAT}: ${result.leaks} cluster(s) between the header region and the end of the file are referenced by nothing (leaked)`);
    }
  }
  if (suppressed > 0) result.messages.push(`${FORMAT}: ${suppressed} further problem(s) not listed`);
  return result;
}

/** Image.check(): qemu-img check's verdict for QED (corruptions, leaks, check errors and its counters). */
export async function checkImage(context: ScanContext & { needCheck: boolean }, repair?: 'leaks' | 'all'): Promise<CheckReport> {
  if (repair !== undefined) {
    throw new IcError('UNSUPPORTED', `${FORMAT}: repair is not implemented; run \`qemu-img check -r ${repair} -f qed\``, { format: FORMAT });
  }
  const scan = await scanTables(context);
  const messages = [...scan.messages];
  if (context.needCheck) {
    // qemu-img check does not count the flag itself (it reports such an image clean); say it anyway.
    messages.unshift(`${FORMAT}: the need-check flag is set (the image was not closed cleanly); \`qemu-img check -r all\` clears it`);
  }
  return {
    corruptions: scan.corruptions,
    leaks: scan.leaks,
    checkErrors: scan.checkErrors,
    totalClusters: Math.ceil(context.geometry.imageSize / context.geometry.clusterSize),
    allocatedClusters: scan.allocatedClusters,
    fragmentedClusters: scan.fragmentedClusters,
    compressedClusters: 0,
    messages,
  };
}
