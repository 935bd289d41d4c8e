import {
  IcError,
  pushExtent,
  readExtents,
  type BlockIO,
  type ConversionSource,
  type Extent,
  type HostRange,
  type Image,
  type ImageInfo,
} from '@ic/core/sdk';
import { BAT_UNALLOCATED, BAT_UNIT, batBytesFor, readBat } from './bat.js';
import { bitmapSize } from './bitmaps.js';
import { DYNAMIC_HEADER_LENGTH, MAX_TABLE_ENTRIES, parseDynamicHeader } from './dynamic-header.js';
import {
  DISK_TYPE_DIFFERENCING,
  DISK_TYPE_DYNAMIC,
  DISK_TYPE_FIXED,
  FOOTER_LENGTH,
  FORMAT,
  footerChecksumOk,
  hasCookie,
  parseFooter,
  virtualSizeOf,
  type VhdFooter,
} from './footer.js';

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

/** Extents handed out per batch. */
const BATCH = 4096;
/** Host bytes asked of BlockIO.dataRanges at a time while mapping a fixed disk. */
const HOLE_QUERY_WINDOW = 64 * 1024 ** 3;
/**
 * The allocation unit a fixed disk reports to in-place targets. Its data is identity-mapped, so any unit keeps
 * it in place; 64 KiB is qemu-img's default cluster size for qcow2, QED and VMDK (as for raw).
 */
export const FIXED_CONVERSION_CLUSTER_SIZE = 65536;

export interface FixedLayout {
  kind: 'fixed';
  virtualSize: number;
  /** Where the (only) footer is: the last sector of the file. */
  footerOffset: number;
  fileSize: number;
}

export interface DynamicLayout {
  kind: 'dynamic';
  virtualSize: number;
  blockSize: number;
  /** Bytes of each block's sector bitmap, which comes right before its data. */
  bitmapSize: number;
  /** BAT entries that map some part of the disk. */
  blocksInDisk: number;
  maxTableEntries: number;
  dynamicHeaderOffset: number;
  tableOffset: number;
  /** The BAT rounded up to a sector (qemu's first free byte starts past it). */
  tableBytes: number;
  /** qemu's free_data_block_offset: past the BAT and past every allocated block; a new block goes there. */
  freeDataBlockOffset: number;
  fileSize: number;
}

export type VpcLayout = FixedLayout | DynamicLayout;

function corrupt(message: string, offset?: number): IcError {
  return new IcError('CORRUPT', `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

function overlaps(a: number, aLength: number, b: number, bLength: number): boolean {
  return a < b + bLength && b < a + aLength;
}

/** The fixed disk footer in the last sector of `tail` (the file's last bytes), or undefined. */
export function fixedFooterIn(tail: Uint8Array, fileSize: number): VhdFooter | undefined {
  if (tail.length < FOOTER_LENGTH || fileSize < FOOTER_LENGTH) return undefined;
  const bytes = tail.subarray(tail.length - FOOTER_LENGTH);
  if (!hasCookie(bytes) || !footerChecksumOk(bytes)) return undefined;
  const footer = parseFooter(bytes);
  return footer.diskType === DISK_TYPE_FIXED ? footer : undefined;
}

/**
 * Reads and validates the footer (at offset 0 for a dynamic disk, else in the last sector), the dynamic header and
 * the BAT as qemu's vpc_open does, in its order, with its reasons; refuses a differencing disk; and refuses what
 * qemu leaves to chance: structures past the end of the file or overlapping each other, a fixed disk whose data
 * would run into its footer.
 */
export async function readLayout(io: BlockIO): Promise<{ footer: VhdFooter; layout: VpcLayout }> {
  const fileSize = await io.size();
  if (fileSize < FOOTER_LENGTH) throw new IcError('WRONG_FORMAT', `${FORMAT}: ${io.name} is too small for a VHD footer (${fileSize} bytes)`, { format: FORMAT, path: io.name });
  const head = await io.read(0, FOOTER_LENGTH);
  if (!hasCookie(head)) {
    const tail = await io.read(fileSize - FOOTER_LENGTH, FOOTER_LENGTH);
    if (!hasCookie(tail) || parseFooter(tail).diskType !== DISK_TYPE_FIXED) {
      throw new IcError('WRONG_FORMAT', `${FORMAT}: ${io.name} is not a VHD image (no "conectix" footer at offset 0, and no fixed-disk footer at the end)`, { format: FORMAT, path: io.name });
    }
    if (!footerChecksumOk(tail)) throw corrupt(`Incorrect header checksum (footer at ${hex(fileSize - FOOTER_LENGTH)})`, fileSize - FOOTER_LENGTH);
    const footer = parseFooter(tail);
    const virtualSize = virtualSizeOf(footer);
    if (virtualSize > fileSize - FOOTER_LENGTH) {
      throw corrupt(`the fixed disk's ${virtualSize} bytes of data run into its footer at ${hex(fileSize - FOOTER_LENGTH)}: the image is truncated`, fileSize - FOOTER_LENGTH);
    }
    return { footer, layout: { kind: 'fixed', virtualSize, footerOffset: fileSize - FOOTER_LENGTH, fileSize } };
  }

  if (!footerChecksumOk(head)) throw corrupt('Incorrect header checksum (footer at offset 0)', 0);
  const footer = parseFooter(head);
  if (footer.diskType === DISK_TYPE_DIFFERENCING) {
    const name = await differencingParentName(io, footer, fileSize);
    throw new IcError('UNSUPPORTED', `${FORMAT}: differencing VHD images are not supported: its data depends on the parent disk${name ? ` "${name}"` : ''}`, { format: FORMAT });
  }
  if (footer.diskType !== DISK_TYPE_DYNAMIC) {
    throw corrupt(`the footer at offset 0 gives disk type ${footer.diskType}; only a dynamic disk (3) has its footer copied there`, 60);
  }
  const virtualSize = virtualSizeOf(footer);

  if (footer.dataOffset > BigInt(fileSize - DYNAMIC_HEADER_LENGTH) || footer.dataOffset < BigInt(FOOTER_LENGTH)) {
    throw corrupt(`the dynamic disk header at data_offset ${hex(footer.dataOffset)} (footer offset 16) does not lie between the footer copy and the end of the file (${fileSize} bytes)`, 16);
  }
  const dynamicHeaderOffset = Number(footer.dataOffset);
  const dynamic = parseDynamicHeader(await io.read(dynamicHeaderOffset, DYNAMIC_HEADER_LENGTH));
  if (!dynamic.cookieOk) throw corrupt(`Invalid header magic (dynamic disk header at ${hex(dynamicHeaderOffset)})`, dynamicHeaderOffset);
  const { blockSize, maxTableEntries } = dynamic;
  if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) throw corrupt(`Invalid block size ${blockSize} (dynamic header offset 32)`, dynamicHeaderOffset + 32);
  if (Math.floor(virtualSize / blockSize) > 0xffffffff) throw corrupt('Too many blocks', dynamicHeaderOffset + 32);
  if (maxTableEntries * blockSize < virtualSize) {
    throw corrupt(`Page table too small: max_table_entries ${maxTableEntries} × block size ${blockSize} does not cover the ${virtualSize}-byte disk`, dynamicHeaderOffset + 28);
  }
  if (maxTableEntries > MAX_TABLE_ENTRIES) throw corrupt(`Max Table Entries too large (${maxTableEntries})`, dynamicHeaderOffset + 28);
  const tableBytes = batBytesFor(maxTableEntries);
  if (dynamic.tableOffset > BigInt(fileSize)) throw corrupt(`the BAT at table_offset ${hex(dynamic.tableOffset)} lies past the end of the file: the image has been truncated`, dynamicHeaderOffset + 16);
  const tableOffset = Number(dynamic.tableOffset);
  if (overlaps(tableOffset, tableBytes, 0, FOOTER_LENGTH) || overlaps(tableOffset, tableBytes, dynamicHeaderOffset, DYNAMIC_HEADER_LENGTH)) {
    throw corrupt(`the ${tableBytes}-byte BAT at ${hex(tableOffset)} overlaps the footer copy or the dynamic disk header`, dynamicHeaderOffset + 16);
  }

  const layout: DynamicLayout = {
    kind: 'dynamic',
    virtualSize,
    blockSize,
    bitmapSize: bitmapSize(blockSize),
    blocksInDisk: Math.ceil(virtualSize / blockSize),
    maxTableEntries,
    dynamicHeaderOffset,
    tableOffset,
    tableBytes,
    freeDataBlockOffset: tableOffset + tableBytes,
    fileSize,
  };
  if (layout.freeDataBlockOffset > fileSize) throw corrupt(`the BAT (${tableBytes} bytes at ${hex(tableOffset)}) runs past the end of the file: the image has been truncated`, tableOffset);
  // qemu's free_data_block_offset: every allocated block must end inside the file.
  for await (const chunk of readBat(io, tableOffset, 0, maxTableEntries)) {
    for (const entry of chunk.entries) {
      if (entry === BAT_UNALLOCATED) continue;
      const end = entry * BAT_UNIT + layout.bitmapSize + blockSize;
      if (end > layout.freeDataBlockOffset) layout.freeDataBlockOffset = end;
    }
  }
  if (layout.freeDataBlockOffset > fileSize) {
    throw corrupt(`free_data_block_offset points after the end of file (${hex(layout.freeDataBlockOffset)} > ${fileSize} bytes). The image has been truncated.`);
  }
  return { footer, layout };
}

/** The parent's name from a differencing disk's header, for the refusal message (best effort). */
async function differencingParentName(io: BlockIO, footer: VhdFooter, fileSize: number): Promise<string | undefined> {
  if (footer.dataOffset > BigInt(fileSize - DYNAMIC_HEADER_LENGTH)) return undefined;
  const header = parseDynamicHeader(await io.read(Number(footer.dataOffset), DYNAMIC_HEADER_LENGTH));
  return header.cookieOk && header.parentName !== '' ? header.parentName : undefined;
}

/**
 * Why the block whose BAT entry is `entry` cannot be used, or undefined: its bitmap and data must not overlap the
 * footer copy, the dynamic header or the BAT (its end inside the file was checked at open, as qemu does).
 */
export function blockProblem(layout: DynamicLayout, entry: number): string | undefined {
  const start = entry * BAT_UNIT;
  const length = layout.bitmapSize + layout.blockSize;
  if (overlaps(start, length, 0, FOOTER_LENGTH)) return 'overlaps the footer copy at offset 0';
  if (overlaps(start, length, layout.dynamicHeaderOffset, DYNAMIC_HEADER_LENGTH)) return `overlaps the dynamic disk header at ${hex(layout.dynamicHeaderOffset)}`;
  if (overlaps(start, length, layout.tableOffset, layout.tableBytes)) return `overlaps the BAT at ${hex(layout.tableOffset)}`;
  return undefined;
}

/** An opened VHD image (fixed or dynamic). Reads only. */
export class VpcImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly footer: VhdFooter,
    readonly layout: VpcLayout,
  ) {}

  info(): ImageInfo {
    // qemu-img info shows the block size of a dynamic disk as cluster-size, nothing for a fixed one.
    const info: ImageInfo = { format: FORMAT, virtualSize: this.layout.virtualSize, dirty: false };
    if (this.layout.kind === 'dynamic') info.clusterSize = this.layout.blockSize;
    return info;
  }

  /**
   * Fixed: guest byte g is file byte g; the file's holes (where the store can tell) are zero runs at their host
   * offset, as for raw. Dynamic: allocated blocks are data after their bitmap; the others read as zeros (qemu-img
   * map: present, zero).
   */
  map(): AsyncIterable<Extent[]> {
    const layout = this.layout;
    return layout.kind === 'fixed' ? this.fixedExtents(layout) : this.dynamicExtents(layout, 0, layout.virtualSize);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const { virtualSize } = this.layout;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > virtualSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} lies outside the ${virtualSize}-byte disk`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    if (this.layout.kind === 'fixed') return this.io.read(guestOffset, length);
    return readExtents(this.io, this.dynamicExtents(this.layout, guestOffset, guestOffset + length), guestOffset, length);
  }

  /**
   * The conversion's view. Fixed: the footer at the end is the only structure. Dynamic: the footer copy, the
   * dynamic header, the BAT, every allocated block's bitmap, the footer at the end (when it lies past every block),
   * and the blocks of BAT entries past the disk's end (still referenced by the image).
   */
  async conversionSource(): Promise<ConversionSource> {
    const layout = this.layout;
    if (layout.kind === 'fixed') {
      return {
        options: { virtualSize: layout.virtualSize, clusterSize: FIXED_CONVERSION_CLUSTER_SIZE },
        blockers: [],
        metadataRanges: () => [{ offset: layout.footerOffset, length: FOOTER_LENGTH, kind: 'header', role: 'VHD footer' }],
        zeroHostRangesReadAsZero: true,
      };
    }
    const io = this.io;
    const dynamic: DynamicLayout = layout;
    async function* metadataRanges(): AsyncGenerator<HostRange[]> {
      const layout = dynamic;
      const fixed: HostRange[] = [
        { offset: 0, length: FOOTER_LENGTH, kind: 'header', role: 'VHD footer copy' },
        { offset: layout.dynamicHeaderOffset, length: DYNAMIC_HEADER_LENGTH, kind: 'header', role: 'VHD dynamic disk header' },
        { offset: layout.tableOffset, length: layout.tableBytes, kind: 'metadata', role: 'VHD block allocation table' },
      ];
      if (layout.fileSize - FOOTER_LENGTH >= layout.freeDataBlockOffset) fixed.push({ offset: layout.fileSize - FOOTER_LENGTH, length: FOOTER_LENGTH, kind: 'header', role: 'VHD footer' });
      yield fixed;
      for await (const chunk of readBat(io, layout.tableOffset, 0, layout.maxTableEntries)) {
        const ranges: HostRange[] = [];
        chunk.entries.forEach((entry, i) => {
          if (entry === BAT_UNALLOCATED) return;
          const block = chunk.firstBlock + i;
          const problem = blockProblem(layout, entry);
          if (problem) throw corrupt(`BAT entry ${block} names a block at ${hex(entry * BAT_UNIT)} that ${problem}`, layout.tableOffset + block * 4);
          const start = entry * BAT_UNIT;
          if (layout.bitmapSize > 0) ranges.push({ offset: start, length: layout.bitmapSize, kind: 'metadata', role: 'VHD block bitmap' });
          if (block >= layout.blocksInDisk) ranges.push({ offset: start + layout.bitmapSize, length: layout.blockSize, kind: 'data', role: 'VHD block past the disk end' });
        });
        if (ranges.length > 0) yield ranges;
      }
    }
    return { options: { virtualSize: layout.virtualSize, clusterSize: layout.blockSize }, blockers: [], metadataRanges };
  }

  async close(): Promise<void> {}

  private async *fixedExtents(layout: FixedLayout): AsyncGenerator<Extent[]> {
    const { virtualSize } = layout;
    if (!this.io.dataRanges) {
      if (virtualSize > 0) yield [{ kind: 'data', guestOffset: 0, length: virtualSize, hostOffset: 0 }];
      return;
    }
    let at = 0;
    for (let window = 0; window < virtualSize; window += HOLE_QUERY_WINDOW) {
      const windowEnd = Math.min(virtualSize, window + HOLE_QUERY_WINDOW);
      const out: Extent[] = [];
      for (const range of await this.io.dataRanges(window, windowEnd - window)) {
        const from = Math.max(range.offset, window);
        const to = Math.min(range.offset + range.length, windowEnd);
        if (to <= from) continue;
        if (from > at) pushExtent(out, { kind: 'zero', guestOffset: at, length: from - at, hostOffset: at });
        pushExtent(out, { kind: 'data', guestOffset: from, length: to - from, hostOffset: from });
        at = to;
      }
      if (out.length > 0) yield out;
    }
    if (at < virtualSize) yield [{ kind: 'zero', guestOffset: at, length: virtualSize - at, hostOffset: at }];
  }

  /** Extents covering guest [start, end) of a dynamic disk, merged, in batches, reading only the BAT entries of the range. */
  async *dynamicExtents(layout: DynamicLayout, start: number, end: number): AsyncGenerator<Extent[]> {
    if (end <= start) return;
    const { blockSize } = layout;
    const firstBlock = Math.floor(start / blockSize);
    const lastBlock = Math.floor((end - 1) / blockSize);
    let out: Extent[] = [];
    for await (const chunk of readBat(this.io, layout.tableOffset, firstBlock, lastBlock - firstBlock + 1)) {
      for (let i = 0; i < chunk.entries.length; i++) {
        const block = chunk.firstBlock + i;
        const entry = chunk.entries[i]!;
        const from = Math.max(start, block * blockSize);
        const to = Math.min(end, (block + 1) * blockSize);
        if (entry === BAT_UNALLOCATED) {
          pushExtent(out, { kind: 'zero', guestOffset: from, length: to - from });
          continue;
        }
        const problem = blockProblem(layout, entry);
        if (problem) {
          const where = layout.tableOffset + block * 4;
          throw corrupt(`BAT entry ${block} (host ${hex(where)}, guest ${hex(block * blockSize)}) names a block at ${hex(entry * BAT_UNIT)} that ${problem}`, where);
        }
        pushExtent(out, { kind: 'data', guestOffset: from, length: to - from, hostOffset: entry * BAT_UNIT + layout.bitmapSize + (from - block * blockSize) });
      }
      if (out.length > BATCH) {
        yield out.slice(0, -1);
        out = out.slice(-1);
      }
    }
    if (out.length > 0) yield out;
  }
}

