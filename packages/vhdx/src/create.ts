import { IcError, type BlockIO, type CreateSpec, type OptionDescriptor, type OptionValues } from '@ic/core/sdk';
import {
  BAT_ENTRY_SIZE,
  batGeometry,
  batRegionLength,
  encodeEntry,
  PAYLOAD_BLOCK_FULLY_PRESENT,
  PAYLOAD_BLOCK_NOT_PRESENT,
  PAYLOAD_BLOCK_ZERO,
  payloadIndex,
} from './bat.js';
import { BAT_REGION_GUID, METADATA_REGION_GUID, randomGuid } from './guid.js';
import { fileIdentifier, FORMAT, HEADER_OFFSETS, HEADER_SECTION_SIZE, MiB, REGION_TABLE_OFFSETS, serializeHeader } from './header.js';
import { LEAVE_BLOCKS_ALLOCATED, MAX_BLOCK_SIZE, METADATA_TABLE_SIZE, MIN_BLOCK_SIZE, serializeMetadata } from './metadata.js';
import { serializeRegionTable } from './region.js';

const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
/** qemu-img refuses VHDX images above 64 TiB. */
export const MAX_VIRTUAL_SIZE = 64 * TiB;
export const DEFAULT_LOG_SIZE = MiB;
/** The creator string ic writes into the file type identifier. */
export const CREATOR = 'ic';

/** qemu-img's VHDX creation options. */
export const VHDX_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'block_size', type: 'size', default: 0, help: 'Block size: a power of two from 1 MiB to 256 MiB; 0 picks one from the size as qemu-img does (8, 16, 32 or 64 MiB)' },
  { name: 'subformat', type: 'enum', values: ['dynamic', 'fixed'], default: 'dynamic', help: "'dynamic' (blocks allocated on demand) or 'fixed' (the file is preallocated)" },
  { name: 'block_state_zero', type: 'boolean', default: true, help: "Mark unused blocks 'zero' (qemu-img's default; even a fixed image then allocates on first write)" },
  { name: 'log_size', type: 'size', default: DEFAULT_LOG_SIZE, help: 'Log size: a multiple of 1 MiB' },
];

/** qemu-img's automatic block size. */
export function defaultBlockSize(virtualSize: number): number {
  if (virtualSize > 32 * TiB) return 64 * MiB;
  if (virtualSize > 100 * GiB) return 32 * MiB;
  if (virtualSize > GiB) return 16 * MiB;
  return 8 * MiB;
}

export function isValidBlockSize(blockSize: number): boolean {
  return Number.isSafeInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE && (blockSize & (blockSize - 1)) === 0;
}

export interface CreateLayout {
  blockSize: number;
  logSize: number;
  batOffset: number;
  batLength: number;
  metadataOffset: number;
  /** Where qemu-img puts the first payload block: 5 MiB past the BAT region, "for future expansion". */
  dataOffset: number;
}

/** Offsets qemu-img create uses (vhdx_create_new_region_table, vhdx_create_bat). */
export function createLayout(virtualSize: number, blockSize: number, logSize: number): CreateLayout {
  const batOffset = HEADER_SECTION_SIZE + Math.ceil(logSize / MiB) * MiB;
  const batLength = batRegionLength(batGeometry(virtualSize, blockSize, false));
  const metadataOffset = batOffset + batLength;
  return { blockSize, logSize, batOffset, batLength, metadataOffset, dataOffset: batOffset + batLength + 5 * MiB };
}

/** The header section bytes: file identifier, two headers (sequence numbers n and n + 1), two region tables. */
export function headerSection(layout: { logOffset: number; logSize: number; batOffset: number; batLength: number; metadataOffset: number }): Uint8Array {
  const out = new Uint8Array(REGION_TABLE_OFFSETS[1] + 64 * 1024);
  out.set(fileIdentifier(CREATOR), 0);
  const sequence = new Uint32Array(1);
  globalThis.crypto.getRandomValues(sequence);
  const header = {
    sequenceNumber: BigInt(sequence[0]!),
    fileWriteGuid: randomGuid(),
    dataWriteGuid: randomGuid(),
    logGuid: new Uint8Array(16),
    logVersion: 0,
    version: 1,
    logLength: layout.logSize,
    logOffset: layout.logOffset,
  };
  out.set(serializeHeader(header), HEADER_OFFSETS[0]);
  out.set(serializeHeader({ ...header, sequenceNumber: header.sequenceNumber + 1n }), HEADER_OFFSETS[1]);
  const table = serializeRegionTable([
    { guid: BAT_REGION_GUID, fileOffset: layout.batOffset, length: layout.batLength, required: false },
    { guid: METADATA_REGION_GUID, fileOffset: layout.metadataOffset, length: MiB, required: false },
  ]);
  out.set(table, REGION_TABLE_OFFSETS[0]);
  out.set(table, REGION_TABLE_OFFSETS[1]);
  return out;
}

function options(values: OptionValues, virtualSize: number): { blockSize: number; fixed: boolean; zeroBlocks: boolean; logSize: number } {
  const requested = values['block_size'] ?? 0;
  if (typeof requested !== 'number') throw new IcError('INVALID', `${FORMAT}: block_size must be a size`);
  const blockSize = requested === 0 ? defaultBlockSize(virtualSize) : requested;
  if (!isValidBlockSize(blockSize)) throw new IcError('INVALID', `${FORMAT}: block_size must be a power of two from 1 MiB to 256 MiB (got ${blockSize})`);
  const logSize = values['log_size'] ?? DEFAULT_LOG_SIZE;
  if (typeof logSize !== 'number' || logSize < MiB || logSize % MiB !== 0 || logSize > 0xffffffff) throw new IcError('INVALID', `${FORMAT}: log_size must be a multiple of 1 MiB below 4 GiB (got ${String(logSize)})`);
  const subformat = values['subformat'] ?? 'dynamic';
  if (subformat !== 'dynamic' && subformat !== 'fixed') throw new IcError('INVALID', `${FORMAT}: subformat must be 'dynamic' or 'fixed'`);
  return { blockSize, logSize, fixed: subformat === 'fixed', zeroBlocks: values['block_state_zero'] !== false };
}

/**
 * An empty image laid out like `qemu-img create -f vhdx` (same offsets, same BAT states, same file length; the
 * GUIDs and the first sequence number are random, as qemu's are). qemu does not round the size: it must be a
 * multiple of 512 here (qemu-img rounds its size argument up to 512 first).
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  if (spec.backing) throw new IcError('UNSUPPORTED', `${FORMAT}: creating differencing VHDX images is not supported (qemu-img cannot either)`, { format: FORMAT });
  const { virtualSize } = spec;
  if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) throw new IcError('INVALID', `${FORMAT}: invalid virtual size ${virtualSize}`);
  if (virtualSize > MAX_VIRTUAL_SIZE) throw new IcError('INVALID', `${FORMAT}: size ${virtualSize} is larger than 64 TiB`);
  const size = Math.ceil(virtualSize / 512) * 512;
  const { blockSize, logSize, fixed, zeroBlocks } = options(spec.options, size);
  const layout = createLayout(size, blockSize, logSize);
  await io.truncate(0);
  await io.truncate(fixed ? layout.dataOffset + size : layout.dataOffset);
  await io.write(0, headerSection({ ...layout, logOffset: HEADER_SECTION_SIZE }));
  if (fixed || zeroBlocks) {
    const geometry = batGeometry(size, blockSize, false);
    const state = zeroBlocks ? PAYLOAD_BLOCK_ZERO : fixed ? PAYLOAD_BLOCK_FULLY_PRESENT : PAYLOAD_BLOCK_NOT_PRESENT;
    // Written in pieces of at most 4 MiB, so a 64 TiB image does not need its 512 MiB BAT in memory.
    const piece = 4 * MiB;
    for (let first = 0; first < geometry.dataBlocks; first += piece / BAT_ENTRY_SIZE / 2) {
      const last = Math.min(geometry.dataBlocks, first + piece / BAT_ENTRY_SIZE / 2);
      const startIndex = payloadIndex(geometry, first);
      const bytes = new Uint8Array((payloadIndex(geometry, last - 1) - startIndex + 1) * BAT_ENTRY_SIZE);
      const view = new DataView(bytes.buffer);
      for (let block = first; block < last; block++) {
        const offset = state === PAYLOAD_BLOCK_FULLY_PRESENT ? Math.ceil((layout.dataOffset + block * blockSize) / MiB) * MiB : 0;
        encodeEntry(view, payloadIndex(geometry, block) - startIndex, state, offset);
      }
      await io.write(layout.batOffset + startIndex * BAT_ENTRY_SIZE, bytes);
    }
  }
  const page83 = randomGuid();
  const metadata = serializeMetadata({ blockSize, fileFlags: fixed ? LEAVE_BLOCKS_ALLOCATED : 0, virtualDiskSize: size, sectorSize: 512, page83 });
  await io.write(layout.metadataOffset, metadata.table);
  await io.write(layout.metadataOffset + METADATA_TABLE_SIZE, metadata.items);
  await io.flush();
}
