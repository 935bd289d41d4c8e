import { IcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { readBat } from './bat.js';
import { FORMAT, HEADER_FIELDS, INUSE_MAGIC, type ParallelsGeometry, type ParallelsHeader } from './header.js';

const hex = (value: number): string => `0x${value.toString(16)}`;

/** Messages kept per report; the rest are counted. */
export const MAX_MESSAGES = 200;

export interface CheckContext {
  io: BlockIO;
  header: ParallelsHeader;
  geometry: ParallelsGeometry;
}

/**
 * qemu-img check for Parallels (qemu 7.2 parallels_co_check, read-only): an image left "in use" is one corruption;
 * every BAT entry whose cluster starts past the end of the file is one; the counters are qemu's (allocated and
 * fragmented clusters, image end = the highest cluster's start plus one cluster). Space past that end is leaked,
 * counted in clusters; holes between clusters are not. qemu 7.2 finds no duplicates and no clusters inside the BAT.
 */
export async function checkImage(context: CheckContext): Promise<CheckReport & { imageEndOffset: number; clustersOutside: number }> {
  const { io, header, geometry } = context;
  const { clusterSize, entryUnit, fileSize } = geometry;
  const messages: string[] = [];
  let suppressed = 0;
  const say = (message: string) => {
    if (messages.length < MAX_MESSAGES) messages.push(message);
    else suppressed++;
  };
  let corruptions = 0;
  if (header.inuse === INUSE_MAGIC) {
    corruptions++;
    say(`${FORMAT}: the image was not closed correctly (inuse is set); \`qemu-img check -r all\` clears it`);
  }
  let outside = 0;
  let allocated = 0;
  let fragmented = 0;
  let highest = 0;
  let previous = 0;
  for await (const chunk of readBat(io, 0, geometry.batEntries)) {
    const { entries } = chunk;
    for (let i = 0; i < chunk.count; i++) {
      const entry = entries[i]!;
      if (entry === 0) {
        previous = 0;
        continue;
      }
      const offset = entry * entryUnit;
      if (offset > fileSize) {
        corruptions++;
        outside++;
        say(`${FORMAT}: BAT entry ${chunk.firstIndex + i} names a cluster at ${hex(offset)}, past the end of the file (${hex(fileSize)})`);
      }
      allocated++;
      if (offset > highest) highest = offset;
      if (previous !== 0 && previous + clusterSize !== offset) fragmented++;
      previous = offset;
    }
  }
  const imageEndOffset = highest + clusterSize;
  let leaks = 0;
  if (fileSize > imageEndOffset) {
    leaks = Math.ceil((fileSize - imageEndOffset) / clusterSize);
    say(`${FORMAT}: ${fileSize - imageEndOffset} bytes past the last cluster (${hex(imageEndOffset)}) are leaked (${leaks} cluster(s))`);
  }
  if (suppressed > 0) messages.push(`${FORMAT}: ${suppressed} further problem(s) not listed`);
  return {
    corruptions,
    leaks,
    checkErrors: 0,
    totalClusters: geometry.batEntries,
    allocatedClusters: allocated,
    fragmentedClusters: fragmented,
    compressedClusters: 0,
    imageEndOffset,
    messages,
    clustersOutside: outside,
  };
}

/**
 * `check -r leaks|all` as qemu 7.2 repairs Parallels, where that is safe:
 *  - leaks (both modes): the file is truncated to the image end offset (never below the start of the data area),
 *    one truncate (a kill leaves the old size or the new one, both valid);
 *  - all: the inuse marker is cleared (four zero bytes in the header, flushed) once the BAT is known good;
 *  - a BAT entry past the end of the file is refused in both modes, nothing written. qemu -r all sets such entries
 *    to 0 (the guest then reads zeros where it read an error before) and leaves the file as long as its read-write
 *    open made it; qemu -r leaks extends the file to the bad offset. Neither is a repair ic can prove safe.
 * The context is brought up to date (file size, inuse); the report is the check after the repair, with what was
 * fixed and how.
 */
export async function repairImage(context: CheckContext, repair: 'leaks' | 'all'): Promise<CheckReport> {
  const { io, header, geometry } = context;
  if (!io.writable) throw new IcError('INVALID', `${FORMAT}: repair needs the image opened for writing`, { format: FORMAT });
  const before = await checkImage(context);
  if (before.clustersOutside > 0) {
    const first = before.messages.find((message) => message.includes('past the end of the file')) ?? `${FORMAT}: a BAT entry names a cluster past the end of the file`;
    throw new IcError('CORRUPT', `${first}: ic does not drop clusters it cannot read (qemu-img check -r all sets the entry to 0); nothing was written`, { format: FORMAT });
  }
  const done: string[] = [];
  // With no cluster allocated qemu's end is one cluster, which can lie inside the BAT (a large BAT, small clusters):
  // qemu 7.2 then reports the leak fixed and the file keeps its size. ic never cuts below the data area.
  const end = Math.max(before.imageEndOffset, geometry.dataStart);
  if (before.leaks > 0 && end < geometry.fileSize) {
    await io.truncate(end);
    await io.flush();
    geometry.fileSize = end;
    done.push(`${FORMAT}: truncated the file to ${hex(end)}`);
  }
  if (before.leaks > 0 && end > before.imageEndOffset) {
    done.push(`${FORMAT}: space qemu counts as leaked below ${hex(end)} holds the BAT (no cluster is allocated): not truncated`);
  }
  let corruptionsFixed = 0;
  if (repair === 'all' && header.inuse === INUSE_MAGIC) {
    await io.write(HEADER_FIELDS.inuse.offset, new Uint8Array(HEADER_FIELDS.inuse.size));
    await io.flush();
    header.inuse = 0;
    corruptionsFixed = 1;
    done.push(`${FORMAT}: cleared inuse (the BAT is consistent)`);
  }
  if (done.length === 0) done.push(`${FORMAT}: nothing to repair${before.corruptions > 0 ? ' with -r leaks (-r all clears inuse)' : ''}`);
  const { clustersOutside: _outside, ...after } = await checkImage(context);
  const leaksFixed = before.leaks - after.leaks;
  return { ...after, leaksFixed, corruptionsFixed, messages: [...done, ...after.messages] };
}
