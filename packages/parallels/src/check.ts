import { IcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { readBat } from './bat.js';
import { FORMAT, INUSE_MAGIC, type ParallelsGeometry, type ParallelsHeader } from './header.js';

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
export async function checkImage(context: CheckContext, repair?: 'leaks' | 'all'): Promise<CheckReport> {
  if (repair !== undefined) {
    throw new IcError('UNSUPPORTED', `${FORMAT}: repair is not implemented; run \`qemu-img check -r ${repair} -f parallels\``, { format: FORMAT });
  }
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
  };
}
