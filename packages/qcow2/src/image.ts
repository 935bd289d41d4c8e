import {
  IcError,
  readExtents,
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
  type OptionValues,
  type ReferenceCounts,
  type UnitRun,
} from '@ic/core/sdk';
import { bitmapFlagNames, readBitmapDirectory, type BitmapEntry } from './bitmaps.js';
import { checkImage } from './check.js';
import { corruptAt, FORMAT, hex, unsupportedFeature } from './errors.js';
import { AutoclearFeature, CompatibleFeature, hasFeature, isExtendedL2 } from './header.js';
import { collectReadPieces, mergedExtents, walkMapping, type MappedPiece } from './mapping.js';
import { amendImage, demoteImage, qcow2Features } from './amend.js';
import { repairImage } from './repair.js';
import { describeConversionSource } from './source.js';
import { loadState, type Qcow2State } from './state.js';
import { qcow2ReferenceCounts, qcow2Units } from './units.js';

/** An opened qcow2 image. Writes only when asked to repair (check({ repair })). */
export class Qcow2Image implements Image {
  readonly format = FORMAT;
  /** Last decompressed cluster, keyed by its compressed host offset. */
  private inflated: { hostOffset: number; bytes: Uint8Array } | undefined;

  private constructor(
    /** Replaced when a repair rewrote the header or the tables. */
    public state: Qcow2State,
    readonly bitmaps: readonly BitmapEntry[],
  ) {}

  static async open(io: BlockIO, options: OpenOptions = {}): Promise<Qcow2Image> {
    const state = await loadState(io, options);
    const bitmaps =
      state.bitmapsActive && state.extensions.bitmaps
        ? await readBitmapDirectory(io, state.extensions.bitmaps, state.clusterSize, state.fileSize)
        : [];
    return new Qcow2Image(state, bitmaps);
  }

  info(): ImageInfo {
    const { state } = this;
    const { header } = state;
    const data: Record<string, unknown> = {};
    if (header.version === 2) {
      data.compat = '0.10';
      data['compression-type'] = 'zlib';
      data['refcount-bits'] = state.refcounts.bits;
    } else {
      data.compat = '1.1';
      data['compression-type'] = header.compressionType === 1 ? 'zstd' : 'zlib';
      data['lazy-refcounts'] = hasFeature(header.compatibleFeatures, CompatibleFeature.lazyRefcounts);
      if (this.bitmaps.length > 0) {
        data.bitmaps = this.bitmaps.map((bitmap) => ({
          flags: bitmapFlagNames(bitmap.flags),
          name: bitmap.name,
          granularity: 2 ** bitmap.granularityBits,
        }));
      }
      data['refcount-bits'] = state.refcounts.bits;
      if (state.extensions.dataFile !== undefined) {
        data['data-file'] = state.extensions.dataFile;
        data['data-file-raw'] = hasFeature(header.autoclearFeatures, AutoclearFeature.dataFileRaw);
      }
      data.corrupt = state.corrupt;
      data['extended-l2'] = isExtendedL2(header);
    }
    // Legacy AES is described by its name only; LUKS details would need the LUKS header (not parsed).
    if (header.cryptMethod === 1) data.encrypt = { format: 'aes' };
    return {
      format: FORMAT,
      virtualSize: state.virtualSize,
      clusterSize: state.clusterSize,
      ...(state.backing ? { backing: { ...state.backing } } : {}),
      dirty: state.dirty,
      formatSpecific: { type: FORMAT, data },
    };
  }

  map(): AsyncIterable<Extent[]> {
    return mergedExtents(walkMapping(this.state, 0, this.state.virtualSize));
  }

  async read(guestOffset: number, length: number): Promise<Uint8Array> {
    const { state } = this;
    if (!Number.isSafeInteger(guestOffset) || !Number.isSafeInteger(length) || guestOffset < 0 || length < 0 || guestOffset + length > state.virtualSize) {
      throw new IcError('OUT_OF_BOUNDS', `${FORMAT}: read ${guestOffset}+${length} is outside the virtual disk (${state.virtualSize} bytes)`, { format: FORMAT });
    }
    if (state.hasDataFile) {
      throw unsupportedFeature(`guest data lives in the external data file '${state.extensions.dataFile ?? '?'}'; reading it is not supported`);
    }
    const pieces = await collectReadPieces(walkMapping(state, guestOffset, guestOffset + length));
    return readExtents(state.io, pieces, guestOffset, length, {
      ...(state.options.backing ? { backing: state.options.backing } : {}),
      readSpecial: (extent, from, count) => this.readSpecial(extent as MappedPiece, from, count),
    });
  }

  private async readSpecial(piece: MappedPiece, from: number, count: number): Promise<Uint8Array> {
    if (piece.kind === 'encrypted') throw unsupportedFeature('reading encrypted clusters is not supported');
    const descriptor = piece.compressed;
    if (!descriptor) throw new IcError('INTERNAL', `${FORMAT}: compressed extent without descriptor`);
    const cluster = await this.inflateCluster(descriptor.hostOffset, descriptor.length);
    const start = from - descriptor.clusterGuestOffset;
    return cluster.subarray(start, start + count);
  }

  private async inflateCluster(hostOffset: number, length: number): Promise<Uint8Array> {
    if (this.inflated?.hostOffset === hostOffset) return this.inflated.bytes;
    const { state } = this;
    const inflate = state.options.inflate;
    if (state.header.compressionType !== 0) throw unsupportedFeature('zstd-compressed clusters cannot be read (only zlib is supported)');
    if (!inflate) throw unsupportedFeature('reading compressed clusters needs a zlib decompressor (OpenOptions.inflate)');
    if (hostOffset < state.clusterSize || hostOffset >= state.fileSize) {
      throw corruptAt(`compressed cluster at ${hex(hostOffset)} lies outside the file or in the header cluster`, hostOffset);
    }
    const stream = await state.io.read(hostOffset, Math.min(length, state.fileSize - hostOffset));
    let output: Uint8Array;
    try {
      output = inflate(stream, 'deflate-raw');
    } catch (error) {
      throw new IcError('CORRUPT', `${FORMAT}: compressed cluster at ${hex(hostOffset)} does not decompress`, { format: FORMAT, offset: hostOffset, cause: error });
    }
    // qemu requires the stream to fill exactly one cluster; anything beyond is ignored.
    if (output.length < state.clusterSize) {
      throw corruptAt(`compressed cluster at ${hex(hostOffset)} decompresses to ${output.length} bytes, expected ${state.clusterSize}`, hostOffset);
    }
    const bytes = output.subarray(0, state.clusterSize);
    this.inflated = { hostOffset, bytes };
    return bytes;
  }

  async check(options: CheckOptions = {}): Promise<CheckReport> {
    if (options.repair) {
      const { report, state } = await repairImage(this.state, this.bitmaps, options.repair);
      this.state = state;
      return report;
    }
    return checkImage(this.state, this.bitmaps);
  }

  features(): Promise<ImageFeature[]> {
    return qcow2Features(this.state);
  }

  async amend(options: OptionValues): Promise<AmendReport> {
    const { state, report } = await amendImage(this.state, this.bitmaps, options);
    this.state = state;
    return report;
  }

  async demote(features: readonly string[]): Promise<AmendReport> {
    const { state, report } = await demoteImage(this.state, this.bitmaps, features);
    this.state = state;
    return report;
  }

  conversionSource(): Promise<ConversionSource> {
    return describeConversionSource(this.state, this.bitmaps);
  }

  /** The movable units (L1, L2 tables, data clusters), with the refcounts that follow them (units.ts). */
  units(): AsyncGenerator<UnitRun[]> {
    return qcow2Units(this.state);
  }

  referenceCounts(): Promise<ReferenceCounts> {
    return qcow2ReferenceCounts(this.state);
  }

  async close(): Promise<void> {
    // The BlockIO belongs to the caller, who opened it and closes it.
  }
}
