import { bytesEqual, IcError, isIcError, type BlockIO, type Driver } from '../sdk/index.js';
import { zeroStaleHeaderBytes } from './host-ranges.js';
import { identityDigest, isTransitionalSector, LOG_INVALID, logOffsetOf, readIntent, readLog, rollBack, transitionalSector, writeNextSlot, type FoundIntent, type IntentRecord } from './intent.js';
import { applyDeferred, DeferredOverlay, readDeferred } from './deferred.js';
import { applyLog, packImage } from './pack.js';
import { ReadView } from './view.js';

export interface RecoveryResult {
  action: 'none' | 'rolled-back' | 'rolled-forward';
  /** The format the image is in afterwards, when a record said so. */
  format?: string;
  detail: string;
  /** Packing finished by this recovery, if any. */
  packed?: { unitsMoved: number; bytesMoved: number };
}

export interface RecoverOptions {
  /**
   * Accept a record written for another file. Only for a copy of an interrupted image whose origin the
   * user vouches for: a record can be forged by whoever controls the file's last bytes (a guest). Even then,
   * recovery only writes what yields an image the record's format opens (see `drivers`).
   */
  trustForeignRecord?: boolean;
  /**
   * Finds drivers by format name (a Registry). With it, recovery checks that the image it is about to leave
   * behind opens with its format's driver (a forged record cannot cut a file to an impossible size), and
   * finishes packing that a conversion left unfinished. Without it, only the header switch is resolved.
   */
  drivers?: { find(name: string): Driver | undefined };
}

/** Refuses a step whose result the format's driver would not open (a forged or damaged record). */
async function checkProspect(
  io: BlockIO,
  options: RecoverOptions,
  format: string,
  head: Uint8Array,
  size: number,
  what: string,
  headOffset = 0,
  overlay?: DeferredOverlay,
): Promise<void> {
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: the conversion record says the file was ${size} bytes, which no ${format} image can be; not touching it`, { path: io.name });
  }
  const driver = options.drivers?.find(format);
  if (!driver) return;
  try {
    const image = await driver.open(new ReadView(io, size, head, headOffset, overlay));
    await image.close();
  } catch (error) {
    const reason = isIcError(error) ? error.message : String(error);
    throw new IcError('NEEDS_RECOVERY', `${io.name}: ${what} would leave a file that is not a valid ${format} image (${reason}); not touching it`, { path: io.name, cause: error });
  }
}

/**
 * Finishes or undoes an interrupted operation (see intent.ts). Touches nothing when there is nothing to recover.
 * A transitional sector 0 without a readable record cannot be undone: NEEDS_RECOVERY stays, and the error
 * says so.
 *
 * Operations may nest: a conversion to raw commits with its own record past the mover's (to-identity.ts), so
 * undoing that commit leaves the mover's record at the end of the file, which is recovered next, in the same call.
 */
export async function recover(io: BlockIO, options: RecoverOptions = {}): Promise<RecoveryResult> {
  const outer = await recoverOnce(io, options);
  if (outer.action !== 'rolled-back' || !(await readIntent(io))) return outer;
  const inner = await recoverOnce(io, options);
  return { ...inner, detail: `${outer.detail}; then ${inner.detail}` };
}

async function recoverOnce(io: BlockIO, options: RecoverOptions): Promise<RecoveryResult> {
  const found = await readIntent(io);
  const sector0 = await io.read(0, 512);
  if (!found) {
    if (isTransitionalSector(sector0)) {
      throw new IcError('NEEDS_RECOVERY', `${io.name}: an interrupted conversion left a transitional header, but its intent record is missing or damaged`);
    }
    return { action: 'none', detail: 'no interrupted conversion found' };
  }
  if (!io.writable) throw new IcError('INVALID', `${io.name} is open read-only; recovery needs write access`);
  const { record } = found;
  // A record is only trusted in the file it was written for: a guest can plant bytes that look like a record
  // at the end of its own disk, but cannot know the host file's device, inode and birth time.
  if (!options.trustForeignRecord && !bytesEqual(record.identityDigest, await identityDigest(io))) {
    throw new IcError(
      'NEEDS_RECOVERY',
      `${io.name}: the conversion record at the end of this file was written for another file (a copy of an interrupted image, or forged by whoever wrote the file's last bytes); recover the original file instead. Only if you made this copy yourself from an interrupted image, --trust-record acts on it (a forged record could then rewrite the file's header)`,
      { path: io.name },
    );
  }
  if (found.block.offset < record.fileSizeBefore) {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: the conversion record lies inside the file's old size; not touching it`, { path: io.name });
  }
  if (record.state === 'growing') {
    // Nothing was switched: the header is the source's; drop what the conversion appended.
    if (!bytesEqual(sector0, record.oldHead.subarray(0, 512))) {
      throw new IcError('NEEDS_RECOVERY', `${io.name}: sector 0 changed since the interrupted conversion started; not touching it`, { path: io.name });
    }
    await checkProspect(io, options, record.sourceFormat, new Uint8Array(0), record.fileSizeBefore, 'cutting the file back');
    await io.truncate(record.fileSizeBefore);
    await io.flush();
    return { action: 'rolled-back', format: record.sourceFormat, detail: `undid the conversion from ${record.sourceFormat} to ${record.targetFormat} (nothing had been switched)` };
  }
  const at = record.headOffset;
  if (record.state === 'committed') return rollForward(io, found, options, await io.read(at, record.newHead.length));
  const head = await io.read(at, record.newHead.length);
  if (bytesEqual(head, record.newHead)) return rollForward(io, found, options, record.newHead);
  const sector = head.subarray(0, 512);
  if (bytesEqual(sector, record.oldHead.subarray(0, 512))) {
    await checkProspect(io, options, record.sourceFormat, record.oldHead, record.fileSizeBefore, 'rolling back', at);
    // The switch never happened. A header tail written before it lies where the source keeps nothing; put
    // back only the sectors that hold exactly what the commit wrote, then drop the growth.
    for (let at = 512; at < record.oldHead.length; at += 512) {
      const current = head.subarray(at, at + 512);
      const written = record.newHead.subarray(at, at + 512);
      const original = record.oldHead.subarray(at, at + 512);
      if (bytesEqual(current, written) && !bytesEqual(current, original)) await io.write(record.headOffset + at, original);
    }
    await io.flush();
    await io.truncate(record.fileSizeBefore);
    await io.flush();
    return { action: 'rolled-back', format: record.sourceFormat, detail: `undid the conversion from ${record.sourceFormat} to ${record.targetFormat}` };
  }
  const ownMarker = bytesEqual(sector, transitionalSector(found.block.offset));
  if (!ownMarker && !bytesEqual(sector, record.newHead.subarray(0, 512))) {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: sector 0 matches neither side of the interrupted conversion; not touching it`, { path: io.name });
  }
  // Deferred writes may have begun once the marker was durable: the source is gone, finish the commit.
  if (record.deferred) return finishDeferredCommit(io, found, options);
  // The transitional marker, or the new sector 0 with a partly restored tail (a rollback in progress).
  await checkProspect(io, options, record.sourceFormat, record.oldHead, record.fileSizeBefore, 'rolling back', at);
  await rollBack(io, record);
  return { action: 'rolled-back', format: record.sourceFormat, detail: `undid the conversion from ${record.sourceFormat} to ${record.targetFormat}` };
}

/**
 * A commit with deferred writes stopped after its transitional marker: apply them all again (each is idempotent),
 * then the new header, tail first.
 */
async function finishDeferredCommit(io: BlockIO, found: FoundIntent, options: RecoverOptions): Promise<RecoveryResult> {
  const { record, block } = found;
  const ops = await readDeferred(io, logOffsetOf(block), block.logCapacity);
  if (!ops) {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: the interrupted commit's deferred writes are missing or damaged, so it can be neither finished nor undone; not touching it`, { path: io.name });
  }
  await checkProspect(io, options, record.targetFormat, record.newHead, record.targetFileSize, 'finishing the conversion', record.headOffset, new DeferredOverlay(io, ops));
  await applyDeferred(io, ops);
  await io.flush();
  if (record.newHead.length > 512) {
    await io.write(record.headOffset + 512, record.newHead.subarray(512));
    await io.flush();
  }
  await io.write(record.headOffset, record.newHead.subarray(0, 512));
  await io.flush();
  return rollForward(io, found, options, record.newHead);
}

/** The commit happened: re-apply an interrupted packing wave, finish the clean-up and the packing, cut the file. */
async function rollForward(io: BlockIO, found: FoundIntent, options: RecoverOptions, head: Uint8Array): Promise<RecoveryResult> {
  const { record, block } = found;
  // Once packing started (committed), a table may lie in the scratch space past the target's end: the image is
  // everything below the record.
  const prospectSize = record.state === 'committed' ? found.block.offset : record.targetFileSize;
  await checkProspect(io, options, record.targetFormat, head, prospectSize, 'finishing the conversion', record.headOffset);
  const log = await readLog(io, block);
  if (log) {
    await applyLog(io, log);
    await io.flush();
    await io.write(logOffsetOf(block), LOG_INVALID);
    await io.flush();
  }
  await zeroStaleHeaderBytes(io, record.headOffset + record.newHead.length, Math.min(record.headOffset + record.headerRegionSize, record.targetFileSize));
  await io.flush();
  // A record with the same format on both sides is the mover's (defrag, compact): nothing was converted.
  const detail =
    record.sourceFormat === record.targetFormat
      ? `finished an interrupted move of clusters in this ${record.targetFormat} image (defrag or compact; run it again to go on)`
      : `finished the conversion from ${record.sourceFormat} to ${record.targetFormat}`;
  const result: RecoveryResult = { action: 'rolled-forward', format: record.targetFormat, detail };
  const driver = record.pack !== 'never' ? options.drivers?.find(record.targetFormat) : undefined;
  if (driver) {
    // Packing may change header fields: from here on the record must not compare heads (state committed).
    if (record.state !== 'committed') {
      await writeNextSlot(io, found, { ...record, state: 'committed' });
      await io.flush();
    }
    const packed = await packImage(io, driver, {
      log: { offset: logOffsetOf(block), capacity: block.logCapacity },
      imageEnd: record.targetFileSize,
      limit: block.offset,
      scratch: { offset: record.targetFileSize, length: Math.max(0, block.offset - record.targetFileSize) },
      ...(record.packBudget > 0 ? { maxBytes: record.packBudget } : {}),
    });
    if (packed.done) {
      result.packed = { unitsMoved: packed.unitsMoved, bytesMoved: packed.bytesMoved };
      result.detail += packed.unitsMoved > 0 ? ` and packed it (${packed.unitsMoved} units moved)` : '';
      return result;
    }
    result.detail += `; not packed: ${packed.reason}`;
    // An interrupted packing may have moved a table into the scratch space past the target's end: keep it.
    await io.truncate(Math.max(record.targetFileSize, packed.referencedEnd));
    await io.flush();
    return result;
  }
  if (record.pack !== 'never') {
    // Without the driver the units cannot be listed: keep everything below the record (scratch included).
    result.detail += `; not packed (no ${record.targetFormat} driver given)`;
    await io.truncate(found.block.offset);
    await io.flush();
    return result;
  }
  // Nothing was packed: every unit lies below the target's own end, so cutting there drops only the record.
  await io.truncate(record.targetFileSize);
  await io.flush();
  return result;
}

export type { IntentRecord };
