import { IcError, type BlockIO, type CreateSpec, type OptionDescriptor, type OptionValues } from '@ic/core/sdk';
import { batBytesFor, encodeBat } from './bat.js';
import { DEFAULT_BLOCK_SIZE, DYNAMIC_HEADER_LENGTH, serializeDynamicHeader } from './dynamic-header.js';
import {
  DISK_TYPE_DYNAMIC,
  DISK_TYPE_FIXED,
  FEATURES_RESERVED,
  FOOTER_LENGTH,
  FORMAT,
  FORMAT_VERSION,
  NO_DATA_OFFSET,
  serializeFooter,
  sizedGeometry,
  VHD_TIMESTAMP_BASE,
  type SizedGeometry,
} from './footer.js';

/**
 * qemu-img's vpc creation options. No defaults are declared (dynamic, off): qemu's options have none either, so
 * `ic create` prints them in its Formatting line only when given, as qemu-img does.
 */
export const VPC_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], help: 'dynamic (the default: blocks allocated as written) or fixed (a raw disk followed by a footer)' },
  {
    name: 'force_size',
    type: 'boolean',
    help: 'Off by default. Keep the size exactly as given (creator "qem2", current_size counts) instead of rounding it up to a CHS geometry; Virtual PC itself goes by CHS',
  },
];

/** qemu's creator version: Virtual PC 2007 (5.3). */
export const CREATOR_VERSION = 0x00050003;
export const CREATOR_OS = 'Wi2k';
/** Where qemu puts the dynamic header and the BAT. */
export const DYNAMIC_HEADER_OFFSET = FOOTER_LENGTH;
export const DEFAULT_TABLE_OFFSET = FOOTER_LENGTH + DYNAMIC_HEADER_LENGTH;

/** A random RFC 4122 version 4 UUID, in the byte order qemu stores in the footer. */
export function randomUuid(): Uint8Array {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: { getRandomValues?: (array: Uint8Array) => Uint8Array } }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return bytes;
}

/** Seconds since 2000-01-01 UTC, as a u32 (qemu: time(NULL) - VHD_TIMESTAMP_BASE). */
export function vhdTimestamp(now = Date.now()): number {
  return (Math.floor(now / 1000) - VHD_TIMESTAMP_BASE) >>> 0;
}

/** The footer qemu writes for a disk of `sized` geometry. */
export function newFooter(sized: SizedGeometry, diskType: number): Uint8Array {
  const size = BigInt(sized.virtualSize);
  return serializeFooter({
    features: FEATURES_RESERVED,
    version: FORMAT_VERSION,
    dataOffset: diskType === DISK_TYPE_FIXED ? NO_DATA_OFFSET : BigInt(DYNAMIC_HEADER_OFFSET),
    timestamp: vhdTimestamp(),
    creatorApp: sized.creatorApp,
    creatorVersion: CREATOR_VERSION,
    creatorOs: CREATOR_OS,
    originalSize: size,
    currentSize: size,
    cylinders: sized.cylinders,
    heads: sized.heads,
    sectorsPerTrack: sized.sectorsPerTrack,
    diskType,
    uniqueId: randomUuid(),
    savedState: 0,
  });
}

export interface CreationOptions {
  fixed: boolean;
  forceSize: boolean;
}

export function creationOptions(options: OptionValues): CreationOptions {
  const subformat = options['subformat'] ?? 'dynamic';
  const forceSize = options['force_size'] ?? false;
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw new IcError('INVALID', `${FORMAT}: subformat must be dynamic or fixed (got ${String(subformat)})`);
  if (typeof forceSize !== 'boolean') throw new IcError('INVALID', `${FORMAT}: force_size must be on or off (got ${String(forceSize)})`);
  return { fixed: subformat === 'fixed', forceSize };
}

/** BAT entries a dynamic disk of `virtualSize` bytes gets from qemu: one per block, rounded up. */
export function tableEntriesFor(virtualSize: number, blockSize = DEFAULT_BLOCK_SIZE): number {
  return Math.ceil(virtualSize / blockSize);
}

/**
 * An empty image laid out like `qemu-img create -f vpc`: the size rounded up to a CHS geometry (unless
 * force_size). Dynamic: footer copy, dynamic header at 0x200, an all-ones BAT at 0x600 (whole sectors), the footer
 * after it. Fixed: the zeroed disk, then the footer. Only the timestamp and the unique id differ from qemu's.
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  if (spec.backing) throw new IcError('UNSUPPORTED', `${FORMAT}: Backing file not supported for file format 'vpc'`, { format: FORMAT });
  const options = creationOptions(spec.options);
  if (!Number.isSafeInteger(spec.virtualSize) || spec.virtualSize < 0) throw new IcError('INVALID', `${FORMAT}: invalid virtual size ${spec.virtualSize}`);
  const sized = sizedGeometry(spec.virtualSize, options.forceSize);
  await io.truncate(0);
  if (options.fixed) {
    await io.truncate(sized.virtualSize + FOOTER_LENGTH);
    await io.write(sized.virtualSize, newFooter(sized, DISK_TYPE_FIXED));
  } else {
    const footer = newFooter(sized, DISK_TYPE_DYNAMIC);
    const entries = tableEntriesFor(sized.virtualSize);
    const tableBytes = batBytesFor(entries);
    await io.write(0, footer);
    await io.write(DYNAMIC_HEADER_OFFSET, serializeDynamicHeader({ tableOffset: DEFAULT_TABLE_OFFSET, maxTableEntries: entries, blockSize: DEFAULT_BLOCK_SIZE }));
    // An all-unallocated table is all ones, padding included; written a MiB at a time (2040 GiB is a 4 MiB table).
    const piece = 1024 * 1024;
    for (let at = 0; at < tableBytes; at += piece) await io.write(DEFAULT_TABLE_OFFSET + at, encodeBat([], Math.min(piece, tableBytes - at)));
    await io.write(DEFAULT_TABLE_OFFSET + tableBytes, footer);
  }
  await io.flush();
}

