import { alignUp, ByteView, bytesEqual, crc32c, IcError, type BlockIO } from '../sdk/index.js';

/**
 * The intent record: how an interrupted in-place operation is finished or undone, kept inside the image file
 * itself (no sidecar file, so no directory entry to make durable).
 *
 * The engine writes a record block first, durably, at the very end of the file-to-be, before anything else: a
 * log area, three record slots and, in its last 512 bytes, a trailer pointing at them. Each state has its own
 * slot, so a torn slot write leaves the earlier states valid and the newest valid one (highest sequence) wins:
 * slot A (small, right before the trailer, written with it in one write) says "this file is growing: it was N
 * bytes"; slot B, once the target's metadata is built, adds the old and the new bytes of the header region the
 * commit overwrites; slot C says the switch was verified (packing may change header fields from then on). The
 * file's old size is never lost once slot A is durable. The log area holds the redo log of packing's pointer
 * switches (whole sectors, so a torn switch is rewritten whole). `recover` reads the trailer at EOF and the
 * newest valid slot:
 *   - growing: nothing was switched; cut the file back to its old size.
 *   - committing, the header region holds the whole new head, or committed (the switch was verified; packing
 *     may change header fields from then on): roll forward: re-apply a valid log, finish the clean-up and the
 *     packing, cut the file to its final size.
 *   - committing with deferred writes (a packed or prefixed target whose data moves onto bytes the source used),
 *     the transitional marker or the new sector 0 in place: re-apply the deferred writes from the log, then the
 *     new tail and sector 0, then roll forward (nothing inside the old file changes before this point).
 *   - committing, anything else (the old head, the transitional marker, a torn sector, a rollback in
 *     progress): roll back: write the old tail, then the old sector 0, then truncate to the old size.
 * Every path is idempotent, so a crash during recovery is finished by the next recovery.
 *
 * Slot layout (little-endian):
 *     0 magic "ICINTENT" | 8 u32 version | 12 u32 crc32c of bytes 16..length | 16 u64 length | 24 u64 sequence
 *    32 u8 state (1 growing, 2 committing, 3 committed) | 33 u8 pack mode (0 never, 1 auto, 2 always) | 34 u8[6] 0
 *    40 u64 fileSizeBefore | 48 u64 targetFileSize | 56 u64 headerRegionSize | 64 u32 headLength | 68 u32 0
 *    72 char[16] source format | 88 char[16] target format | 104 u8[32] SHA-256 of the file's identity
 *   136 u64 pack budget (bytes packing may move; 0 = no limit) | 144 u64 head offset (where the header region
 *   starts: 0, or the virtual size of a footer format) | 152 u32 flags (bit 0: the log area holds the deferred
 *   writes of the commit, see deferred.ts) | 156 u32 0 | 160 oldHead[headLength] | newHead[headLength]
 * Log (log area): 0 magic "ICREDOLG" | 8 u32 crc32c of bytes 12..24+count*520 | 12 u32 count | 16 u64 sequence
 *    24 entries: u64 sector offset | u8[512] the sector's new content
 * The log area holds either packing's redo log (after the commit) or the commit's deferred writes (before it).
 * Block layout, from its start: padding | log | slot C | slot B | slot A | trailer.
 * Trailer (last 512 bytes of the block): 0 magic "ICTRAILR" | 8 u64 block offset | 16 u64 size of slots B and C
 *    24 u64 log capacity | 32 u32 crc32c of trailer bytes 0..32
 *
 * Sector 0 during a transitional commit (when the new header's tail must overwrite bytes the source still
 * uses): "IC-INTERRUPTED-CONVERSION" followed by the block offset. No format probes it as its own.
 */
export type PackMode = 'never' | 'auto' | 'always';
export type RecordState = 'growing' | 'committing' | 'committed';

export interface IntentRecord {
  state: RecordState;
  /** SHA-256 of BlockIO.identity() (32 zero bytes when the store has none). */
  identityDigest: Uint8Array;
  fileSizeBefore: number;
  targetFileSize: number;
  headerRegionSize: number;
  sourceFormat: string;
  targetFormat: string;
  /** Whether the file is packed after the commit (formats that count unreferenced clusters as leaks). */
  pack: PackMode;
  /** With pack 'auto': the most bytes packing may move (0: no limit). */
  packBudget: number;
  /** Where the header region starts (0, or the virtual size for a footer-only format). */
  headOffset: number;
  /**
   * The commit has deferred writes (in the log area): they are applied after the transitional marker, and from
   * then on the source is gone, so recovery only rolls forward.
   */
  deferred: boolean;
  /** The bytes [headOffset, headOffset+headLength) before the commit (while growing: the source's sector 0). */
  oldHead: Uint8Array;
  /** The same bytes after it (while growing: the source's sector 0 too; nothing is planned yet). */
  newHead: Uint8Array;
}

const SLOT_MAGIC = 'ICINTENT';
const TRAILER_MAGIC = 'ICTRAILR';
const LOG_MAGIC = 'ICREDOLG';
const VERSION = 3;
const SLOT_FIXED = 160;
const IDENTITY_AT = 104;
const LOG_HEADER = 24;
export const LOG_ENTRY_SIZE = 520;
export const TRAILER_SIZE = 512;
export const TRANSITIONAL_MAGIC = 'IC-INTERRUPTED-CONVERSION';
/**
 * The longest header region a record saves (old and new). Header regions that hold a whole table (a VDI block
 * map: 4 MiB per TiB of disk) are this long at most.
 */
export const MAX_HEAD_LENGTH = 64 * 1024 * 1024;
const PACK_MODES: readonly PackMode[] = ['never', 'auto', 'always'];
const STATES: readonly (RecordState | undefined)[] = [undefined, 'growing', 'committing', 'committed'];
const MAX_SLOT = alignUp(2 * MAX_HEAD_LENGTH + SLOT_FIXED, 512);
const MAX_LOG = 256 * 1024 * 1024;

const encoder = new TextEncoder();

/** Where the parts of a record block lie. */
export interface RecordBlock {
  offset: number;
  /** Bytes of slots B and C (slot A holds only sector 0 twice). */
  slotSize: number;
  logCapacity: number;
  length: number;
}

/** Slot A holds the growing state: the fixed fields and the source's sector 0 (twice). */
const SLOT_A_SIZE = alignUp(SLOT_FIXED + 2 * 512, 512);
const STATE_SLOT: Record<RecordState, number> = { growing: 0, committing: 1, committed: 2 };

export function recordBlock(offset: number, headCapacity: number, logCapacity: number, alignment: number): RecordBlock {
  const slotSize = alignUp(SLOT_FIXED + 2 * Math.min(headCapacity, MAX_HEAD_LENGTH), 512);
  const log = alignUp(logCapacity, 512);
  return { offset, slotSize, logCapacity: log, length: alignUp(log + 2 * slotSize + SLOT_A_SIZE + TRAILER_SIZE, Math.max(alignment, TRAILER_SIZE)) };
}

/** File offset of slot `index` (0 = A, 1 = B, 2 = C) and its size. */
function slotAt(block: RecordBlock, index: number): { at: number; size: number } {
  const aAt = block.offset + block.length - TRAILER_SIZE - SLOT_A_SIZE;
  if (index === 0) return { at: aAt, size: SLOT_A_SIZE };
  return { at: aAt - index * block.slotSize, size: block.slotSize };
}

export function logOffsetOf(block: RecordBlock): number {
  return slotAt(block, 2).at - block.logCapacity;
}

function encodeSlot(record: IntentRecord, sequence: number, slotSize: number): Uint8Array {
  const headLength = record.oldHead.length;
  if (record.newHead.length !== headLength) throw new IcError('INTERNAL', 'intent: old and new head differ in length');
  const length = SLOT_FIXED + 2 * headLength;
  if (length > slotSize) throw new IcError('INTERNAL', `intent: a ${headLength}-byte head does not fit the record slot`);
  const slot = ByteView.alloc(alignUp(length, 512));
  slot.bytes.set(encoder.encode(SLOT_MAGIC), 0);
  slot.setU32le(8, VERSION);
  slot.setU64le(16, length);
  slot.setU64le(24, sequence);
  slot.setU8(32, STATES.indexOf(record.state));
  slot.setU8(33, PACK_MODES.indexOf(record.pack));
  slot.setU64le(40, record.fileSizeBefore);
  slot.setU64le(48, record.targetFileSize);
  slot.setU64le(56, record.headerRegionSize);
  slot.setU32le(64, headLength);
  slot.bytes.set(encoder.encode(record.sourceFormat).subarray(0, 16), 72);
  slot.bytes.set(encoder.encode(record.targetFormat).subarray(0, 16), 88);
  slot.bytes.set(record.identityDigest.subarray(0, 32), IDENTITY_AT);
  slot.setU64le(136, record.packBudget);
  slot.setU64le(144, record.headOffset);
  slot.setU32le(152, record.deferred ? 1 : 0);
  slot.bytes.set(record.oldHead, SLOT_FIXED);
  slot.bytes.set(record.newHead, SLOT_FIXED + headLength);
  slot.setU32le(12, crc32c(slot.bytes.subarray(16, length)));
  return slot.bytes;
}

/**
 * The first write of an operation: slot A (state growing, sequence 1) and the trailer, one contiguous piece at the
 * end of the block. The rest of the block is a hole that reads as zeros (no valid slot, no valid log).
 */
export function encodeRecordStart(block: RecordBlock, record: IntentRecord): { offset: number; bytes: Uint8Array } {
  if (record.state !== 'growing') throw new IcError('INTERNAL', 'intent: an operation starts growing');
  const bytes = new Uint8Array(SLOT_A_SIZE + TRAILER_SIZE);
  bytes.set(encodeSlot(record, 1, SLOT_A_SIZE), 0);
  const trailer = new ByteView(bytes.subarray(SLOT_A_SIZE));
  trailer.bytes.set(encoder.encode(TRAILER_MAGIC), 0);
  trailer.setU64le(8, block.offset);
  trailer.setU64le(16, block.slotSize);
  trailer.setU64le(24, block.logCapacity);
  trailer.setU32le(32, crc32c(trailer.bytes.subarray(0, 32)));
  return { offset: block.offset + block.length - SLOT_A_SIZE - TRAILER_SIZE, bytes };
}

/** Writes `record` as the next state, into that state's own slot. Not flushed. */
export async function writeNextSlot(io: BlockIO, found: FoundIntent, record: IntentRecord): Promise<FoundIntent> {
  const sequence = found.sequence + 1;
  const slot = STATE_SLOT[record.state];
  const { at, size } = slotAt(found.block, slot);
  await io.write(at, encodeSlot(record, sequence, size));
  return { ...found, record, sequence, slot };
}

export interface FoundIntent {
  record: IntentRecord;
  block: RecordBlock;
  /** Which slot holds `record` (0 = A, 1 = B, 2 = C) and its sequence. */
  slot: number;
  sequence: number;
}

async function readSlot(io: BlockIO, at: number, slotSize: number): Promise<{ record: IntentRecord; sequence: number } | undefined> {
  const head = new ByteView(await io.read(at, SLOT_FIXED));
  if (head.text(0, 8) !== SLOT_MAGIC || head.u32le(8) !== VERSION) return undefined;
  const length = Number(head.u64leBig(16));
  if (length < SLOT_FIXED || length > slotSize) return undefined;
  const bytes = length === SLOT_FIXED ? head.bytes : await io.read(at, length);
  const view = new ByteView(bytes);
  if (view.u32le(12) !== crc32c(bytes.subarray(16, length))) return undefined;
  const headLength = view.u32le(64);
  const state = STATES[view.u8(32)];
  const pack = PACK_MODES[view.u8(33)];
  const flags = view.u32le(152);
  if (SLOT_FIXED + 2 * headLength !== length || !state || !pack || (flags & ~1) !== 0 || view.u32le(156) !== 0) return undefined;
  const name = (offset: number) => view.text(offset, 16).replace(/\0+$/, '');
  return {
    sequence: Number(view.u64leBig(24)),
    record: {
      state,
      identityDigest: bytes.slice(IDENTITY_AT, IDENTITY_AT + 32),
      fileSizeBefore: view.u64le(40),
      targetFileSize: view.u64le(48),
      headerRegionSize: view.u64le(56),
      sourceFormat: name(72),
      targetFormat: name(88),
      pack,
      packBudget: view.u64le(136),
      headOffset: view.u64le(144),
      deferred: (flags & 1) !== 0,
      oldHead: bytes.slice(SLOT_FIXED, SLOT_FIXED + headLength),
      newHead: bytes.slice(SLOT_FIXED + headLength, SLOT_FIXED + 2 * headLength),
    },
  };
}

/** The newest valid record at the end of the file, if there is one. Never throws for garbage. */
export async function readIntent(io: BlockIO): Promise<FoundIntent | undefined> {
  const size = await io.size();
  if (size < TRAILER_SIZE) return undefined;
  const trailer = new ByteView(await io.read(size - TRAILER_SIZE, TRAILER_SIZE));
  if (trailer.text(0, 8) !== TRAILER_MAGIC || trailer.u32le(32) !== crc32c(trailer.bytes.subarray(0, 32))) return undefined;
  const offset = Number(trailer.u64leBig(8));
  const slotSize = Number(trailer.u64leBig(16));
  const logCapacity = Number(trailer.u64leBig(24));
  if (slotSize < SLOT_FIXED || slotSize > MAX_SLOT || slotSize % 512 !== 0 || logCapacity > MAX_LOG || logCapacity % 512 !== 0) return undefined;
  const length = size - offset;
  if (!Number.isSafeInteger(offset) || offset < 0 || length < logCapacity + 2 * slotSize + SLOT_A_SIZE + TRAILER_SIZE) return undefined;
  const block: RecordBlock = { offset, slotSize, logCapacity, length };
  let best: FoundIntent | undefined;
  for (const slot of [0, 1, 2]) {
    const { at, size } = slotAt(block, slot);
    const found = await readSlot(io, at, size);
    if (found && (!best || found.sequence > best.sequence)) best = { record: found.record, sequence: found.sequence, slot, block };
  }
  return best;
}

/** One sector of the redo log: its offset and its new content. */
export interface LogEntry {
  offset: number;
  sector: Uint8Array;
}

/** How many sector entries fit in a log area of `capacity` bytes. */
export function logEntriesFor(capacity: number): number {
  return Math.max(0, Math.floor((capacity - LOG_HEADER) / LOG_ENTRY_SIZE));
}

/** Bytes of a log area that holds `entries` sectors. */
export function logCapacityFor(entries: number): number {
  return alignUp(LOG_HEADER + entries * LOG_ENTRY_SIZE, 512);
}

/** The bytes of a log holding `entries` (whole sectors), for writing at the log offset. */
export function encodeLog(entries: readonly LogEntry[], sequence: number): Uint8Array {
  const view = ByteView.alloc(logCapacityFor(entries.length));
  view.bytes.set(encoder.encode(LOG_MAGIC), 0);
  view.setU32le(12, entries.length);
  view.setU64le(16, sequence);
  entries.forEach((entry, i) => {
    if (entry.sector.length !== 512 || entry.offset % 512 !== 0) throw new IcError('INTERNAL', 'redo log: entries are whole aligned sectors');
    view.setU64le(LOG_HEADER + i * LOG_ENTRY_SIZE, entry.offset);
    view.bytes.set(entry.sector, LOG_HEADER + i * LOG_ENTRY_SIZE + 8);
  });
  view.setU32le(8, crc32c(view.bytes.subarray(12, LOG_HEADER + entries.length * LOG_ENTRY_SIZE)));
  return view.bytes;
}

/** The valid log of a record block, or undefined (never written, invalidated, or torn). */
export async function readLog(io: BlockIO, block: RecordBlock): Promise<LogEntry[] | undefined> {
  if (block.logCapacity < LOG_HEADER) return undefined;
  const at = logOffsetOf(block);
  const head = new ByteView(await io.read(at, LOG_HEADER));
  if (head.text(0, 8) !== LOG_MAGIC) return undefined;
  const count = head.u32le(12);
  if (count > logEntriesFor(block.logCapacity)) return undefined;
  const bytes = await io.read(at, LOG_HEADER + count * LOG_ENTRY_SIZE);
  const view = new ByteView(bytes);
  if (view.u32le(8) !== crc32c(bytes.subarray(12))) return undefined;
  const entries: LogEntry[] = [];
  for (let i = 0; i < count; i++) {
    const entryAt = LOG_HEADER + i * LOG_ENTRY_SIZE;
    entries.push({ offset: view.u64le(entryAt), sector: bytes.slice(entryAt + 8, entryAt + 8 + 512) });
  }
  return entries;
}

/** A sector that makes the log area hold no valid log. */
export const LOG_INVALID = new Uint8Array(512);

/** The digest an intent record carries for this store: SHA-256 of its identity, zeros without one. */
export async function identityDigest(io: BlockIO): Promise<Uint8Array> {
  if (!io.identity) return new Uint8Array(32);
  const digest = await globalThis.crypto.subtle.digest('SHA-256', encoder.encode(await io.identity()));
  return new Uint8Array(digest);
}

/** Sector 0 that marks a file as in the middle of a transitional commit. */
export function transitionalSector(blockOffset: number): Uint8Array {
  const sector = ByteView.alloc(512);
  sector.bytes.set(encoder.encode(TRANSITIONAL_MAGIC), 0);
  sector.setU64le(32, blockOffset);
  return sector.bytes;
}

export function isTransitionalSector(head: Uint8Array): boolean {
  const magic = encoder.encode(TRANSITIONAL_MAGIC);
  return head.length >= magic.length && bytesEqual(head.subarray(0, magic.length), magic);
}

export type InterruptedState = 'none' | 'intent-record' | 'transitional';

/** Whether the file shows an interrupted operation (cheap: the first sector and the end of the file). */
export async function inspectInterrupted(io: BlockIO): Promise<InterruptedState> {
  if (isTransitionalSector(await io.read(0, 512))) return 'transitional';
  return (await readIntent(io)) ? 'intent-record' : 'none';
}

/**
 * Puts the old header region back and cuts the file to its old size: the old tail first, the first sector last, so
 * that once that sector is the old one again every byte of the old header region is back.
 */
export async function rollBack(io: BlockIO, record: IntentRecord): Promise<void> {
  const at = record.headOffset;
  if (record.oldHead.length > 512) {
    await io.write(at + 512, record.oldHead.subarray(512));
    await io.flush();
  }
  if (record.oldHead.length > 0) {
    await io.write(at, record.oldHead.subarray(0, 512));
    await io.flush();
  }
  await io.truncate(record.fileSizeBefore);
  await io.flush();
}
