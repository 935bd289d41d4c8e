import { ByteView, crc32c, IcError, type BlockIO } from '@ic/core/sdk';
import { GUID_LENGTH, isZeroGuid } from './guid.js';

/** Name used in messages and as the qemu-img format name. */
export const FORMAT = 'vhdx';

export const KiB = 1024;
export const MiB = 1024 * 1024;

/**
 * The header section: the first 1 MiB of every VHDX file ([MS-VHDX] 2.2), five 64 KiB blocks and reserved space:
 *   0x00000 file type identifier: "vhdxfile", then the creator as UTF-16LE (up to 512 bytes, diagnostic only)
 *   0x10000 header 1, 0x20000 header 2 (4 KiB each, CRC-32C over the 4 KiB)
 *   0x30000 region table 1, 0x40000 region table 2 (CRC-32C over the 64 KiB); qemu reads only the first
 */
export const HEADER_SECTION_SIZE = MiB;
export const BLOCK_64K = 64 * KiB;
export const FILE_IDENTIFIER_OFFSET = 0;
export const HEADER_OFFSETS = [BLOCK_64K, 2 * BLOCK_64K] as const;
export const REGION_TABLE_OFFSETS = [3 * BLOCK_64K, 4 * BLOCK_64K] as const;
/** Bytes of a header that its CRC covers. */
export const HEADER_SIZE = 4 * KiB;
/** Bytes of a region table that its CRC covers. */
export const REGION_TABLE_SIZE = BLOCK_64K;

export const FILE_SIGNATURE = 'vhdxfile';
/** Largest creator string: 256 UTF-16 code units. */
export const CREATOR_BYTES = 512;

/** Header fields ([MS-VHDX] 2.2.2), little-endian, at the start of each 4 KiB header. */
export const HEADER_FIELDS = {
  /** u32 "head". */
  signature: { offset: 0, size: 4 },
  /** u32 CRC-32C of the 4 KiB header with this field zero. */
  checksum: { offset: 4, size: 4 },
  /** u64: of two valid headers the one with the higher sequence number is current. */
  sequenceNumber: { offset: 8, size: 8 },
  /** GUID changed before the first write to the file after it is opened. */
  fileWriteGuid: { offset: 16, size: 16 },
  /** GUID changed before the first change to what the guest can see. */
  dataWriteGuid: { offset: 32, size: 16 },
  /** GUID of the active log; zero = no log to replay. */
  logGuid: { offset: 48, size: 16 },
  /** u16, must be 0. */
  logVersion: { offset: 64, size: 2 },
  /** u16, must be 1. */
  version: { offset: 66, size: 2 },
  /** u32 bytes of the log, a multiple of 1 MiB. */
  logLength: { offset: 68, size: 4 },
  /** u64 file offset of the log, a multiple of 1 MiB, past the header section. */
  logOffset: { offset: 72, size: 8 },
} as const;
export const HEADER_STRUCT_LENGTH = 80;

export const HEADER_SIGNATURE = 0x64616568; // "head"
export const REGION_SIGNATURE = 0x69676572; // "regi"

export interface VhdxHeader {
  /** 0 or 1: which of the two header blocks this is. */
  slot: number;
  sequenceNumber: bigint;
  fileWriteGuid: Uint8Array;
  dataWriteGuid: Uint8Array;
  logGuid: Uint8Array;
  logVersion: number;
  version: number;
  logLength: number;
  logOffset: number;
}

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

export function vhdxError(code: 'CORRUPT' | 'UNSUPPORTED' | 'LIMIT' | 'WRONG_FORMAT' | 'EXTERNAL_REF', message: string, offset?: number): IcError {
  return new IcError(code, `${FORMAT}: ${message}`, offset === undefined ? { format: FORMAT } : { format: FORMAT, offset });
}

export function hasVhdxSignature(head: Uint8Array): boolean {
  if (head.length < 8) return false;
  for (let i = 0; i < 8; i++) if (head[i] !== FILE_SIGNATURE.charCodeAt(i)) return false;
  return true;
}

/** True when the CRC-32C stored at `crcOffset` matches `bytes` with that field taken as zero. */
export function checksumValid(bytes: Uint8Array, crcOffset: number): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const stored = view.getUint32(crcOffset, true);
  const copy = bytes.slice();
  copy.fill(0, crcOffset, crcOffset + 4);
  return crc32c(copy) === stored;
}

/** Stores the CRC-32C of `bytes` (with the field zero) at `crcOffset`. */
export function setChecksum(bytes: Uint8Array, crcOffset: number): void {
  bytes.fill(0, crcOffset, crcOffset + 4);
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(crcOffset, crc32c(bytes), true);
}

/** Decodes one 4 KiB header block; undefined when qemu would not take it as valid (CRC, signature, version 1). */
export function parseHeaderBlock(bytes: Uint8Array, slot: number): VhdxHeader | undefined {
  if (bytes.length < HEADER_SIZE || !checksumValid(bytes.subarray(0, HEADER_SIZE), HEADER_FIELDS.checksum.offset)) return undefined;
  const view = new ByteView(bytes);
  const f = HEADER_FIELDS;
  if (view.u32le(f.signature.offset) !== HEADER_SIGNATURE || view.u16le(f.version.offset) !== 1) return undefined;
  const logOffset = view.u64leBig(f.logOffset.offset);
  return {
    slot,
    sequenceNumber: view.u64leBig(f.sequenceNumber.offset),
    fileWriteGuid: bytes.slice(f.fileWriteGuid.offset, f.fileWriteGuid.offset + GUID_LENGTH),
    dataWriteGuid: bytes.slice(f.dataWriteGuid.offset, f.dataWriteGuid.offset + GUID_LENGTH),
    logGuid: bytes.slice(f.logGuid.offset, f.logGuid.offset + GUID_LENGTH),
    logVersion: view.u16le(f.logVersion.offset),
    version: 1,
    logLength: view.u32le(f.logLength.offset),
    // Past 2^53 no file can hold it: keep a value that fails every later check.
    logOffset: logOffset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(logOffset),
  };
}

/** The 4 KiB header block for `header`, checksummed. */
export function serializeHeader(header: Omit<VhdxHeader, 'slot'>): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  const view = new ByteView(bytes);
  const f = HEADER_FIELDS;
  view.setU32le(f.signature.offset, HEADER_SIGNATURE);
  view.setU64le(f.sequenceNumber.offset, header.sequenceNumber);
  bytes.set(header.fileWriteGuid, f.fileWriteGuid.offset);
  bytes.set(header.dataWriteGuid, f.dataWriteGuid.offset);
  bytes.set(header.logGuid, f.logGuid.offset);
  view.setU16le(f.logVersion.offset, header.logVersion);
  view.setU16le(f.version.offset, header.version);
  view.setU32le(f.logLength.offset, header.logLength);
  view.setU64le(f.logOffset.offset, header.logOffset);
  setChecksum(bytes, f.checksum.offset);
  return bytes;
}

/**
 * The current header, chosen as qemu's vhdx_parse_header does: the valid one, or of two valid ones the one with
 * the higher sequence number; equal numbers are accepted only when the two headers are identical (Disk2VHD).
 */
export async function readCurrentHeader(io: BlockIO): Promise<VhdxHeader> {
  const blocks = await Promise.all(HEADER_OFFSETS.map((offset) => io.read(offset, HEADER_SIZE)));
  const [first, second] = blocks.map((bytes, slot) => parseHeaderBlock(bytes, slot));
  if (first && second) {
    if (first.sequenceNumber > second.sequenceNumber) return first;
    if (second.sequenceNumber > first.sequenceNumber) return second;
    const same = blocks[0]!.subarray(0, HEADER_STRUCT_LENGTH).every((byte, i) => byte === blocks[1]![i]);
    if (same) return first;
    throw vhdxError('CORRUPT', `the two headers are valid, differ, and have the same sequence number ${first.sequenceNumber}`, HEADER_OFFSETS[0]);
  }
  const header = first ?? second;
  if (!header) throw vhdxError('CORRUPT', 'no valid VHDX header found (neither header at 0x10000 nor at 0x20000 has a good signature, version 1 and CRC-32C)', HEADER_OFFSETS[0]);
  return header;
}

/** qemu's log field checks (vhdx_parse_log): these apply whether or not a log is active. */
export function validateLogFields(header: VhdxHeader): void {
  const at = HEADER_OFFSETS[header.slot]!;
  if (header.logOffset < MiB || header.logOffset % MiB !== 0) {
    throw vhdxError('CORRUPT', `log offset ${hex(header.logOffset)} (header at ${hex(at)}) is not a multiple of 1 MiB past the header section`, at + HEADER_FIELDS.logOffset.offset);
  }
  if (header.logVersion !== 0) throw vhdxError('CORRUPT', `log version ${header.logVersion} (header at ${hex(at)}) is not 0`, at + HEADER_FIELDS.logVersion.offset);
  if (!isZeroGuid(header.logGuid) && header.logLength !== 0 && header.logLength % MiB !== 0) {
    throw vhdxError('CORRUPT', `log length ${header.logLength} (header at ${hex(at)}) is not a multiple of 1 MiB`, at + HEADER_FIELDS.logLength.offset);
  }
}

/** The file type identifier block's meaningful bytes: the signature and the creator string in UTF-16LE. */
export function fileIdentifier(creator: string): Uint8Array {
  const units = Math.min(creator.length, CREATOR_BYTES / 2);
  const out = new Uint8Array(8 + units * 2);
  for (let i = 0; i < 8; i++) out[i] = FILE_SIGNATURE.charCodeAt(i);
  const view = new DataView(out.buffer);
  for (let i = 0; i < units; i++) view.setUint16(8 + i * 2, creator.charCodeAt(i), true);
  return out;
}

/** The creator string of the file type identifier (up to the first NUL). */
export function creatorOf(block: Uint8Array): string {
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  let text = '';
  for (let at = 8; at + 2 <= Math.min(block.length, 8 + CREATOR_BYTES); at += 2) {
    const unit = view.getUint16(at, true);
    if (unit === 0) break;
    text += String.fromCharCode(unit);
  }
  return text;
}
