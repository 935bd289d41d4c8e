import { IcError, isIcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { clusterOffsetProblem, FORMAT, tableOffsetProblem, type QedGeometry, type QedHeader } from './header.js';
import { ENTRY_SIZE, ENTRY_UNALLOCATED, ENTRY_ZERO, entryHex, entryHostOffset, decodeEntry, readTableEntries, type TableChunk } from './tables.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Messages kept per report; the rest are counted, so a hostile image cannot grow the report without bound. */
export const MAX_MESSAGES = 200;

/** L2 tables whose first chunk is read ahead of the one being checked. */
const READ_AHEAD = 4;

/**
 * A set of cluster numbers kept as a bitmap in 4 KiB pages allocated on first use: about one bit per
 * cluster where references are dense, and memory proportional to the references actually found (never to
 * the file size a sparse file claims) where they are not. Hot loops take a page with page() and set bits
 * in it themselves (then report them with counted()).
 */
export class ClusterSet {
  static readonly PAGE_BITS = 32768;
  private readonly pages = new Map<number, Uint32Array>();
  private members = 0;
  /** The page used last: references come mostly in file order, so most adds find it here. */
  private lastIndex = -1;
  private lastPage: Uint32Array = new Uint32Array(0);

  get size(): number {
    return this.members;
  }

  /** Page `index` (clusters [index * PAGE_BITS, (index + 1) * PAGE_BITS)), allocated on first use. */
  page(index: number): Uint32Array {
    if (index === this.lastIndex) return this.lastPage;
    let page = this.pages.get(index);
    if (!page) {
      page = new Uint32Array(ClusterSet.PAGE_BITS / 32);
      this.pages.set(index, page);
    }
    this.lastIndex = index;
    this.lastPage = page;
    return page;
  }

  /** Records `count` members added by setting bits in a page directly. */
  counted(count: number): void {
    this.members += count;
  }

  /** Adds `cluster`; returns false when it was already there. */
  add(cluster: number): boolean {
    const pageIndex = Math.floor(cluster / ClusterSet.PAGE_BITS);
    const bit = cluster - pageIndex * ClusterSet.PAGE_BITS;
    const page = this.page(pageIndex);
    const mask = 1 << (bit & 31);
    if ((page[bit >>> 5]! & mask) !== 0) return false;
    page[bit >>> 5] = page[bit >>> 5]! | mask;
    this.members++;
    return true;
  }

  has(cluster: number): boolean {
    const pageIndex = Math.floor(cluster / ClusterSet.PAGE_BITS);
    const bit = cluster - pageIndex * ClusterSet.PAGE_BITS;
    const page = this.pages.get(pageIndex);
    return page !== undefined && (page[bit >>> 5]! & (1 << (bit & 31))) !== 0;
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

export interface ScanOptions {
  /** End the walk at the first corruption (conversion refuses anyway). */
  stopAtFirst?: boolean;
  /**
   * Number clusters the way qemu-img check does (qemu 7.2, qed-check.c): qed_bytes_to_clusters() divides by
   * cluster_size - 1, so cluster k of the file is bit floor(k * cluster_size / (cluster_size - 1)) of its
   * bitmap and the bitmap has floor(file_size / (cluster_size - 1)) bits. Below cluster_size - 1 clusters this
   * is the plain numbering; past it, overlaps and leaks are counted as qemu counts them (one unreferenced bit,
   * a "leak", per cluster_size - 1 clusters of file).
   */
  qemuClusterNumbers?: boolean;
}

/**
 * Walks the whole L1 and every L2 it names, in qemu's order (qed_check with fix=false): the L1 clusters are
 * marked first; each L1 entry must name a valid table whose clusters are not yet in use (otherwise the
 * table is skipped); each L2 entry other than 0 and 1 must be a valid data offset referenced only once.
 * Entries are decoded inline, chunk by chunk, with no object or closure per entry; the next L2 table is
 * read while one is checked.
 */
export async function scanTables(context: ScanContext, options: ScanOptions = {}): Promise<ScanResult> {
  const { io, header, geometry } = context;
  const { clusterSize, clusterBits, tableSize } = geometry;
  const stopAtFirst = options.stopAtFirst === true;
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
    return stopAtFirst;
  };

  const used = new ClusterSet();
  const divisor = options.qemuClusterNumbers ? clusterSize - 1 : clusterSize;
  /** Marks `count` clusters from `offset` (consecutive bits, as qemu marks them); returns how many were already in use. */
  const mark = (offset: number, count: number): number => {
    let duplicates = 0;
    const first = Math.floor(offset / divisor);
    for (let cluster = first; cluster < first + count; cluster++) if (!used.add(cluster)) duplicates++;
    return duplicates;
  };

  mark(header.l1TableOffset, tableSize);
  const clustersInImage = Math.ceil(geometry.imageSize / clusterSize);
  const { headerRegionSize, validationFileSize } = geometry;
  const alignmentMask = clusterSize - 1; // cluster sizes are below 2^32: the low word decides alignment
  const PAGE_BITS = ClusterSet.PAGE_BITS;

  /** Fragmentation is counted per L2 table, across its chunks. */
  let previous = 0;
  /** One chunk of an L2 table; true when the walk must stop. */
  const scanL2Chunk = (chunk: TableChunk, l2Offset: number, guestClusterBase: number): boolean => {
    const { view, count, firstIndex } = chunk;
    let allocated = 0;
    let fragmented = 0;
    let stop = false;
    let last = previous; // a local: a double stored in a closure variable would be boxed on every entry
    let added = 0;
    let pageIndex = -1;
    let page: Uint32Array = new Uint32Array(0);
    for (let j = 0; j < count; j++) {
      const low = view.getUint32(j * ENTRY_SIZE, true);
      const high = view.getUint32(j * ENTRY_SIZE + 4, true);
      if (high === 0 && low <= ENTRY_ZERO) {
        if (low === ENTRY_ZERO && guestClusterBase + firstIndex + j < clustersInImage) result.hasZeroClusters = true;
        continue;
      }
      // Values of 2^53 and more come out inexact but past every file, so they fail the bounds below.
      const dataOffset = high * 2 ** 32 + low;
      allocated++;
      if (last !== 0 && last + clusterSize !== dataOffset) fragmented++;
      last = dataOffset;
      if ((low & alignmentMask) === 0 && dataOffset >= headerRegionSize && dataOffset < validationFileSize) {
        // used.add() inline, on the page of the last entry (data clusters come mostly in file order).
        const cluster = Math.floor(dataOffset / divisor);
        const index = Math.floor(cluster / PAGE_BITS);
        if (index !== pageIndex) {
          page = used.page(index);
          pageIndex = index;
        }
        const bit = cluster - index * PAGE_BITS;
        const mask = 1 << (bit & 31);
        if ((page[bit >>> 5]! & mask) === 0) {
          page[bit >>> 5] = page[bit >>> 5]! | mask;
          added++;
          continue;
        }
        const l2Index = firstIndex + j;
        const where = `(L2 entry ${l2Index}, host ${hex(entryHostOffset(l2Offset, l2Index))}, guest ${hex((guestClusterBase + l2Index) * 2 ** clusterBits)})`;
        stop = report(`${FORMAT}: data cluster ${hex(dataOffset)} ${where} is already in use: clusters must be referenced once`, entryHostOffset(l2Offset, l2Index));
      } else {
        const l2Index = firstIndex + j;
        const where = `(host ${hex(entryHostOffset(l2Offset, l2Index))}, guest ${hex((guestClusterBase + l2Index) * 2 ** clusterBits)})`;
        const problem = clusterOffsetProblem(geometry, dataOffset);
        stop = report(`${FORMAT}: L2 entry ${l2Index} ${where} names a data cluster at ${entryHex(view, j)} that ${problem}`, entryHostOffset(l2Offset, l2Index));
      }
      if (stop) break;
    }
    previous = last;
    used.counted(added);
    result.allocatedClusters += allocated;
    result.fragmentedClusters += fragmented;
    return stop;
  };

  /** The first chunks of the next few L2 tables, read while the current one is checked. */
  const ahead = new Map<number, { chunks: AsyncGenerator<TableChunk>; first: Promise<IteratorResult<TableChunk>> }>();
  const chunksOf = (l2Offset: number): { chunks: AsyncGenerator<TableChunk>; first: Promise<IteratorResult<TableChunk>> | undefined } => {
    const taken = ahead.get(l2Offset);
    ahead.delete(l2Offset);
    return taken ?? { chunks: readTableEntries(io, l2Offset, 0, geometry.tableEntries), first: undefined };
  };
  const readAhead = (l2Offset: number): void => {
    if (ahead.has(l2Offset) || tableOffsetProblem(geometry, l2Offset)) return;
    const chunks = readTableEntries(io, l2Offset, 0, geometry.tableEntries);
    const first = chunks.next();
    first.catch(() => {}); // reported when the table is checked
    ahead.set(l2Offset, { chunks, first });
  };

  scan: for await (const l1Chunk of readTableEntries(io, header.l1TableOffset, 0, geometry.tableEntries)) {
    if (l1Chunk.allZero) continue;
    let aheadIndex = 0;
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
      previous = 0;
      const { chunks, first } = chunksOf(l2Offset);
      for (aheadIndex = Math.max(aheadIndex, i + 1); aheadIndex < l1Chunk.count && ahead.size < READ_AHEAD; aheadIndex++) {
        const nextOffset = decodeEntry(l1Chunk.view, aheadIndex);
        if (nextOffset !== ENTRY_UNALLOCATED && nextOffset !== l2Offset) readAhead(nextOffset);
      }
      try {
        let step = first ? await first : await chunks.next();
        for (; !step.done; step = await chunks.next()) {
          if (!step.value.allZero && scanL2Chunk(step.value, l2Offset, guestClusterBase)) break scan;
        }
      } catch (error) {
        // A table that cannot be read is a check error (qemu: check_errors), not a verdict on the image.
        if (!isIcError(error) || error.code !== 'IO' || stopAtFirst) throw error;
        result.checkErrors++;
        if (result.messages.length < MAX_MESSAGES) result.messages.push(`${FORMAT}: could not read the L2 table at ${hex(l2Offset)}: ${error.message}`);
      }
    }
  }

  // Like qemu, leaks are only counted when every table could be read.
  if (result.checkErrors === 0 && !(stopAtFirst && result.corruptions > 0)) {
    const candidates = Math.floor(validationFileSize / divisor) - headerRegionSize / clusterSize;
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
  const scan = await scanTables(context, { qemuClusterNumbers: true });
  const messages = [...scan.messages];
  const { clusterSize, validationFileSize } = context.geometry;
  if (scan.leaks > 0 && validationFileSize / clusterSize >= clusterSize - 1) {
    // Say so: from cluster_size - 1 clusters of file on, qemu's numbering finds leaks that no cluster is.
    messages.push(
      `${FORMAT}: counted as qemu-img check counts (clusters numbered by offset / (cluster_size - 1)): a file this large shows about ` +
        `${Math.floor(validationFileSize / (clusterSize - 1)) - validationFileSize / clusterSize} leaked cluster(s) even when every cluster is referenced`,
    );
  }
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
