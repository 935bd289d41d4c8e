import type { ConversionBlocker, ConversionSource, HostRange } from '@ic/core/sdk';
import type { BitmapEntry } from './bitmaps.js';
import { corruptAt, hex } from './errors.js';
import { AutoclearFeature, KNOWN_AUTOCLEAR, MAX_HOST_OFFSET } from './header.js';
import { decodeRefcountTable } from './refcount.js';
import type { Qcow2State } from './state.js';
import { decodeL1Entry, decodeL2Entry } from './tables.js';

/** One bit per host cluster of the file: who owns it already. Catches aliasing and overlaps. */
class ClusterOwners {
  private readonly bits: Uint8Array;
  constructor(
    private readonly clusterSize: number,
    fileSize: number,
  ) {
    this.bits = new Uint8Array(Math.ceil(Math.ceil(fileSize / clusterSize) / 8) + 1);
  }
  /** Claims the clusters of [offset, offset+length); throws CORRUPT if one is claimed already. */
  claim(offset: number, length: number, role: string): void {
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    for (let cluster = first; cluster <= last; cluster++) {
      const byte = cluster >>> 3;
      const mask = 1 << (cluster & 7);
      if (this.bits[byte]! & mask) {
        throw corruptAt(`${role} at ${hex(offset)} overlaps another structure or data cluster (host cluster ${cluster})`, offset);
      }
      this.bits[byte] = this.bits[byte]! | mask;
    }
  }
}

const COPY_PATH = 'use qemu-img convert (the copy path) instead';

/**
 * Everything the in-place engine needs from a qcow2 source: the geometry, the features no target can
 * keep (blockers), and every host range the format's own structures occupy. Every table entry is
 * validated on the way (aligned, inside the file, not in the header cluster, not shared).
 */
export async function describeConversionSource(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<ConversionSource> {
  const { header, clusterSize, fileSize, geometry, io, extensions } = state;
  const blockers: ConversionBlocker[] = [];
  const block = (feature: string, reason: string): void => {
    blockers.push({ feature, reason });
  };
  if (header.cryptMethod !== 0) {
    block('encryption', `qcow2 encrypted clusters (${header.cryptMethod === 1 ? 'AES' : 'LUKS'}) are ciphertext tied to their host position and cannot be reused in place; ${COPY_PATH}.`);
  }
  if (header.nbSnapshots > 0) {
    block('internal snapshots', `the image has ${header.nbSnapshots} internal snapshot(s) that no target can keep; delete them with qemu-img snapshot -d, or ${COPY_PATH}.`);
  }
  if (extensions.bitmaps || (header.autoclearFeatures & AutoclearFeature.bitmaps) !== 0n) {
    block('persistent bitmaps', `the image has persistent dirty bitmaps that would be lost; remove them with qemu-img bitmap --remove, or ${COPY_PATH}.`);
  }
  if (geometry.extendedL2) {
    block('extended L2 (subclusters)', `the image uses extended L2 entries (subclusters), so clusters can be partly allocated; ${COPY_PATH}.`);
  }
  if (state.hasDataFile || extensions.dataFile !== undefined) {
    block('external data file', `guest data lives in the external data file '${extensions.dataFile ?? '?'}', not in this file; convert that file instead, or ${COPY_PATH}.`);
  }
  if (state.corrupt) {
    block('corrupt bit', `the image is marked corrupt; repair it with qemu-img check -r all first, or ${COPY_PATH}.`);
  }
  const unknownAutoclear = header.autoclearFeatures & ~KNOWN_AUTOCLEAR;
  if (unknownAutoclear !== 0n) {
    block('unknown autoclear features', `the image sets unknown autoclear feature bits 0x${unknownAutoclear.toString(16)} describing data we cannot carry over; ${COPY_PATH}.`);
  }

  const ranges: HostRange[] = [];
  const owners = new ClusterOwners(clusterSize, fileSize);
  const addRange = (offset: number, length: number, role: string, claim = true): void => {
    if (length <= 0) return;
    ranges.push({ offset, length, role });
    if (claim) owners.claim(offset, length, role);
  };
  // Cluster 0 belongs to the header as a whole; the bytes in use are the header and its extensions.
  owners.claim(0, clusterSize, 'header');
  ranges.push({ offset: 0, length: extensions.end, role: 'header and extensions' });
  if (state.backingName) ranges.push({ offset: state.backingName.offset, length: state.backingName.length, role: 'backing file name' });

  /** A cluster-sized (or longer) structure: aligned, past cluster 0, inside the file. */
  const checkTable = (offset: number, length: number, role: string, where: number): void => {
    if (offset % clusterSize !== 0) throw corruptAt(`${role} offset ${hex(offset)} is not cluster-aligned`, where);
    if (offset < clusterSize) throw corruptAt(`${role} at ${hex(offset)} overlaps the header cluster`, where);
    if (offset + length > fileSize) throw corruptAt(`${role} ${hex(offset)}+${hex(length)} lies past the end of the file (${hex(fileSize)})`, where);
  };

  addRange(header.l1TableOffset, header.l1Size * 8, 'L1 table');
  const refcountTableBytes = header.refcountTableClusters * clusterSize;
  addRange(header.refcountTableOffset, refcountTableBytes, 'refcount table');
  const slots = decodeRefcountTable(await io.read(header.refcountTableOffset, refcountTableBytes));
  slots.forEach((slot, index) => {
    const where = header.refcountTableOffset + index * 8;
    if (slot.reservedBitsSet) throw corruptAt(`refcount table entry ${index} has reserved bits set`, where);
    if (slot.blockOffset === 0) return;
    checkTable(slot.blockOffset, clusterSize, `refcount block ${index}`, where);
    addRange(slot.blockOffset, clusterSize, 'refcount block');
  });
  if (state.snapshotTable) {
    // The padding after the last entry may lie past EOF; the range stops at the file's end.
    const { offset, size } = state.snapshotTable;
    addRange(offset, Math.min(size, fileSize - offset), 'snapshot table');
  }
  if (extensions.encryption) addRange(extensions.encryption.offset, extensions.encryption.length, 'encryption header');
  if (extensions.bitmaps) {
    addRange(extensions.bitmaps.directoryOffset, extensions.bitmaps.directorySize, 'bitmap directory', false);
    for (const bitmap of bitmaps) addRange(bitmap.tableOffset, bitmap.tableSize * 8, `bitmap table '${bitmap.name}'`, false);
  }

  // The active mapping: every L2 table, every data cluster.
  let zeroExtents = false;
  let compressedClusters = 0;
  const virtualClusters = Math.ceil(state.virtualSize / clusterSize);
  for (let l1Index = 0; l1Index < header.l1Size; l1Index++) {
    const l1Entry = decodeL1Entry(state.l1, l1Index);
    const where = header.l1TableOffset + l1Index * 8;
    if (l1Entry.l2Offset === 0) continue;
    if (l1Entry.reservedBitsSet) throw corruptAt(`L1 entry ${l1Index} has reserved bits set`, where);
    checkTable(l1Entry.l2Offset, clusterSize, `L2 table (L1 index ${l1Index})`, where);
    addRange(l1Entry.l2Offset, clusterSize, 'L2 table');
    const firstCluster = l1Index * geometry.l2Entries;
    const entries = Math.min(geometry.l2Entries, virtualClusters - firstCluster);
    if (entries <= 0) continue;
    const bytes = await io.read(l1Entry.l2Offset, clusterSize);
    const table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let l2Index = 0; l2Index < entries; l2Index++) {
      const entry = decodeL2Entry(table, l2Index, geometry);
      const entryAt = l1Entry.l2Offset + l2Index * geometry.l2EntrySize;
      switch (entry.type) {
        case 'unallocated':
          if (entry.zeroBitmap !== 0) zeroExtents = true;
          break;
        case 'zero-plain':
          if (!geometry.zeroFlagAllowed) throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(l1Entry.l2Offset)}, index ${l2Index})`, entryAt);
          zeroExtents = true;
          break;
        case 'compressed':
          compressedClusters++;
          if (entry.compressedOffset < clusterSize || entry.compressedOffset >= fileSize) {
            throw corruptAt(`compressed cluster at ${hex(entry.compressedOffset)} lies outside the file or in the header cluster`, entryAt);
          }
          break;
        case 'normal':
        case 'zero-alloc': {
          if (entry.type === 'zero-alloc' && !geometry.zeroFlagAllowed) {
            throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(l1Entry.l2Offset)}, index ${l2Index})`, entryAt);
          }
          if (entry.type === 'zero-alloc' || entry.zeroBitmap !== 0) zeroExtents = true;
          if (state.hasDataFile) break; // offsets name the data file, not this one
          if (entry.reservedBitsSet) throw corruptAt(`L2 entry ${l2Index} of table ${hex(l1Entry.l2Offset)} has reserved bits set`, entryAt);
          const offset = entry.hostOffset;
          if (offset >= MAX_HOST_OFFSET || offset % clusterSize !== 0) {
            throw corruptAt(`data cluster offset ${hex(offset)} is not cluster-aligned (L2 table ${hex(l1Entry.l2Offset)}, index ${l2Index})`, entryAt);
          }
          if (offset < clusterSize) throw corruptAt(`data cluster at ${hex(offset)} overlaps the header cluster`, entryAt);
          // Like qemu: the last cluster may end past EOF (it reads as zeros there), but must start inside.
          if (offset >= fileSize) throw corruptAt(`data cluster ${hex(offset)} lies past the end of the file (${hex(fileSize)})`, entryAt);
          owners.claim(offset, clusterSize, entry.type === 'zero-alloc' ? 'zero-allocated cluster' : 'data cluster');
          break;
        }
      }
    }
  }
  if (compressedClusters > 0) {
    block('compressed clusters', `${compressedClusters} compressed cluster(s) are not stored 1:1 and cannot be reused in place; ${COPY_PATH} (or decompress with qemu-img convert -O qcow2).`);
  }

  return {
    options: {
      virtualSize: state.virtualSize,
      clusterSize,
      ...(state.backing ? { backing: { name: state.backing.name, format: state.backing.format } } : {}),
      zeroExtents,
    },
    blockers,
    metadataRanges: ranges,
    // The whole of cluster 0 is header territory, whatever the header uses of it.
    headerRegionSize: clusterSize,
  };
}
