import {
  canMerge,
  IcError,
  readExtents,
  type BackingReference,
  type BlockIO,
  type CheckOptions,
  type CheckReport,
  type ConversionSource,
  type Extent,
  type AmendReport,
  type Image,
  type ImageFeature,
  type ImageInfo,
  type OpenOptions,
  type PointerFormat,
  type UnitRun,
} from '@ic/core/sdk';
import { descriptorText, EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_WINDOW, parseDescriptor, type Descriptor } from './descriptor.js';
import { corruptAt, FORMAT, vmdkError } from './errors.js';
import { protectedHeaderEnd } from './host-ranges.js';
import {
  assertTablesDisjoint,
  grainState,
  GrainTableReader,
  loadGrainDirectory,
  type GrainDirectory,
  type GrainState,
} from './grain-tables.js';
import { parseSparseHeader, SECTOR_SIZE, validateSparseHeader, type SparseGeometry, type SparseHeader } from './header.js';
import { readCompressedGrain, readFooterHeader } from './stream.js';
import { checkSparse } from './check.js';
import { repairSparse } from './repair.js';
import { openDescriptorImage } from './descriptor-image.js';
import { sparseConversionSource } from './source.js';
import { countZeroedGrains, demoteZeroedGrains } from './zeroed.js';

/** One grain (or a whole unallocated grain table range) as the tables describe it. */
export interface GrainRecord {
  state: GrainState;
  guestOffset: number;
  length: number;
  /** The raw GTE (0 for unallocated ranges without a table). */
  gte: number;
  /** Position of the GTE: GD index and index in the table (-1 when the GD entry is 0). */
  gdIndex: number;
  gtIndex: number;
}

/** Merges runs into Extents as they stream by, without holding the map in memory. */
export class ExtentRunMerger {
  private current: Extent | undefined;

  /** Adds an extent; returns the previous run when this one cannot extend it. */
  push(extent: Extent): Extent | undefined {
    if (extent.length === 0) return undefined;
    if (this.current && canMerge(this.current, extent)) {
      this.current.length += extent.length;
      return undefined;
    }
    const done = this.current;
    this.current = { ...extent };
    return done;
  }

  finish(): Extent | undefined {
    const done = this.current;
    this.current = undefined;
    return done;
  }
}

/** Everything open() learned about a sparse extent file. */
export interface SparseState {
  io: BlockIO;
  fileSize: number;
  header: SparseHeader;
  geometry: SparseGeometry;
  descriptor: Descriptor;
  gd: GrainDirectory;
  rgd: GrainDirectory | undefined;
  /** The header came from the footer at the end of the file (gdOffset = GD_AT_END in sector 0). */
  footer: boolean;
  /** End of the header + descriptor area that tables may not overlap. */
  protectedEnd: number;
  createType: 'monolithicSparse' | 'streamOptimized';
  backing: BackingReference | undefined;
  options: OpenOptions;
}

/** A monolithicSparse or streamOptimized file: one KDMV sparse extent with its embedded descriptor. */
export class SparseVmdkImage implements Image {
  readonly format = FORMAT;
  private lastGrain: { markerOffset: number; data: Uint8Array } | undefined;
  private checkedBacking: Image | undefined;

  constructor(readonly state: SparseState) {}

  info(): ImageInfo {
    const { geometry, descriptor, createType } = this.state;
    const extent: Record<string, unknown> = {};
    if (geometry.compressed) extent.compressed = true;
    extent['virtual-size'] = geometry.virtualSize;
    extent.filename = this.state.io.name;
    extent['cluster-size'] = geometry.grainBytes;
    extent.format = ''; // qemu 7.2 leaves the type of the embedded extent empty
    const info: ImageInfo = {
      format: FORMAT,
      virtualSize: geometry.virtualSize,
      clusterSize: geometry.grainBytes,
      dirty: false,
      formatSpecific: {
        type: 'vmdk',
        data: { cid: descriptor.cid, 'parent-cid': descriptor.parentCid, 'create-type': createType, extents: [extent] },
      },
    };
    if (this.state.backing) info.backing = { ...this.state.backing };
    return info;
  }

  /** Streams every grain of [from, to) in guest order (whole unallocated tables as one record). */
  async *grains(from = 0, to = this.state.geometry.virtualSize, directory: GrainDirectory = this.state.gd): AsyncGenerator<GrainRecord> {
    const { geometry, io } = this.state;
    const end = Math.min(to, geometry.virtualSize);
    if (from >= end) return;
    const reader = new GrainTableReader(io, geometry, directory);
    for (let gdIndex = Math.floor(from / geometry.gtCoverage); gdIndex < geometry.gdEntries; gdIndex++) {
      const tableStart = gdIndex * geometry.gtCoverage;
      if (tableStart >= end) break;
      const table = await reader.table(gdIndex);
      if (!table) {
        const length = Math.min(geometry.gtCoverage, geometry.virtualSize - tableStart);
        yield { state: 'unallocated', guestOffset: tableStart, length, gte: 0, gdIndex, gtIndex: -1 };
        continue;
      }
      const first = Math.max(0, Math.floor((from - tableStart) / geometry.grainBytes));
      for (let gtIndex = first; gtIndex < geometry.gtesPerGT; ) {
        const guestOffset = tableStart + gtIndex * geometry.grainBytes;
        if (guestOffset >= end) break;
        const gte = table[gtIndex]!;
        const state = grainState(gte, geometry);
        // Runs of unallocated or zeroed grains become one record: an empty 2 TiB disk is 32 Ki records, not 32 Mi.
        let count = 1;
        if (state !== 'data') {
          while (gtIndex + count < geometry.gtesPerGT && table[gtIndex + count] === gte && guestOffset + count * geometry.grainBytes < end) count++;
        }
        const length = Math.min(count * geometry.grainBytes, geometry.virtualSize - guestOffset);
        yield { state, guestOffset, length, gte, gdIndex, gtIndex };
        gtIndex += count;
      }
    }
  }

  /** The extent a grain record maps to. */
  extentOf(record: GrainRecord): Extent {
    const { guestOffset, length } = record;
    switch (record.state) {
      case 'unallocated':
        return { kind: 'unallocated', guestOffset, length };
      case 'zero':
        return { kind: 'zero', guestOffset, length };
      case 'data':
        return this.state.geometry.compressed
          ? { kind: 'compressed', guestOffset, length }
          : { kind: 'data', guestOffset, length, hostOffset: record.gte * SECTOR_SIZE };
    }
  }

  /**
   * The merged extents of guest range [from, to) in batches (offsets relative to this file when it is one extent
   * of several). Grain table entries are decoded inline: no object per grain. With `strict` (conversion), a data
   * grain that starts inside the header and descriptor window or ends past the end of the file is refused.
   */
  async *extentsIn(from: number, to: number, strict = false): AsyncGenerator<Extent[]> {
    const { geometry, io, fileSize } = this.state;
    const end = Math.min(to, geometry.virtualSize);
    if (from >= end) return;
    const headerEnd = strict ? protectedHeaderEnd(this.state) : 0;
    const compressed = geometry.compressed;
    const reader = new GrainTableReader(io, geometry, this.state.gd);
    let out: Extent[] = [];
    let last: Extent | undefined;
    const add = (kind: 'data' | 'zero' | 'unallocated' | 'compressed', guestOffset: number, length: number, hostOffset: number): void => {
      nextGte = -1;
      if (last && last.kind === kind && last.guestOffset + last.length === guestOffset && (kind !== 'data' || (last as { hostOffset: number }).hostOffset + last.length === hostOffset)) {
        last.length += length;
        return;
      }
      const extent: Extent = kind === 'data' ? { kind, guestOffset, length, hostOffset } : { kind, guestOffset, length };
      out.push(extent);
      last = extent;
    };
    // The GTE that would continue the last extent as a data run by one whole grain (-1: none). Most GTEs of an
    // allocated image are exactly that, and need neither decoding nor a new extent.
    let nextGte = -1;
    const grainSectors = geometry.grainBytes / SECTOR_SIZE;
    for (let gdIndex = Math.floor(from / geometry.gtCoverage); gdIndex < geometry.gdEntries; gdIndex++) {
      const tableStart = gdIndex * geometry.gtCoverage;
      if (tableStart >= end) break;
      const table = await reader.table(gdIndex);
      const firstGuest = Math.max(from, tableStart);
      const tableEnd = Math.min(end, tableStart + geometry.gtCoverage);
      if (!table) {
        add('unallocated', firstGuest, tableEnd - firstGuest, 0);
        continue;
      }
      const grainBytes = geometry.grainBytes;
      for (let gtIndex = Math.floor((firstGuest - tableStart) / grainBytes); gtIndex < geometry.gtesPerGT; gtIndex++) {
        const grainStart = tableStart + gtIndex * grainBytes;
        if (grainStart >= tableEnd) break;
        const guestOffset = Math.max(grainStart, firstGuest);
        const gte = table[gtIndex]!;
        // The last extent ends at grainStart (every add() resets nextGte); the run's first grain passed the
        // checks below, and this one starts right after it, so only its end needs checking.
        if (gte === nextGte && grainStart + grainBytes <= tableEnd && (!strict || (gte + grainSectors) * SECTOR_SIZE <= fileSize)) {
          last!.length += grainBytes;
          nextGte += grainSectors;
          continue;
        }
        const length = Math.min(tableEnd, grainStart + grainBytes) - guestOffset;
        const state = grainState(gte, geometry);
        if (state !== 'data') {
          add(state, guestOffset, length, 0);
          continue;
        }
        if (compressed) {
          add('compressed', guestOffset, length, 0);
          continue;
        }
        const hostOffset = gte * SECTOR_SIZE;
        if (strict && (hostOffset < headerEnd || hostOffset + grainBytes > fileSize)) {
          // Built only on the throwing path: this loop runs once per data grain (2^24 times at 1 TiB).
          const where = `GTE ${gtIndex} of grain table ${gdIndex} (guest offset ${grainStart})`;
          if (hostOffset < headerEnd) throw corruptAt(`${where} points at sector ${gte}, inside the header and descriptor area (first ${headerEnd} bytes)`, hostOffset);
          throw corruptAt(`${where} points at a grain that ends past the end of the file (${fileSize} bytes)`, hostOffset);
        }
        add('data', guestOffset, length, hostOffset + (guestOffset - grainStart));
        nextGte = gte + grainSectors;
      }
      if (out.length >= 4096) {
        const done = out.slice(0, -1);
        out = [last!];
        yield done;
      }
    }
    if (out.length > 0) yield out;
  }

  map(): AsyncIterable<Extent[]> {
    return this.extentsIn(0, this.state.geometry.virtualSize);
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const virtualSize = this.state.geometry.virtualSize;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > virtualSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} is outside the virtual disk (${virtualSize} bytes)`, { format: FORMAT });
    }
    if (length === 0) return new Uint8Array(0);
    const backing = this.state.options.backing;
    if (backing && !this.checkedBacking) this.checkedBacking = cidCheckedParent(backing, this.state.descriptor.parentCid);
    return readExtents(this.state.io, this.extentsIn(guestOffset, guestOffset + length), guestOffset, length, {
      ...(this.checkedBacking ? { backing: this.checkedBacking } : {}),
      readSpecial: (extent, from, count) => this.readCompressed(from, count),
    });
  }

  private async readCompressed(from: number, count: number): Promise<Uint8Array> {
    const { geometry, io, fileSize } = this.state;
    const out = new Uint8Array(count);
    for await (const record of this.grains(from, from + count)) {
      const start = Math.max(from, record.guestOffset);
      const stop = Math.min(from + count, record.guestOffset + record.length);
      if (record.state !== 'data' || stop <= start) continue;
      const markerOffset = record.gte * SECTOR_SIZE;
      let grain = this.lastGrain?.markerOffset === markerOffset ? this.lastGrain.data : undefined;
      if (!grain) {
        grain = await readCompressedGrain(io, markerOffset, geometry.grainBytes, fileSize, this.state.options.inflate);
        this.lastGrain = { markerOffset, data: grain };
      }
      const inGrain = start - record.guestOffset;
      if (inGrain + (stop - start) > grain.length) {
        throw vmdkError('CORRUPT', `compressed grain for guest offset ${record.guestOffset} inflates to ${grain.length} bytes, too short for the read`, markerOffset);
      }
      out.set(grain.subarray(inGrain, inGrain + (stop - start)), start - from);
    }
    return out;
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    const report = await checkSparse(this);
    return options.repair ? repairSparse(this.state, report) : report;
  }

  /** The features in use, as data (`ic info --features`). */
  async features(): Promise<ImageFeature[]> {
    const { header, geometry } = this.state;
    const features: ImageFeature[] = [];
    if (header.uncleanShutdown !== 0) {
      features.push({
        name: 'unclean_shutdown',
        kind: 'compatible',
        description: "uncleanShutdown: VMware's flag for a disk that was not closed cleanly",
        removal: this.state.footer || geometry.compressed
          ? { possible: false, why: 'stream-optimized files keep a copy of the header in their footer' }
          : { possible: true, cost: 'header', how: 'cleared once the tables check consistent (check -r)' },
      });
    }
    if (geometry.compressed) {
      features.push({ name: 'compressed_grains', kind: 'incompatible', description: 'grains are deflate-compressed (stream-optimized)', removal: { possible: false, why: 'every grain would have to be rewritten (qemu-img convert)' } });
    }
    if (geometry.zeroedGrains) {
      const zeroed = geometry.compressed ? 0 : await countZeroedGrains(this);
      features.push({
        name: 'zeroed_grains',
        kind: 'incompatible',
        description: `zeroed-grain flag (header flags bit 2)${zeroed > 0 ? `, ${zeroed} grain table entries of 1 ("reads as zeros")` : ''}; a reader without it takes a GTE of 1 for a grain at sector 1`,
        removal: this.state.footer || geometry.compressed
          ? { possible: false, why: 'stream-optimized files are not changed in place' }
          : zeroed === 0
            ? { possible: true, cost: 'header', how: 'the flag cleared (one header sector)' }
            : this.state.backing
              ? { possible: true, cost: 'zeros', how: `a scan of the grain tables; ${zeroed} grains of zeros written (they must hide the parent), both table copies switched, then the flag cleared` }
              : { possible: true, cost: 'metadata', how: 'a scan of the grain tables; the entries made unallocated in both table copies (no parent: they read as zeros), then the flag cleared' },
      });
    }
    return features;
  }

  /** Removes unclean_shutdown (by the repair that clears it) and zeroed grains (zeroed.ts). */
  async demote(features: readonly string[]): Promise<AmendReport> {
    assertRemovable(await this.features(), features);
    const changes: string[] = [];
    if (features.includes('zeroed_grains')) {
      const { count, written } = await demoteZeroedGrains(this);
      changes.push(`zeroed grains expanded: ${count} (${written > 0 ? `${written} grains of zeros written` : 'made unallocated'}); zeroed-grain flag cleared`);
    }
    if (features.includes('unclean_shutdown')) {
      await repairSparse(this.state, await checkSparse(this));
      changes.push('uncleanShutdown cleared (tables checked)');
    }
    return { changes };
  }

  conversionSource(): Promise<ConversionSource> {
    return sparseConversionSource(this);
  }

  /**
   * The units the mover may move: the data grains, each named by its GTE (u32le sector number) and, with a
   * redundant directory, by the same entry of the redundant table (the mirror). Runs are host-contiguous grains
   * of consecutive entries. The directories and tables stay where they are (they are fixed ranges: qemu lays
   * them out in 2 KiB pieces, not whole grains). Compressed grains cannot move (their sizes vary).
   */
  async *units(): AsyncGenerator<UnitRun[]> {
    const { geometry, io, gd, rgd } = this.state;
    if (geometry.compressed) throw vmdkError('UNSUPPORTED', 'compressed (streamOptimized) grains cannot be moved: convert the image with qemu-img convert');
    const pointer: PointerFormat = { encoding: 'u32le', unit: SECTOR_SIZE, unallocatedValue: 0n, ...(geometry.zeroedGrains ? { zeroValue: 1n } : {}) };
    const reader = new GrainTableReader(io, geometry, gd);
    for (let gdIndex = 0; gdIndex < geometry.gdEntries; gdIndex++) {
      const table = await reader.table(gdIndex);
      if (!table) continue;
      const tableAt = gd.entries[gdIndex]! * SECTOR_SIZE;
      const mirrorSector = rgd?.entries[gdIndex] ?? 0;
      const out: UnitRun[] = [];
      let run: UnitRun | undefined;
      for (let gtIndex = 0; gtIndex < geometry.gtesPerGT; gtIndex++) {
        const gte = table[gtIndex]!;
        if (grainState(gte, geometry) !== 'data') {
          run = undefined;
          continue;
        }
        const hostOffset = gte * SECTOR_SIZE;
        if (run && run.hostOffset + run.count * geometry.grainBytes === hostOffset) {
          run.count++;
          continue;
        }
        run = { kind: 'data', hostOffset, unitLength: geometry.grainBytes, count: 1, pointerOffset: tableAt + gtIndex * 4, pointerStride: 4, pointer };
        if (mirrorSector !== 0) run.mirrorPointerOffset = mirrorSector * SECTOR_SIZE + gtIndex * 4;
        out.push(run);
      }
      if (out.length > 0) yield out;
    }
  }

  async close(): Promise<void> {}
}

/** Refuses (before any write) a demote request naming a feature the image does not use or cannot lose. */
export function assertRemovable(known: readonly ImageFeature[], names: readonly string[]): void {
  for (const name of names) {
    const feature = known.find((candidate) => candidate.name === name);
    if (!feature) throw vmdkError('INVALID', `the image does not use feature '${name}'`);
    if (!feature.removal.possible) throw vmdkError('UNSUPPORTED', `feature '${name}' cannot be removed: ${feature.removal.why}`);
  }
}

/**
 * qemu refuses reads that fall through to a VMDK parent whose CID differs from our parentCID (the parent changed
 * since this child was made). The returned image mirrors that instead of returning possibly stale data.
 */
export function cidCheckedParent(backing: Image, parentCid: number): Image {
  let checked = false;
  return {
    format: backing.format,
    info: () => backing.info(),
    map: () => backing.map(),
    close: () => backing.close(),
    async read(offset: number, length: number): Promise<Uint8Array> {
      if (!checked && backing.format === FORMAT) {
        const cid = backing.info().formatSpecific?.data.cid;
        if (typeof cid === 'number' && cid !== parentCid) {
          throw vmdkError(
            'CORRUPT',
            `parentCID ${parentCid.toString(16)} does not match the parent's CID ${cid.toString(16)} (the parent changed; qemu refuses to read through it)`,
          );
        }
        checked = true;
      }
      return backing.read(offset, length);
    },
  };
}

/** The header that is in force (the footer's for GD_AT_END files) and what it implies. */
export interface SparseGeometryState {
  header: SparseHeader;
  geometry: SparseGeometry;
  footer: boolean;
}

/** Follows GD_AT_END to the footer and applies qemu's open-time checks to the header in force. */
export async function readSparseGeometry(io: BlockIO, fileSize: number, first: SparseHeader): Promise<SparseGeometryState> {
  let header = first;
  let footer = false;
  if (header.gdOffset === undefined) {
    header = await readFooterHeader(io, fileSize);
    footer = true;
  }
  const geometry = validateSparseHeader(header, fileSize);
  if (geometry.compressed && !geometry.hasMarkers) {
    throw vmdkError('UNSUPPORTED', 'compressed grains without grain markers (flags bit 17 clear) are not supported');
  }
  return { header, geometry, footer };
}

/** The grain directories, bounds-checked against the file and each other. */
export async function loadSparseTables(
  io: BlockIO,
  fileSize: number,
  { header, geometry }: SparseGeometryState,
): Promise<{ gd: GrainDirectory; rgd: GrainDirectory | undefined; protectedEnd: number }> {
  const descriptorEnd = header.descriptorOffset > 0 ? (header.descriptorOffset + header.descriptorSize) * SECTOR_SIZE : 0;
  const protectedEnd = Math.max(SECTOR_SIZE, descriptorEnd);
  const gd = await loadGrainDirectory(io, geometry, header.gdOffset!, 'GD', fileSize, protectedEnd);
  const rgd = geometry.redundant ? await loadGrainDirectory(io, geometry, header.rgdOffset, 'RGD', fileSize, protectedEnd) : undefined;
  assertTablesDisjoint(geometry, rgd ? [gd, rgd] : [gd]);
  return { gd, rgd, protectedEnd };
}

/** Reads and validates a KDMV file whose first sector is `head`. */
export async function openSparse(io: BlockIO, options: OpenOptions, fileSize: number, head: Uint8Array): Promise<Image> {
  if (fileSize < SECTOR_SIZE) throw vmdkError('CORRUPT', `header is truncated: the file has ${fileSize} bytes, a sparse extent header needs ${SECTOR_SIZE}`, 0);
  const first = parseSparseHeader(head);
  if (first.capacity === 0 && first.descriptorOffset !== 0) {
    // qemu: a sparse header with no capacity but a descriptor is really a descriptor file in disguise.
    return openDescriptorImage(io, options, fileSize, first.descriptorOffset * SECTOR_SIZE);
  }
  const sparse = await readSparseGeometry(io, fileSize, first);
  // qemu reads the embedded descriptor from byte 0x200 whatever descriptorOffset says.
  const window = await io.read(EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_WINDOW);
  window[EMBEDDED_DESCRIPTOR_WINDOW - 1] = 0;
  const descriptor = parseDescriptor(descriptorText(window), EMBEDDED_DESCRIPTOR_OFFSET);
  const tables = await loadSparseTables(io, fileSize, sparse);

  let backing: BackingReference | undefined;
  if (descriptor.parentFileNameHint !== undefined) {
    if (options.untrusted) {
      throw new IcError('EXTERNAL_REF', `${FORMAT}: the image names a parent file ("${descriptor.parentFileNameHint}"), refused in untrusted mode`, { format: FORMAT });
    }
    backing = { name: descriptor.parentFileNameHint, format: FORMAT };
  }
  return new SparseVmdkImage({
    io,
    fileSize,
    ...sparse,
    ...tables,
    descriptor,
    createType: sparse.geometry.compressed ? 'streamOptimized' : 'monolithicSparse',
    backing,
    options,
  });
}
