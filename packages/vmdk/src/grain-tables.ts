import { readInto, type BlockIO } from '@ic/core/sdk';
import { corruptAt } from './errors.js';
import { SECTOR_SIZE, type SparseGeometry } from './header.js';

/**
 * Grain directory (GD) and grain tables (GT). The GD is an array of u32 sector offsets, one per grain table
 * (0 = no table: the whole range it covers is unallocated). A GT is an array of numGTEsPerGT u32 grain table
 * entries (GTE), one per grain:
 *   0                          unallocated (reads the parent, or zeros)
 *   1 with FLAG_ZEROED_GRAIN   zeroed grain (reads zeros, hides the parent)
 *   anything else              sector offset of the grain in this file (for compressed extents: of its marker)
 * The redundant copy (RGD and its own GTs) mirrors the primary one when FLAG_REDUNDANT_GD is set.
 */
export const GTE_UNALLOCATED = 0;
export const GTE_ZEROED = 1;
export const GD_ENTRY_BYTES = 4;

/** How one GTE reads. */
export type GrainState = 'unallocated' | 'zero' | 'data';

export function grainState(gte: number, geometry: SparseGeometry): GrainState {
  if (gte === GTE_UNALLOCATED) return 'unallocated';
  if (gte === GTE_ZEROED && geometry.zeroedGrains) return 'zero';
  return 'data';
}

/** A loaded and bounds-checked grain directory. */
export interface GrainDirectory {
  /** Sector of the directory itself. */
  sector: number;
  /** GT sector per GD index (0 = none). */
  entries: Uint32Array;
  role: 'GD' | 'RGD';
}

function readU32Array(bytes: Uint8Array, count: number): Uint32Array {
  const out = new Uint32Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < count; i++) out[i] = view.getUint32(i * 4, true);
  return out;
}

/**
 * Reads a GD and checks it against the file: the directory and every table it names must lie inside the file and
 * past the header sector. `protectedEnd` is the end of the header/descriptor area that tables may not overlap.
 */
export async function loadGrainDirectory(
  io: BlockIO,
  geometry: SparseGeometry,
  sector: number,
  role: 'GD' | 'RGD',
  fileSize: number,
  protectedEnd: number,
): Promise<GrainDirectory> {
  const offset = sector * SECTOR_SIZE;
  const length = geometry.gdEntries * GD_ENTRY_BYTES;
  if (sector === 0 && length > 0) throw corruptAt(`${role} offset is 0 (the header sector)`, offset);
  if (offset < protectedEnd && length > 0) throw corruptAt(`${role} at sector ${sector} overlaps the header or descriptor`, offset);
  if (offset + length > fileSize) {
    throw corruptAt(`${role} (${geometry.gdEntries} entries at sector ${sector}) extends past the end of the file (${fileSize} bytes)`, offset);
  }
  const entries = readU32Array(await io.read(offset, length), geometry.gdEntries);
  for (let index = 0; index < entries.length; index++) {
    const gtSector = entries[index]!;
    if (gtSector === 0) continue;
    const gtOffset = gtSector * SECTOR_SIZE;
    if (gtOffset < protectedEnd) {
      throw corruptAt(`${role} entry ${index} points its grain table at sector ${gtSector}, inside the header or descriptor`, offset + index * 4);
    }
    if (gtOffset + geometry.gtBytes > fileSize) {
      throw corruptAt(`${role} entry ${index} points its grain table at sector ${gtSector}, past the end of the file`, offset + index * 4);
    }
  }
  return { sector, entries, role };
}

/**
 * Refuses grain tables that overlap each other or a directory: two GD entries naming one table would let a tiny
 * file describe an enormous disk (and a write through one would change the other).
 */
export function assertTablesDisjoint(geometry: SparseGeometry, directories: readonly GrainDirectory[]): void {
  const total = directories.reduce((sum, gd) => sum + gd.entries.length, 0);
  const starts = new Float64Array(total);
  let n = 0;
  for (const gd of directories) for (const gt of gd.entries) if (gt !== 0) starts[n++] = gt;
  const sorted = starts.subarray(0, n).sort();
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]! < sorted[i - 1]! + geometry.gtSectors) {
      throw corruptAt(`grain tables at sectors ${sorted[i - 1]} and ${sorted[i]} overlap`, sorted[i]! * SECTOR_SIZE);
    }
  }
  const gdSectors = Math.ceil((geometry.gdEntries * GD_ENTRY_BYTES) / SECTOR_SIZE);
  if (gdSectors === 0) return;
  for (const gd of directories) {
    const end = gd.sector + gdSectors;
    // The first table starting at or after gd.sector - gtSectors + 1 is the only candidate for an overlap.
    let low = 0;
    let high = sorted.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (sorted[mid]! + geometry.gtSectors <= gd.sector) low = mid + 1;
      else high = mid;
    }
    if (low < sorted.length && sorted[low]! < end) {
      throw corruptAt(`grain table at sector ${sorted[low]} overlaps the ${gd.role} at sector ${gd.sector}`, sorted[low]! * SECTOR_SIZE);
    }
    for (const other of directories) {
      if (other !== gd && other.sector < end && gd.sector < other.sector + gdSectors) {
        throw corruptAt(`the ${gd.role} at sector ${gd.sector} overlaps the ${other.role} at sector ${other.sector}`, gd.sector * SECTOR_SIZE);
      }
    }
  }
}

/** Typed arrays use the platform's byte order; on little-endian platforms a GT read is already its GTEs. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * Reads grain tables on demand, fetching runs of tables that are contiguous in the file in one read (qemu lays
 * all of them out back to back), keeping only the current run in memory and reading the next run ahead while
 * the current one is used (tables are mostly walked in directory order).
 */
export class GrainTableReader {
  private runStart = -1;
  private runCount = 0;
  private runData: Uint32Array = new Uint32Array(0);
  private next: { start: number; count: number; data: Promise<Uint32Array>; buffer: Uint8Array } | undefined;
  /** The bytes under runData, and the buffer of the run before it (read into by the next run ahead). */
  private runBuffer: Uint8Array | undefined;
  private free: Uint8Array | undefined;
  /** The first table with a GD entry after the current run. */
  private following = 0;
  /** Tables per read at most: 512 tables of 2 KiB = 1 MiB. */
  private static readonly MAX_RUN = 512;

  constructor(
    private readonly io: BlockIO,
    private readonly geometry: SparseGeometry,
    private readonly directory: GrainDirectory,
  ) {}

  /** Tables [index, index + count) that follow each other in the file. */
  private runLength(index: number): number {
    const entries = this.directory.entries;
    const sector = entries[index]!;
    let count = 1;
    if (SECTOR_SIZE * this.geometry.gtSectors === this.geometry.gtBytes) {
      while (count < GrainTableReader.MAX_RUN && index + count < entries.length && entries[index + count] === sector + count * this.geometry.gtSectors) {
        count++;
      }
    }
    return count;
  }

  /** Reads a run into `free` when it is large enough (the buffer of the run used before), else into a new buffer. */
  private readRun(index: number, count: number): { data: Promise<Uint32Array>; buffer: Uint8Array } {
    const length = count * this.geometry.gtSectors * SECTOR_SIZE;
    const buffer = this.free && this.free.length >= length ? this.free : new Uint8Array(length);
    if (buffer === this.free) this.free = undefined;
    return { data: this.decodeRun(index, count, buffer.subarray(0, length)), buffer };
  }

  private async decodeRun(index: number, count: number, into: Uint8Array): Promise<Uint32Array> {
    const { gtSectors, gtesPerGT } = this.geometry;
    const bytes = await readInto(this.io, this.directory.entries[index]! * SECTOR_SIZE, into);
    const stride = gtSectors * SECTOR_SIZE;
    if (LITTLE_ENDIAN && stride === gtesPerGT * 4 && bytes.byteOffset % 4 === 0) {
      return new Uint32Array(bytes.buffer, bytes.byteOffset, count * gtesPerGT);
    }
    const data = new Uint32Array(count * gtesPerGT);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let t = 0; t < count; t++) {
      for (let i = 0; i < gtesPerGT; i++) data[t * gtesPerGT + i] = view.getUint32(t * stride + i * 4, true);
    }
    return data;
  }

  /** The GTEs of the table for GD index `index`; undefined when the GD entry is 0. */
  async table(index: number): Promise<Uint32Array | undefined> {
    const entries = this.directory.entries;
    if (entries[index]! === 0) return undefined;
    if (index < this.runStart || index >= this.runStart + this.runCount) {
      const ahead = this.next?.start === index ? this.next : undefined;
      const count = ahead ? ahead.count : this.runLength(index);
      // Read ahead only for a walk in directory order (this run follows the last one), not for random reads.
      const walking = index === this.following;
      this.next = undefined;
      // A run read ahead for another index is dropped with its buffer (its read may still be under way).
      const read = ahead ?? this.readRun(index, count);
      if (this.runBuffer) this.free = this.runBuffer;
      this.runBuffer = undefined;
      this.runStart = -1; // until the read succeeds: the old run's buffer may be read into again
      this.runCount = 0;
      this.runData = await read.data;
      this.runBuffer = read.buffer;
      this.runStart = index;
      this.runCount = count;
      let following = index + count;
      while (following < entries.length && entries[following] === 0) following++;
      this.following = following;
      if (walking && following < entries.length) {
        const followingCount = this.runLength(following);
        const { data, buffer } = this.readRun(following, followingCount);
        data.catch(() => {}); // reported when that run is needed
        this.next = { start: following, count: followingCount, data, buffer };
      }
    }
    const at = (index - this.runStart) * this.geometry.gtesPerGT;
    return this.runData.subarray(at, at + this.geometry.gtesPerGT);
  }
}

/** Encodes u32 entries little-endian into `out` at `offset`. */
export function writeU32Entries(out: Uint8Array, offset: number, entries: ArrayLike<number>): void {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (let i = 0; i < entries.length; i++) view.setUint32(offset + i * 4, entries[i]! >>> 0, true);
}

/** qemu's layout of a fresh monolithicSparse file, in sectors (vmdk_init_extent). */
export interface SparseLayout {
  gtCount: number;
  gdSectors: number;
  gtSectors: number;
  rgdOffset: number;
  gdOffset: number;
  grainOffset: number;
}

/**
 * Where qemu puts the tables for `capacity` sectors with `grainSectors`-sector grains and 512-entry tables:
 * RGD right after the 20-sector descriptor, the redundant GTs, the GD, the GTs, and the first grain at the next
 * multiple of the grain size.
 */
export function qemuSparseLayout(capacity: number, grainSectors: number, gtesPerGT = 512): SparseLayout {
  const grains = Math.ceil(capacity / grainSectors);
  const gtSectors = Math.ceil((gtesPerGT * 4) / SECTOR_SIZE);
  const gtCount = Math.ceil(grains / gtesPerGT);
  const gdSectors = Math.ceil((gtCount * 4) / SECTOR_SIZE);
  const rgdOffset = 1 + 20;
  const gdOffset = rgdOffset + gdSectors + gtSectors * gtCount;
  const grainOffset = Math.ceil((gdOffset + gdSectors + gtSectors * gtCount) / grainSectors) * grainSectors;
  return { gtCount, gdSectors, gtSectors, rgdOffset, gdOffset, grainOffset };
}

/**
 * Serialises a directory and its tables as one contiguous block starting at sector `base`: the directory
 * (gdSectors), then table i at base + gdSectors + i × gtSectors. Returns the bytes and the directory entries.
 */
export function buildDirectoryBlock(
  base: number,
  gdSectors: number,
  gtSectors: number,
  gtesPerGT: number,
  tables: readonly (Uint32Array | undefined)[],
): Uint8Array {
  const out = new Uint8Array((gdSectors + gtSectors * tables.length) * SECTOR_SIZE);
  const directory = new Uint32Array(tables.length);
  for (let i = 0; i < tables.length; i++) {
    directory[i] = base + gdSectors + i * gtSectors;
    const table = tables[i];
    if (table) writeU32Entries(out, (gdSectors + i * gtSectors) * SECTOR_SIZE, table.subarray(0, gtesPerGT));
  }
  writeU32Entries(out, 0, directory);
  return out;
}
