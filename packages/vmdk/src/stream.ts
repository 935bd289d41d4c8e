import { ByteView, type BlockIO, type OpenOptions } from '@ic/core/sdk';
import { corruptAt, vmdkError } from './errors.js';
import { hasMagic, parseSparseHeader, SECTOR_SIZE, type SparseHeader } from './header.js';

/**
 * streamOptimized structures. Every grain is stored compressed behind a grain marker:
 *   u64 lba    guest sector of the grain
 *   u32 size   bytes of compressed data that follow
 *   data       a zlib stream (RFC 1950), the whole padded to a sector
 * The GTE points at the marker's sector. Files written as a stream keep the grain directory after the data and
 * say gdOffset = GD_AT_END in sector 0; the real header is then the footer at EOF - 1024, laid out as
 *   [EOF-1536] metadata marker: u64 numSectors, u32 size = 0, u32 type = MARKER_FOOTER, zero padding
 *   [EOF-1024] footer: a full header sector ("KDMV" ...)
 *   [EOF-512]  end-of-stream marker: u64 0, u32 0, u32 MARKER_END_OF_STREAM
 */
export const GRAIN_MARKER_FIELDS = {
  /** u64: guest sector of the grain. */
  lba: 0,
  /** u32: bytes of compressed data. */
  size: 8,
  /** The compressed data starts here. */
  data: 12,
} as const;

export const METADATA_MARKER_FIELDS = {
  /** u64: sectors of metadata that follow the marker. */
  numSectors: 0,
  /** u32: always 0 (this is how a metadata marker differs from a grain marker). */
  size: 8,
  /** u32: MARKER_* below. */
  type: 12,
} as const;

export const MARKER_END_OF_STREAM = 0;
export const MARKER_GRAIN_TABLE = 1;
export const MARKER_GRAIN_DIRECTORY = 2;
export const MARKER_FOOTER = 3;

/** Where the footer sits relative to the end of the file. */
export const FOOTER_MARKER_FROM_END = 1536;
export const FOOTER_FROM_END = 1024;

/**
 * Reads the footer of a GD_AT_END file with qemu's sanity checks and returns the header it holds (which takes
 * precedence over sector 0).
 */
export async function readFooterHeader(io: BlockIO, fileSize: number): Promise<SparseHeader> {
  if (fileSize < FOOTER_MARKER_FROM_END + SECTOR_SIZE) {
    throw corruptAt(`gdOffset says the grain directory is in the footer, but the file is only ${fileSize} bytes`, 56);
  }
  // qemu uses the file size in whole sectors.
  const start = Math.floor(fileSize / SECTOR_SIZE) * SECTOR_SIZE - FOOTER_MARKER_FROM_END;
  const bytes = await io.read(start, FOOTER_MARKER_FROM_END);
  const marker = new ByteView(bytes.subarray(0, SECTOR_SIZE));
  const footer = bytes.subarray(SECTOR_SIZE, 2 * SECTOR_SIZE);
  const eos = new ByteView(bytes.subarray(2 * SECTOR_SIZE));
  if (
    !hasMagic(footer) ||
    marker.u32le(METADATA_MARKER_FIELDS.size) !== 0 ||
    marker.u32le(METADATA_MARKER_FIELDS.type) !== MARKER_FOOTER ||
    eos.u64leBig(METADATA_MARKER_FIELDS.numSectors) !== 0n ||
    eos.u32le(METADATA_MARKER_FIELDS.size) !== 0 ||
    eos.u32le(METADATA_MARKER_FIELDS.type) !== MARKER_END_OF_STREAM
  ) {
    throw corruptAt('invalid footer (expected footer marker, "KDMV" footer and end-of-stream marker in the last 1536 bytes)', start);
  }
  const header = parseSparseHeader(footer, start + SECTOR_SIZE);
  if (header.gdOffset === undefined) throw corruptAt('the footer says gdOffset = GD_AT_END again', start + SECTOR_SIZE + 56);
  return header;
}


/** A grain marker as read from disk. */
export interface GrainMarker {
  lba: number;
  size: number;
}

export function parseGrainMarker(bytes: Uint8Array): GrainMarker {
  const view = new ByteView(bytes);
  const lba = view.u64leBig(GRAIN_MARKER_FIELDS.lba);
  return { lba: lba > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(lba), size: view.u32le(GRAIN_MARKER_FIELDS.size) };
}

/** Bytes a compressed grain occupies in the file (marker + data, rounded up to a sector). */
export function compressedGrainSpan(marker: GrainMarker): number {
  return Math.ceil((GRAIN_MARKER_FIELDS.data + marker.size) / SECTOR_SIZE) * SECTOR_SIZE;
}

/**
 * Reads and inflates the compressed grain whose marker is at `markerOffset`. Like qemu, the compressed size may
 * be at most two grains; the inflated grain at most one.
 */
export async function readCompressedGrain(
  io: BlockIO,
  markerOffset: number,
  grainBytes: number,
  fileSize: number,
  inflate: OpenOptions['inflate'],
): Promise<Uint8Array> {
  if (!inflate) {
    throw vmdkError('UNSUPPORTED', 'reading streamOptimized grains needs a zlib decompressor (OpenOptions.inflate)');
  }
  if (markerOffset + GRAIN_MARKER_FIELDS.data > fileSize) throw corruptAt('grain marker lies past the end of the file', markerOffset);
  const marker = parseGrainMarker(await io.read(markerOffset, GRAIN_MARKER_FIELDS.data));
  if (marker.size === 0 || marker.size > 2 * grainBytes) {
    throw corruptAt(`grain marker claims ${marker.size} compressed bytes (must be 1..${2 * grainBytes})`, markerOffset);
  }
  if (markerOffset + GRAIN_MARKER_FIELDS.data + marker.size > fileSize) {
    throw corruptAt('compressed grain extends past the end of the file', markerOffset);
  }
  const compressed = await io.read(markerOffset + GRAIN_MARKER_FIELDS.data, marker.size);
  let grain: Uint8Array;
  try {
    grain = inflate(compressed, 'zlib');
  } catch (error) {
    throw vmdkError('CORRUPT', `compressed grain does not inflate (${error instanceof Error ? error.message : String(error)})`, markerOffset);
  }
  if (grain.length > grainBytes) throw corruptAt(`compressed grain inflates to ${grain.length} bytes, more than one grain (${grainBytes})`, markerOffset);
  return grain;
}
