import { encodeText } from '@ic/core/sdk';
import { EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_WINDOW, formatDescriptor, type DescriptorSpec } from './descriptor.js';
import { vmdkError } from './errors.js';
import {
  COMPRESSION_NONE,
  FLAG_NEWLINE_DETECT,
  FLAG_REDUNDANT_GD,
  FLAG_ZEROED_GRAIN,
  NEWLINE_CHECK_BYTES,
  SECTOR_SIZE,
  serializeSparseHeader,
  type SparseHeader,
} from './header.js';

/** Bytes at offset 0 owned by a monolithicSparse header: sector 0 plus qemu's 20-sector descriptor window. */
export const HEADER_REGION_SIZE = EMBEDDED_DESCRIPTOR_OFFSET + EMBEDDED_DESCRIPTOR_WINDOW; // 0x2A00
export const DESCRIPTOR_SECTORS = EMBEDDED_DESCRIPTOR_WINDOW / SECTOR_SIZE; // 20

export interface MonolithicHeaderSpec {
  capacity: number;
  grainSectors: number;
  rgdOffset: number;
  gdOffset: number;
  overHead: number;
  zeroedGrain: boolean;
}

/** A monolithicSparse header as qemu writes it (flags: newline detection + redundant GD [+ zeroed grain]). */
export function monolithicHeader(spec: MonolithicHeaderSpec): SparseHeader {
  return {
    version: spec.zeroedGrain ? 2 : 1,
    flags: FLAG_NEWLINE_DETECT | FLAG_REDUNDANT_GD | (spec.zeroedGrain ? FLAG_ZEROED_GRAIN : 0),
    capacity: spec.capacity,
    grainSize: spec.grainSectors,
    descriptorOffset: 1,
    descriptorSize: DESCRIPTOR_SECTORS,
    numGTEsPerGT: 512,
    rgdOffset: spec.rgdOffset,
    gdOffset: spec.gdOffset,
    overHead: spec.overHead,
    uncleanShutdown: 0,
    newlineCheck: NEWLINE_CHECK_BYTES,
    compressAlgorithm: COMPRESSION_NONE,
  };
}

/**
 * The descriptor text as bytes; INVALID when it does not fit the 20-sector window with the NUL qemu keeps at its
 * last byte.
 */
export function descriptorBytes(spec: DescriptorSpec): Uint8Array {
  const bytes = encodeText(formatDescriptor(spec));
  if (bytes.length > EMBEDDED_DESCRIPTOR_WINDOW - 1) {
    throw vmdkError('INVALID', `descriptor is ${bytes.length} bytes; the embedded descriptor holds at most ${EMBEDDED_DESCRIPTOR_WINDOW - 1}`);
  }
  return bytes;
}

/** Header sector + descriptor, zero-padded to HEADER_REGION_SIZE (0x2A00). */
export function headerRegion(header: SparseHeader, descriptor: DescriptorSpec): Uint8Array {
  const out = new Uint8Array(HEADER_REGION_SIZE);
  out.set(serializeSparseHeader(header), 0);
  out.set(descriptorBytes(descriptor), EMBEDDED_DESCRIPTOR_OFFSET);
  return out;
}
