import { ClusterBitmap, IcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { blockHostOffset, isAllocated, readBlockMap } from './blockmap.js';
import { FORMAT, type VdiGeometry, type VdiHeader } from './header.js';

/** Messages kept per report; the rest are counted, so a hostile map cannot grow the report without bound. */
export const MAX_MESSAGES = 200;

/**
 * qemu-img check for VDI (vdi_co_check): every entry of the whole block map (blocks_in_image of them) that names
 * a block must name an index below blocks_in_image that no other entry names, and the number of such entries
 * must equal blocks_allocated. Each violation is one corruption, reported with qemu's wording. qemu counts no
 * leaks and reports no cluster totals for VDI, so neither does this.
 *
 * One check more than qemu: an entry whose block lies past the end of the file (a truncated copy, which qemu
 * would read as zeros) is a corruption too, because map() and conversions refuse such images.
 */
export async function checkImage(io: BlockIO, header: VdiHeader, geometry: VdiGeometry, repair?: 'leaks' | 'all'): Promise<CheckReport> {
  if (repair !== undefined) {
    // qemu's vdi_co_check returns -ENOTSUP for any repair mode.
    throw new IcError('UNSUPPORTED', `${FORMAT}: repair is not supported for VDI images (neither does qemu-img check -r)`, { format: FORMAT });
  }
  const messages: string[] = [];
  let suppressed = 0;
  let corruptions = 0;
  const report = (message: string) => {
    corruptions++;
    if (messages.length < MAX_MESSAGES) messages.push(message);
    else suppressed++;
  };
  const used = new ClusterBitmap();
  let allocated = 0;
  for await (const chunk of readBlockMap(io, geometry, 0, geometry.blocksInImage)) {
    for (let i = 0; i < chunk.entries.length; i++) {
      const entry = chunk.entries[i]!;
      if (!isAllocated(entry)) continue;
      const block = chunk.firstBlock + i;
      if (entry >= geometry.blocksInImage) {
        report(`ERROR: block index ${block} too large, is ${entry}`);
        continue;
      }
      allocated++;
      // qemu prints the index twice here (its message names the entry, not the earlier user).
      if (!used.add(entry)) report(`ERROR: block index ${entry} also used by ${entry}`);
      else if (block < geometry.blocksInDisk) {
        const guestPart = Math.min(geometry.blockSize, geometry.virtualSize - block * geometry.blockSize);
        const host = blockHostOffset(geometry, entry);
        if (host + guestPart > geometry.fileSize) report(`ERROR: block ${block} (index ${entry}) lies at host ${host}, past the end of the file (${geometry.fileSize} bytes): the image is truncated`);
      }
    }
  }
  if (allocated !== header.blocksAllocated) report(`ERROR: allocated blocks mismatch, is ${allocated}, should be ${header.blocksAllocated}`);
  if (suppressed > 0) messages.push(`${FORMAT}: ${suppressed} further problem(s) not listed`);
  return { corruptions, leaks: 0, checkErrors: 0, messages };
}
