import type { ConversionBlocker, ConversionSource, HostRange } from '@ic/core/sdk';
import type { BitmapEntry } from './bitmaps.js';
import { corruptAt, hex } from './errors.js';
import { AutoclearFeature } from './header.js';
import { mergedExtents, walkMapping } from './mapping.js';
import { decodeRefcountTable } from './refcount.js';
import type { Qcow2State } from './state.js';
import { decodeL1Entry } from './tables.js';

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
  // Unknown autoclear bits describe extra data a writer that does not know them must treat as invalid and
  // clear (qcow2 spec): no target keeps them, and nothing else depends on them.

  /** A cluster-sized (or longer) structure: aligned, past cluster 0, inside the file. */
  const checkTable = (offset: number, length: number, role: string, where: number): void => {
    if (offset % clusterSize !== 0) throw corruptAt(`${role} offset ${hex(offset)} is not cluster-aligned`, where);
    if (offset < clusterSize) throw corruptAt(`${role} at ${hex(offset)} overlaps the header cluster`, where);
    if (offset + length > fileSize) throw corruptAt(`${role} ${hex(offset)}+${hex(length)} lies past the end of the file (${hex(fileSize)})`, where);
  };
  const refcountTableBytes = header.refcountTableClusters * clusterSize;
  // The refcount table is small (at most 8 MiB); its blocks are checked here, before the engine writes anything.
  const slots = decodeRefcountTable(await io.read(header.refcountTableOffset, refcountTableBytes));
  slots.forEach((slot, index) => {
    const where = header.refcountTableOffset + index * 8;
    if (slot.reservedBitsSet) throw corruptAt(`refcount table entry ${index} has reserved bits set`, where);
    if (slot.blockOffset !== 0) checkTable(slot.blockOffset, clusterSize, `refcount block ${index}`, where);
  });
  for (let l1Index = 0; l1Index < header.l1Size; l1Index++) {
    const l1Entry = decodeL1Entry(state.l1, l1Index);
    if (l1Entry.l2Offset === 0) continue;
    const where = header.l1TableOffset + l1Index * 8;
    if (l1Entry.reservedBitsSet) throw corruptAt(`L1 entry ${l1Index} has reserved bits set`, where);
    checkTable(l1Entry.l2Offset, clusterSize, `L2 table (L1 index ${l1Index})`, where);
  }

  /** Every structure of the format, streamed; overlaps between them (and with data) are the engine's to find. */
  function* metadataRanges(): Generator<HostRange[]> {
    // Cluster 0 belongs to the header as a whole (header, extensions, backing file name).
    yield [{ offset: 0, length: clusterSize, kind: 'header', role: 'header cluster' }];
    const fixed: HostRange[] = [];
    if (header.l1Size > 0) fixed.push({ offset: header.l1TableOffset, length: header.l1Size * 8, kind: 'metadata', role: 'L1 table' });
    fixed.push({ offset: header.refcountTableOffset, length: refcountTableBytes, kind: 'metadata', role: 'refcount table' });
    if (state.snapshotTable) {
      // The padding after the last entry may lie past EOF; the range stops at the file's end.
      const { offset, size } = state.snapshotTable;
      fixed.push({ offset, length: Math.min(size, fileSize - offset), kind: 'metadata', role: 'snapshot table' });
    }
    if (extensions.encryption) fixed.push({ offset: extensions.encryption.offset, length: extensions.encryption.length, kind: 'metadata', role: 'encryption header' });
    yield fixed;
    let batch: HostRange[] = [];
    for (const slot of slots) {
      if (slot.blockOffset !== 0) batch.push({ offset: slot.blockOffset, length: clusterSize, kind: 'metadata', role: 'refcount block' });
    }
    for (let l1Index = 0; l1Index < header.l1Size; l1Index++) {
      const l1Entry = decodeL1Entry(state.l1, l1Index);
      if (l1Entry.l2Offset !== 0) batch.push({ offset: l1Entry.l2Offset, length: clusterSize, kind: 'metadata', role: 'L2 table' });
      if (batch.length >= 4096) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) yield batch;
  }

  return {
    options: {
      virtualSize: state.virtualSize,
      clusterSize,
      ...(state.backing ? { backing: { name: state.backing.name, format: state.backing.format } } : {}),
    },
    blockers,
    metadataRanges,
    // The conversion walks the mapping strictly: reserved bits, data in the header cluster or past EOF are refused.
    map: () => mergedExtents(walkMapping(state, 0, state.virtualSize, { strict: true })),
    // The whole of cluster 0 is header territory, whatever the header uses of it.
    headerRegionSize: clusterSize,
  };
}
