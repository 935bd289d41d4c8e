import { createHash } from 'node:crypto';
import { alignUp, ByteView, bytesEqual } from '../sdk/index.js';
import { crc32c } from '../sdk/index.js';
import { IcError } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';
import { zeroStaleHeaderBytes } from './host-ranges.js';

/**
 * The intent record: how an interrupted in-place conversion is finished or undone, kept inside the image
 * file itself (no sidecar file, so no directory entry to make durable).
 *
 * The engine writes it first, durably, at the very end of the file-to-be: a record block whose last 512
 * bytes are a trailer pointing back at the record. It holds the file size before the conversion, the old
 * bytes of the header region that the commit overwrites, the new ones, and CRC-32C checksums of both the
 * record and the trailer. `recover` reads the trailer at end-of-file:
 *   - the header region holds the whole new head: the commit happened (the tail was written and flushed
 *     before sector 0), so roll forward: zero the stale rest of the region and drop the record (truncate).
 *   - anything else (the old head, the transitional marker, a torn sector, a rollback in progress): roll
 *     back: write the old tail, then the old sector 0, then truncate to the old size.
 * Both directions are idempotent, so a crash during recovery is finished by the next recovery.
 *
 * Layout (little-endian):
 *   record  0  magic "ICINTENT" | 8 u32 version | 12 u32 crc32c of bytes 16..length | 16 u64 length
 *          24 u64 fileSizeBefore | 32 u64 targetFileSize | 40 u64 headerRegionSize | 48 u32 headLength
 *          52 char[16] source format | 68 char[16] target format | 84 u8[32] SHA-256 of the file's identity
 *         116 oldHead[headLength] | newHead[headLength]
 *   trailer (last 512 bytes of the block) 0 magic "ICTRAILR" | 8 u64 recordOffset | 16 u64 recordLength
 *          24 u32 crc32c of the record's bytes | 28 u32 crc32c of trailer bytes 0..28
 *
 * Sector 0 during a transitional commit (when the new header's tail must overwrite bytes the source still
 * uses): "IC-INTERRUPTED-CONVERSION" followed by the record offset. No format probes it as its own.
 */
export interface IntentRecord {
  /** SHA-256 of BlockIO.identity() (32 zero bytes when the store has none). */
  identityDigest: Uint8Array;
  fileSizeBefore: number;
  targetFileSize: number;
  headerRegionSize: number;
  sourceFormat: string;
  targetFormat: string;
  /** The bytes [0, headLength) before the commit. */
  oldHead: Uint8Array;
  /** The bytes [0, headLength) after it. */
  newHead: Uint8Array;
}

const RECORD_MAGIC = 'ICINTENT';
const TRAILER_MAGIC = 'ICTRAILR';
const VERSION = 1;
const RECORD_FIXED = 116;
const IDENTITY_AT = 84;
export const TRAILER_SIZE = 512;
export const TRANSITIONAL_MAGIC = 'IC-INTERRUPTED-CONVERSION';

const encoder = new TextEncoder();

function formatField(view: ByteView, offset: number, name: string): void {
  const bytes = encoder.encode(name).subarray(0, 16);
  view.bytes.set(bytes, offset);
}

/** Bytes of the record block (record + padding + trailer) for a given head length and alignment. */
export function intentBlockLength(headLength: number, alignment: number): number {
  return alignUp(RECORD_FIXED + 2 * headLength + TRAILER_SIZE, Math.max(alignment, TRAILER_SIZE));
}

export function encodeIntent(record: IntentRecord, recordOffset: number, blockLength: number): Uint8Array {
  const headLength = record.oldHead.length;
  if (record.newHead.length !== headLength) throw new IcError('INTERNAL', 'intent: old and new head differ in length');
  const recordLength = RECORD_FIXED + 2 * headLength;
  const block = ByteView.alloc(blockLength);
  block.bytes.set(encoder.encode(RECORD_MAGIC), 0);
  block.setU32le(8, VERSION);
  block.setU64le(16, recordLength);
  block.setU64le(24, record.fileSizeBefore);
  block.setU64le(32, record.targetFileSize);
  block.setU64le(40, record.headerRegionSize);
  block.setU32le(48, headLength);
  formatField(block, 52, record.sourceFormat);
  formatField(block, 68, record.targetFormat);
  block.bytes.set(record.identityDigest.subarray(0, 32), IDENTITY_AT);
  block.bytes.set(record.oldHead, RECORD_FIXED);
  block.bytes.set(record.newHead, RECORD_FIXED + headLength);
  block.setU32le(12, crc32c(block.bytes.subarray(16, recordLength)));
  const trailerAt = blockLength - TRAILER_SIZE;
  block.bytes.set(encoder.encode(TRAILER_MAGIC), trailerAt);
  block.setU64le(trailerAt + 8, recordOffset);
  block.setU64le(trailerAt + 16, recordLength);
  block.setU32le(trailerAt + 24, crc32c(block.bytes.subarray(0, recordLength)));
  block.setU32le(trailerAt + 28, crc32c(block.bytes.subarray(trailerAt, trailerAt + 28)));
  return block.bytes;
}

export interface FoundIntent {
  record: IntentRecord;
  recordOffset: number;
}

/** The intent record at the end of the file, if a valid one is there. Never throws for garbage. */
export async function readIntent(io: BlockIO): Promise<FoundIntent | undefined> {
  const size = await io.size();
  if (size < TRAILER_SIZE + RECORD_FIXED) return undefined;
  const trailer = new ByteView(await io.read(size - TRAILER_SIZE, TRAILER_SIZE));
  if (trailer.text(0, 8) !== TRAILER_MAGIC || trailer.u32le(28) !== crc32c(trailer.bytes.subarray(0, 28))) return undefined;
  const recordOffset = Number(trailer.u64leBig(8));
  const recordLength = Number(trailer.u64leBig(16));
  if (recordLength < RECORD_FIXED || recordLength > 64 * 1024 * 1024 || recordOffset + recordLength > size - TRAILER_SIZE) return undefined;
  const bytes = await io.read(recordOffset, recordLength);
  if (crc32c(bytes) !== trailer.u32le(24)) return undefined;
  const view = new ByteView(bytes);
  if (view.text(0, 8) !== RECORD_MAGIC || view.u32le(8) !== VERSION || view.u32le(12) !== crc32c(bytes.subarray(16))) return undefined;
  const headLength = view.u32le(48);
  if (RECORD_FIXED + 2 * headLength !== recordLength) return undefined;
  const name = (at: number) => view.text(at, 16).replace(/\0+$/, '');
  return {
    recordOffset,
    record: {
      identityDigest: bytes.slice(IDENTITY_AT, IDENTITY_AT + 32),
      fileSizeBefore: view.u64le(24),
      targetFileSize: view.u64le(32),
      headerRegionSize: view.u64le(40),
      sourceFormat: name(52),
      targetFormat: name(68),
      oldHead: bytes.slice(RECORD_FIXED, RECORD_FIXED + headLength),
      newHead: bytes.slice(RECORD_FIXED + headLength, RECORD_FIXED + 2 * headLength),
    },
  };
}

/** The digest an intent record carries for this store: SHA-256 of its identity, zeros without one. */
export async function identityDigest(io: BlockIO): Promise<Uint8Array> {
  if (!io.identity) return new Uint8Array(32);
  return new Uint8Array(createHash('sha256').update(await io.identity()).digest());
}

/** Sector 0 that marks a file as in the middle of a transitional commit. */
export function transitionalSector(recordOffset: number): Uint8Array {
  const sector = ByteView.alloc(512);
  sector.bytes.set(encoder.encode(TRANSITIONAL_MAGIC), 0);
  sector.setU64le(32, recordOffset);
  return sector.bytes;
}

export function isTransitionalSector(head: Uint8Array): boolean {
  const magic = encoder.encode(TRANSITIONAL_MAGIC);
  return head.length >= magic.length && bytesEqual(head.subarray(0, magic.length), magic);
}

export type InterruptedState = 'none' | 'intent-record' | 'transitional';

/** Whether the file shows an interrupted conversion (cheap: the first and the last sector). */
export async function inspectInterrupted(io: BlockIO): Promise<InterruptedState> {
  if (isTransitionalSector(await io.read(0, 512))) return 'transitional';
  return (await readIntent(io)) ? 'intent-record' : 'none';
}

export interface RecoveryResult {
  action: 'none' | 'rolled-back' | 'rolled-forward';
  /** The format the image is in afterwards, when a record said so. */
  format?: string;
  detail: string;
}

/**
 * Finishes or undoes an interrupted conversion (see the comment at the top). Touches nothing when there is
 * nothing to recover. A transitional sector 0 without a readable record cannot be undone: NEEDS_RECOVERY
 * stays, and the error says so.
 */
export interface RecoverOptions {
  /**
   * Accept a record written for another file. Only for a copy of an interrupted image whose origin the
   * user vouches for: a record can be forged by whoever controls the file's last bytes (a guest).
   */
  trustForeignRecord?: boolean;
}

export async function recover(io: BlockIO, options: RecoverOptions = {}): Promise<RecoveryResult> {
  const found = await readIntent(io);
  const sector0 = await io.read(0, 512);
  if (!found) {
    if (isTransitionalSector(sector0)) {
      throw new IcError('NEEDS_RECOVERY', `${io.name}: an interrupted conversion left a transitional header, but its intent record is missing or damaged`);
    }
    return { action: 'none', detail: 'no interrupted conversion found' };
  }
  if (!io.writable) throw new IcError('INVALID', `${io.name} is open read-only; recovery needs write access`);
  const { record, recordOffset } = found;
  // A record is only trusted in the file it was written for: a guest can plant bytes that look like a record
  // at the end of its own disk, but cannot know the host file's device, inode and birth time.
  if (!options.trustForeignRecord && !bytesEqual(record.identityDigest, await identityDigest(io))) {
    throw new IcError(
      'NEEDS_RECOVERY',
      `${io.name}: the conversion record at the end of this file was written for another file (a copy of an interrupted image, or forged); recover the original, or pass --trust-record if this copy is yours`,
      { path: io.name },
    );
  }
  const head = await io.read(0, record.newHead.length);
  if (bytesEqual(head, record.newHead)) {
    // Committed: the whole new header region is in place. Finish the clean-up and drop the record.
    await zeroStaleHeaderBytes(io, record.newHead.length, Math.min(record.headerRegionSize, record.targetFileSize));
    await io.flush();
    await io.truncate(record.targetFileSize);
    await io.flush();
    return { action: 'rolled-forward', format: record.targetFormat, detail: `finished the conversion from ${record.sourceFormat} to ${record.targetFormat}` };
  }
  const sector = head.subarray(0, 512);
  if (bytesEqual(sector, record.oldHead.subarray(0, 512))) {
    // The switch never happened. A header tail written before it lies where the source keeps nothing; put
    // back only the sectors that hold exactly what the commit wrote, then drop the growth.
    for (let at = 512; at < record.oldHead.length; at += 512) {
      const current = head.subarray(at, at + 512);
      const written = record.newHead.subarray(at, at + 512);
      const original = record.oldHead.subarray(at, at + 512);
      if (bytesEqual(current, written) && !bytesEqual(current, original)) await io.write(at, original);
    }
    await io.flush();
    await io.truncate(record.fileSizeBefore);
    await io.flush();
    return { action: 'rolled-back', format: record.sourceFormat, detail: `undid the conversion from ${record.sourceFormat} to ${record.targetFormat}` };
  }
  const ownMarker = bytesEqual(sector, transitionalSector(recordOffset));
  if (!ownMarker && !bytesEqual(sector, record.newHead.subarray(0, 512))) {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: sector 0 matches neither side of the interrupted conversion; not touching it`, { path: io.name });
  }
  // The transitional marker, or the new sector 0 with a partly restored tail (a rollback in progress).
  await rollBack(io, record);
  return { action: 'rolled-back', format: record.sourceFormat, detail: `undid the conversion from ${record.sourceFormat} to ${record.targetFormat}` };
}

/**
 * Puts the old header region back and cuts the file to its old size: the old tail first, sector 0 last, so
 * that once sector 0 is the old one again every byte of the old header region is back.
 */
export async function rollBack(io: BlockIO, record: IntentRecord): Promise<void> {
  if (record.oldHead.length > 512) {
    await io.write(512, record.oldHead.subarray(512));
    await io.flush();
  }
  await io.write(0, record.oldHead.subarray(0, 512));
  await io.flush();
  await io.truncate(record.fileSizeBefore);
  await io.flush();
}
