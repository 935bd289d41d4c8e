import { IcError, type BackingReference, type BlockIO, type CheckReport, type ConversionSource, type Extent, type Image, type ImageInfo, type OpenOptions } from '@ic/core';
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
import { SECTOR_SIZE } from './header.js';

/**
 * A VMDK whose data lives in other files: a text descriptor (monolithicFlat, twoGbMaxExtentSparse/Flat, vmfs,
 * vmfsSparse, seSparse) naming its extent files. The driver has no filesystem access and never opens them, so
 * this image describes itself (info) and refuses everything that needs the extents' bytes.
 */
export class DescriptorVmdkImage implements Image {
  readonly format = FORMAT;

  constructor(
    readonly io: BlockIO,
    readonly descriptor: Descriptor,
    readonly createType: string,
    readonly extents: readonly (ExtentLine & { type: ExtentType })[],
    readonly virtualSize: number,
    readonly fileSize: number,
    readonly backing: BackingReference | undefined,
  ) {}

  /** Extent file names as qemu shows them: relative names resolved against the descriptor's directory. */
  extentPath(extent: ExtentLine): string {
    return extent.fileName.startsWith('/') ? extent.fileName : dirName(this.io.name) + extent.fileName;
  }

  private extentList(): string {
    const names = this.extents.map((extent) => `"${extent.fileName}"`);
    return names.length > 4 ? `${names.slice(0, 4).join(', ')} and ${names.length - 4} more` : names.join(', ');
  }

  private refuse(what: string): IcError {
    return vmdkError(
      'UNSUPPORTED',
      `${what} needs the extent files ${this.extentList()} (createType ${this.createType}); ic does not open files a descriptor names`,
    );
  }

  info(): ImageInfo {
    const extents = this.extents.map((extent) => ({
      'virtual-size': extent.sectors * SECTOR_SIZE,
      filename: this.extentPath(extent),
      // qemu also shows cluster-size for sparse extents, read from their headers; we do not open them.
      format: extent.type,
    }));
    const info: ImageInfo = {
      format: FORMAT,
      virtualSize: this.virtualSize,
      dirty: false,
      formatSpecific: {
        type: 'vmdk',
        data: { cid: this.descriptor.cid, 'parent-cid': this.descriptor.parentCid, 'create-type': this.createType, extents },
      },
    };
    if (this.backing) info.backing = { ...this.backing };
    return info;
  }

  async *map(): AsyncGenerator<Extent> {
    throw this.refuse('map');
  }

  async read(): Promise<Uint8Array> {
    throw this.refuse('read');
  }

  async check(): Promise<CheckReport> {
    throw this.refuse('check');
  }

  async conversionSource(): Promise<ConversionSource> {
    return {
      options: { virtualSize: this.virtualSize, clusterSize: SECTOR_SIZE, zeroExtents: false, ...(this.backing ? { backing: { ...this.backing } } : {}) },
      blockers: [
        {
          feature: 'external extent files',
          reason: `this VMDK keeps its data in other files (createType ${this.createType}); in-place conversion works on single-file images only`,
        },
      ],
      metadataRanges: [{ offset: 0, length: this.fileSize, role: 'descriptor file' }],
    };
  }

  async close(): Promise<void> {}
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
  return new DescriptorVmdkImage(io, descriptor, createType, extents, sectors * SECTOR_SIZE, fileSize, backing);
}
