import { ClusterBitmap, IcError, type BlockIO, type CheckReport } from '@ic/core/sdk';
import { blockHostOffset, isAllocated, readBlockMap } from './blockmap.js';
import { FORMAT, HEADER_FIELDS, type VdiGeometry, type VdiHeader } from './header.js';

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
export async function checkImage(io: BlockIO, header: VdiHeader, geometry: VdiGeometry): Promise<CheckReport & { allocated: number; highestIndex: number }> {
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
  let highestIndex = -1;
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
      if (entry > highestIndex) highestIndex = entry;
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
  return { corruptions, leaks: 0, checkErrors: 0, messages, allocated, highestIndex };
}

/**
 * `check -r leaks|all`. qemu 7.2 repairs nothing in a VDI (vdi_co_check returns -ENOTSUP, `qemu-img check -r`
 * exits 63); ic repairs the one damage that a single field fixes and refuses the rest:
 *  - leaks: VDI counts no leaks, so there is nothing to free; the report is the check (exit 0 clean, 2 damaged);
 *  - all: a wrong blocks_allocated is rewritten (4 bytes in the header, flushed: a kill leaves the old value or the
 *    new one) when it is the only problem and the blocks in use are exactly indices 0..n-1. qemu allocates the
 *    next block at index blocks_allocated, so any other layout could make a later write land on a block in use;
 *    every other corruption is refused in one line, nothing written.
 * The header is brought up to date; the report is the check after the repair.
 */
export async function repairImage(io: BlockIO, header: VdiHeader, geometry: VdiGeometry, repair: 'leaks' | 'all'): Promise<CheckReport> {
  if (!io.writable) throw new IcError('INVALID', `${FORMAT}: repair needs the image opened for writing`, { format: FORMAT });
  const { allocated, highestIndex, ...before } = await checkImage(io, header, geometry);
  if (before.corruptions === 0) return { ...before, messages: [`${FORMAT}: nothing to repair: VDI counts no leaks and the check found no damage`] };
  if (repair === 'leaks') return { ...before, messages: [...before.messages, `${FORMAT}: nothing to repair with -r leaks: VDI counts no leaks`] };
  const countOnly = before.corruptions === 1 && allocated !== header.blocksAllocated && highestIndex === allocated - 1;
  if (!countOnly) {
    const first = before.messages[0] ?? 'the block map is inconsistent';
    throw new IcError('CORRUPT', `${FORMAT}: ${first}: ic repairs only a wrong blocks_allocated over blocks 0..n-1 (qemu-img repairs no VDI); nothing was written`, { format: FORMAT });
  }
  const field = new Uint8Array(HEADER_FIELDS.blocksAllocated.size);
  new DataView(field.buffer).setUint32(0, allocated, true);
  await io.write(HEADER_FIELDS.blocksAllocated.offset, field);
  await io.flush();
  const was = header.blocksAllocated;
  header.blocksAllocated = allocated;
  const { allocated: _allocated, highestIndex: _highest, ...after } = await checkImage(io, header, geometry);
  return { ...after, corruptionsFixed: 1, messages: [`${FORMAT}: blocks_allocated rewritten: ${was} -> ${allocated}`, ...after.messages] };
}
