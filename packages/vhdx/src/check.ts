import { IcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { BAT_ENTRY_SIZE, entryState, PAYLOAD_BLOCK_FULLY_PRESENT, readBat } from './bat.js';
import { FORMAT } from './header.js';
import type { VhdxLayout } from './image.js';

const hex = (value: number | bigint): string => `0x${value.toString(16)}`;

/** Messages kept per report; the rest are counted. */
export const MAX_MESSAGES = 200;

const INT64_MAX = 2n ** 63n - 1n;

/**
 * qemu-img check for VHDX (qemu 7.2 vhdx_co_check): the BAT entries qemu's open would reject, each counted as a
 * corruption (vhdx_check_bat_entries with an error count). Only "fully present" entries are judged: an offset
 * that overflows, starts at or past the end of the file, or whose block (cut at the disk's end) runs past it;
 * and a payload block overlapping the log or a region, where qemu counts payload entries by the fully present
 * ones it has seen (every chunk_ratio + 1-th present entry is taken for a sector bitmap and not compared).
 * qemu counts no leaks and no clusters for VHDX.
 *
 * With `repair` (check -r leaks|all) it is the same check and nothing is written, as for qemu 7.2 once its
 * read-write open has replayed the log: qemu repairs no BAT entry either (damage stays, exit 2) and VHDX counts no
 * leaks. The one thing qemu's -r does that this does not is the log replay: ic refuses to open an image with a
 * log to replay (one line, before check runs), so such an image goes to `qemu-img check -r all` first.
 */
export async function checkImage(io: BlockIO, layout: VhdxLayout, repair?: 'leaks' | 'all'): Promise<CheckReport> {
  const { bat, regions, owned, fileSize, virtualSize } = layout;
  const blockSize = BigInt(bat.blockSize);
  const size = BigInt(fileSize);
  const messages: string[] = [];
  let suppressed = 0;
  let corruptions = 0;
  const fail = (message: string) => {
    corruptions++;
    if (messages.length < MAX_MESSAGES) messages.push(`${FORMAT}: ${message}`);
    else suppressed++;
  };
  let payloadCountdown = bat.chunkRatio;
  for await (const chunk of readBat(io, regions.bat.fileOffset, 0, bat.batEntries)) {
    for (let i = 0; i < chunk.count; i++) {
      if (entryState(chunk.view, i) !== PAYLOAD_BLOCK_FULLY_PRESENT) continue;
      const index = chunk.firstIndex + i;
      const offset = chunk.view.getBigUint64(i * BAT_ENTRY_SIZE, true) & 0xfffffffffff00000n;
      // qemu computes the block length from the BAT index, sector bitmap entries included, in unsigned arithmetic.
      const remaining = BigInt(virtualSize) - BigInt(index) * blockSize;
      const blockLength = remaining >= 0n && remaining < blockSize ? remaining : blockSize;
      if (offset > INT64_MAX - blockSize) fail(`BAT entry ${index}: offset ${hex(offset)} overflows`);
      if (offset >= size) fail(`BAT entry ${index}: block at ${hex(offset)} starts past the end of the file (${hex(fileSize)}); the image has probably been truncated`);
      else if (offset + blockLength > size) fail(`BAT entry ${index}: block at ${hex(offset)} ends past the end of the file (${hex(fileSize)}); the image has probably been truncated`);
      if (payloadCountdown > 0) {
        payloadCountdown--;
        const start = Number(offset > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(Number.MAX_SAFE_INTEGER) : offset);
        const clash = owned.find((range) => start < range.end && start + bat.blockSize > range.start);
        if (clash) fail(`BAT entry ${index}: block at ${hex(offset)} overlaps the ${clash.what}`);
      } else {
        payloadCountdown = bat.chunkRatio;
      }
    }
  }
  if (suppressed > 0) messages.push(`${FORMAT}: ${suppressed} further problem(s) not listed`);
  if (repair !== undefined) {
    messages.push(
      corruptions === 0
        ? `${FORMAT}: nothing to repair: VHDX counts no leaks, the check found no damage and there is no log to replay`
        : `${FORMAT}: not repaired: a BAT entry has no copy to rebuild it from (qemu-img check -r repairs none either); nothing was written`,
    );
  }
  return { corruptions, leaks: 0, checkErrors: 0, messages };
}
