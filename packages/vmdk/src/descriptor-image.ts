import {
  canMerge,
  IcError,
  readExtents,
  type AmendReport,
  type BackingReference,
  type BlockIO,
  type CheckOptions,
  type CheckReport,
  type ConversionSource,
  type Extent,
  type Image,
  type ImageFeature,
  type ImageInfo,
  type OpenOptions,
} from '@ic/core/sdk';
import { checkSparse } from './check.js';
import {
  DESCRIPTOR_FILE_CREATE_TYPES,
  descriptorText,
  dirName,
  findQuotedValue,
  MAX_DESCRIPTOR_FILE,
  parseDescriptor,
  usableExtents,
  type Descriptor,
  type ExtentLine,
  type ExtentType,
} from './descriptor.js';
import { corruptAt, FORMAT, limitAt, vmdkError } from './errors.js';
import { openExtentFiles, type ExtentFile, type ExtentFiles, type FlatExtentFile } from './extent-files.js';
import { SECTOR_SIZE } from './header.js';
import { assertRemovable, cidCheckedParent } from './image.js';

/** Problems beyond this many are counted but not listed one by one. */
const MAX_CHECK_MESSAGES = 100;
/** Hole queries on a flat extent file go in slices of this many bytes (bounds the ranges held at once). */
const HOLE_QUERY_SLICE = 256 * 1024 * 1024;

/**
 * A VMDK whose data lives in other files: a text descriptor (monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs,
 * vmfsSparse, seSparse) naming its extent files. With OpenOptions.openFile the extent files are opened read-only
 * and the image is described (info, map), read and checked like qemu does; without it, the image describes what
 * the descriptor says and refuses everything that needs the extents' bytes. Either way an in-place conversion is
 * blocked: the data is not in this file.
 */
export class DescriptorVmdkImage implements Image {
  readonly format = FORMAT;
  private checkedBacking: Image | undefined;

  constructor(
    readonly io: BlockIO,
    readonly descriptor: Descriptor,
    readonly createType: string,
    readonly extents: readonly (ExtentLine & { type: ExtentType })[],
    readonly virtualSize: number,
    readonly fileSize: number,
    readonly backing: BackingReference | undefined,
    /** The opened extent files (same order as `extents`), or why there are none. */
    readonly extentFiles: ExtentFiles | undefined = undefined,
    readonly options: OpenOptions = {},
  ) {}

  /** Extent file names as qemu shows them: relative names resolved against the descriptor's directory. */
  extentPath(extent: ExtentLine): string {
    return extent.fileName.startsWith('/') ? extent.fileName : dirName(this.io.name) + extent.fileName;
  }

  /** The opened extent files, when every one of them could be opened and is supported. */
  get files(): readonly ExtentFile[] | undefined {
    return this.extentFiles && 'files' in this.extentFiles ? this.extentFiles.files : undefined;
  }

  private extentList(): string {
    const names = this.extents.map((extent) => `"${extent.fileName}"`);
    return names.length > 4 ? `${names.slice(0, 4).join(', ')} and ${names.length - 4} more` : names.join(', ');
  }

  private refuse(what: string): IcError {
    if (this.extentFiles && 'unsupported' in this.extentFiles) {
      return vmdkError('UNSUPPORTED', `${what} needs the extent files ${this.extentList()} (createType ${this.createType}): ${this.extentFiles.unsupported}`);
    }
    return vmdkError(
      'UNSUPPORTED',
      `${what} needs the extent files ${this.extentList()} (createType ${this.createType}); the caller did not allow opening them (no OpenOptions.openFile)`,
    );
  }

  info(): ImageInfo {
    const files = this.files;
    const extents = this.extents.map((extent, index) => {
      const file = files?.[index];
      const geometry = file?.kind === 'sparse' ? file.image.state.geometry : undefined;
      const entry: Record<string, unknown> = {};
      if (geometry?.compressed) entry.compressed = true;
      entry['virtual-size'] = extent.sectors * SECTOR_SIZE;
      entry.filename = this.extentPath(extent);
      // Without the extent files the grain size of a sparse extent is unknown and left out.
      if (geometry) entry['cluster-size'] = geometry.grainBytes;
      entry.format = extent.type;
      return entry;
    });
    // qemu names the image streamOptimized as soon as one extent is compressed.
    const createType = files?.some((file) => file.kind === 'sparse' && file.image.state.geometry.compressed) ? 'streamOptimized' : this.createType;
    const info: ImageInfo = {
      format: FORMAT,
      virtualSize: this.virtualSize,
      dirty: false,
      formatSpecific: {
        type: 'vmdk',
        data: { cid: this.descriptor.cid, 'parent-cid': this.descriptor.parentCid, 'create-type': createType, extents },
      },
    };
    const clusterSize = files ? commonClusterSize(files) : undefined;
    if (clusterSize !== undefined) info.clusterSize = clusterSize;
    if (this.backing) info.backing = { ...this.backing };
    return info;
  }

  /** The extent files overlapping guest range [from, to). */
  private filesIn(files: readonly ExtentFile[], from: number, to: number): ExtentFile[] {
    return files.filter((file) => file.guestOffset < to && from < file.guestOffset + file.length);
  }

  /** Extents of one extent file for guest range [from, to), with guest offsets of the whole disk. */
  private async *fileExtents(file: ExtentFile, from: number, to: number): AsyncGenerator<Extent> {
    const start = Math.max(from, file.guestOffset);
    const end = Math.min(to, file.guestOffset + file.length);
    if (start >= end) return;
    if (file.kind === 'sparse') {
      for await (const batch of file.image.extentsIn(start - file.guestOffset, end - file.guestOffset)) {
        for (const extent of batch) yield { ...extent, guestOffset: extent.guestOffset + file.guestOffset };
      }
      return;
    }
    yield* flatExtents(file, start, end);
  }

  async *map(): AsyncGenerator<Extent> {
    const files = this.files;
    if (!files) throw this.refuse('map');
    // Runs merge inside one file; across files only when they carry no host offset (an offset is in ONE file).
    let current: Extent | undefined;
    let currentFile: ExtentFile | undefined;
    for (const file of files) {
      for await (const extent of this.fileExtents(file, 0, this.virtualSize)) {
        if (extent.length === 0) continue;
        if (current && canMerge(current, extent) && (currentFile === file || (current as { hostOffset?: number }).hostOffset === undefined)) {
          current.length += extent.length;
          continue;
        }
        if (current) yield current;
        current = { ...extent };
        currentFile = file;
      }
    }
    if (current) yield current;
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const files = this.files;
    if (!files) throw this.refuse('read');
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > this.virtualSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} is outside the virtual disk (${this.virtualSize} bytes)`, { format: FORMAT });
    }
    const out = new Uint8Array(length);
    const end = guestOffset + length;
    const backing = this.options.backing;
    if (backing && !this.checkedBacking) this.checkedBacking = cidCheckedParent(backing, this.descriptor.parentCid);
    for (const file of this.filesIn(files, guestOffset, end)) {
      const from = Math.max(guestOffset, file.guestOffset);
      const to = Math.min(end, file.guestOffset + file.length);
      if (file.kind === 'flat') {
        // Flat extents are always allocated (qemu never reads the parent for them).
        out.set(await file.io.read(file.flatOffset + (from - file.guestOffset), to - from), from - guestOffset);
        continue;
      }
      const data = await readExtents(file.io, this.fileExtents(file, from, to), from, to - from, {
        ...(this.checkedBacking ? { backing: this.checkedBacking } : {}),
        readSpecial: (_extent, at, count) => file.image.read(at - file.guestOffset, count),
      });
      out.set(data, from - guestOffset);
    }
    return out;
  }

  /**
   * qemu-img check walks every extent: a flat extent whose data offset is at or past the end of its file, or a
   * grain past the end of a sparse extent file, is one corruption and the check fails (exit 1). Sparse extents get
   * the same checks as a monolithicSparse file.
   */
  async check(options: CheckOptions = {}): Promise<CheckReport> {
    const files = this.files;
    if (!files) throw this.refuse('check');
    const report: CheckReport = { corruptions: 0, leaks: 0, checkErrors: 0, messages: [] };
    let dropped = 0;
    const note = (message: string): void => {
      if (report.messages.length < MAX_CHECK_MESSAGES) report.messages.push(message);
      else dropped++;
    };
    for (const file of files) {
      const where = `extent "${file.line.fileName}"`;
      if (file.kind === 'flat') {
        if (file.flatOffset >= file.fileSize) {
          report.corruptions++;
          report.checkErrors = 1;
          note(`ERROR: ${where}: data offset ${file.flatOffset} points after EOF (the file has ${file.fileSize} bytes)`);
        } else if (file.flatOffset + file.length > file.fileSize) {
          note(`note: ${where}: the file ends ${file.flatOffset + file.length - file.fileSize} bytes before the extent does (that part reads as zeros)`);
        }
        continue;
      }
      const sub = await checkSparse(file.image);
      report.corruptions += sub.corruptions;
      report.checkErrors = Math.max(report.checkErrors, sub.checkErrors);
      for (const message of sub.messages) note(`${where}: ${message}`);
    }
    if (dropped > 0) report.messages.push(`... and ${dropped} more`);
    if (options.repair) {
      // The extent files are opened read-only and VMDK has nothing a repair could rebuild from (repair.ts).
      if (report.corruptions > 0 || report.checkErrors > 0) {
        throw vmdkError('CORRUPT', `${report.messages[0] ?? 'an extent is damaged'}: VMDK has nothing a repair could rebuild that from (qemu-img cannot repair VMDK either); nothing was written`);
      }
      report.messages.push('nothing to repair: VMDK keeps no reference counts, so it has no leaks, and the check found no damage (extent files are never written)');
    }
    return report;
  }

  /**
   * The features of the sparse extents, one entry per name with the extents that use it. None is removable here:
   * the extent files are opened read-only (ic never writes them), so there is no demote.
   */
  async features(): Promise<ImageFeature[]> {
    const files = this.files;
    if (!files) throw this.refuse('list the features of');
    const byName = new Map<string, { feature: ImageFeature; extents: string[] }>();
    for (const file of files) {
      if (file.kind !== 'sparse') continue;
      for (const feature of await file.image.features()) {
        const entry = byName.get(feature.name) ?? { feature, extents: [] };
        entry.extents.push(`"${file.line.fileName}"`);
        byName.set(feature.name, entry);
      }
    }
    return [...byName.values()].map(({ feature, extents }) => ({
      name: feature.name,
      kind: feature.kind,
      description: `${feature.description} (extent${extents.length > 1 ? 's' : ''} ${extents.join(', ')})`,
      removal: { possible: false, why: 'extents of a multi-file VMDK are never written in place (qemu-img convert rewrites them)' },
    }));
  }

  /** Nothing is removable (see features()): refuses any name, removes nothing. */
  async demote(features: readonly string[]): Promise<AmendReport> {
    assertRemovable(await this.features(), features);
    return { changes: [] };
  }

  async conversionSource(): Promise<ConversionSource> {
    return {
      options: { virtualSize: this.virtualSize, clusterSize: SECTOR_SIZE, ...(this.backing ? { backing: { ...this.backing } } : {}) },
      blockers: [
        {
          feature: 'external extent files',
          reason: `this VMDK keeps its data in other files (createType ${this.createType}); in-place conversion works on single-file images only`,
        },
      ],
      metadataRanges: () => [{ offset: 0, length: this.fileSize, kind: 'header' as const, role: 'descriptor file' }],
    };
  }

  /** Closes the extent files this image opened (the descriptor's own BlockIO belongs to the caller). */
  async close(): Promise<void> {
    for (const file of this.files ?? []) {
      try {
        await file.io.close();
      } catch {
        // Already closed by the caller: nothing more to release.
      }
    }
  }
}

/**
 * qemu-img info's top-level cluster-size (vmdk_co_get_info): shown when every extent is of the same kind (flat or
 * not, compressed or not, and one grain size), and the first is not flat.
 */
function commonClusterSize(files: readonly ExtentFile[]): number | undefined {
  const first = files[0];
  if (!first || first.kind !== 'sparse') return undefined;
  const { grainBytes, compressed } = first.image.state.geometry;
  for (const file of files) {
    if (file.kind !== 'sparse') return undefined;
    const geometry = file.image.state.geometry;
    if (geometry.compressed !== compressed || geometry.grainBytes !== grainBytes) return undefined;
  }
  return grainBytes;
}

/**
 * A flat extent maps 1:1 onto its file from flatOffset on. Where the file system reports a hole (the BlockIO's
 * optional dataRanges), and past the end of the file, the bytes read as zeros: a zero extent that keeps its host
 * offset. Without a hole query the whole extent is data.
 */
async function* flatExtents(file: FlatExtentFile, start: number, end: number): AsyncGenerator<Extent> {
  const hostOf = (guest: number): number => file.flatOffset + (guest - file.guestOffset);
  if (!file.io.dataRanges) {
    yield { kind: 'data', guestOffset: start, length: end - start, hostOffset: hostOf(start) };
    return;
  }
  for (let sliceStart = start; sliceStart < end; sliceStart += HOLE_QUERY_SLICE) {
    const sliceEnd = Math.min(end, sliceStart + HOLE_QUERY_SLICE);
    const hostStart = hostOf(sliceStart);
    const hostEnd = hostOf(sliceEnd);
    let at = hostStart;
    for (const range of await file.io.dataRanges(hostStart, hostEnd - hostStart)) {
      // Clip to the slice and keep order whatever the store answers.
      const from = Math.max(at, range.offset);
      const to = Math.min(hostEnd, range.offset + range.length);
      if (to <= from) continue;
      if (from > at) yield { kind: 'zero', guestOffset: sliceStart + (at - hostStart), length: from - at, hostOffset: at };
      yield { kind: 'data', guestOffset: sliceStart + (from - hostStart), length: to - from, hostOffset: from };
      at = to;
    }
    if (at < hostEnd) yield { kind: 'zero', guestOffset: sliceStart + (at - hostStart), length: hostEnd - at, hostOffset: at };
  }
}

/**
 * Opens a descriptor that starts at `textOffset` (0 for a descriptor file). qemu's rules: createType must be one
 * of the descriptor-file types, CID and parentCID must be present, and only RW extent lines count.
 */
export async function openDescriptorImage(io: BlockIO, options: OpenOptions, fileSize: number, textOffset = 0): Promise<Image> {
  if (fileSize - textOffset > MAX_DESCRIPTOR_FILE) {
    throw limitAt(`descriptor is ${fileSize - textOffset} bytes; a VMDK descriptor is at most ${MAX_DESCRIPTOR_FILE} bytes`, textOffset);
  }
  const text = descriptorText(await io.read(textOffset, Math.max(0, fileSize - textOffset)));
  const createType = findQuotedValue(text, 'createType');
  if (typeof createType !== 'string') throw corruptAt('invalid descriptor: no createType="..." line', textOffset);
  if (!(DESCRIPTOR_FILE_CREATE_TYPES as readonly string[]).includes(createType)) {
    throw vmdkError('UNSUPPORTED', `descriptor createType "${createType.slice(0, 64)}" is not supported in a descriptor file (qemu accepts ${DESCRIPTOR_FILE_CREATE_TYPES.join(', ')})`);
  }
  const descriptor = parseDescriptor(text, textOffset);
  const extents = usableExtents(descriptor, textOffset);
  if (extents.length === 0) throw corruptAt('descriptor has no usable RW extent line', textOffset);
  let sectors = 0;
  for (const extent of extents) sectors += extent.sectors;
  if (!Number.isSafeInteger(sectors * SECTOR_SIZE)) throw limitAt(`descriptor extents add up to ${sectors} sectors, beyond any addressable size`, textOffset);
  if (options.untrusted) {
    throw new IcError('EXTERNAL_REF', `${FORMAT}: the descriptor names extent files (${extents.map((e) => e.fileName).slice(0, 4).join(', ')}), refused in untrusted mode`, {
      format: FORMAT,
    });
  }
  const backing = descriptor.parentFileNameHint === undefined ? undefined : { name: descriptor.parentFileNameHint, format: FORMAT };
  const image = new DescriptorVmdkImage(io, descriptor, createType, extents, sectors * SECTOR_SIZE, fileSize, backing, undefined, options);
  if (!options.openFile) return image;
  const openFile = options.openFile;
  const extentFiles = await openExtentFiles(io, descriptor, extents, { ...options, openFile }, (line) => image.extentPath(line));
  return new DescriptorVmdkImage(io, descriptor, createType, extents, sectors * SECTOR_SIZE, fileSize, backing, extentFiles, options);
}
