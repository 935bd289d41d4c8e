import { canMerge, type Extent } from '@ic/core/sdk';
import { corruptAt, hex } from './errors.js';
import { MAX_HOST_OFFSET } from './header.js';
import type { Qcow2State } from './state.js';
import { decodeL1Entry, decodeL2Entry, subclusterType, type DecodedL2Entry, type SubclusterType } from './tables.js';

/** Where the compressed stream of one guest cluster lies. */
export interface CompressedDescriptor {
  /** Guest offset of the cluster the stream decodes to. */
  clusterGuestOffset: number;
  hostOffset: number;
  length: number;
}

/** An extent of the walk; compressed ones carry their descriptor (one cluster each, never merged). */
export type MappedPiece = Extent & { compressed?: CompressedDescriptor };

/** Checks an L2 table offset from the active L1 before it is read. */
export function checkL2Offset(state: Qcow2State, l1Index: number, l2Offset: number, reservedBitsSet: boolean): void {
  const where = state.header.l1TableOffset + l1Index * 8;
  if (reservedBitsSet) throw corruptAt(`L1 entry ${l1Index} has reserved bits set`, where);
  if (l2Offset % state.clusterSize !== 0) throw corruptAt(`L2 table offset ${hex(l2Offset)} is not cluster-aligned (L1 index ${l1Index})`, where);
  if (l2Offset < state.clusterSize) throw corruptAt(`L2 table offset ${hex(l2Offset)} overlaps the header cluster (L1 index ${l1Index})`, where);
  if (l2Offset + state.clusterSize > state.fileSize) {
    throw corruptAt(`L2 table ${hex(l2Offset)} (L1 index ${l1Index}) lies past the end of the file (${hex(state.fileSize)})`, where);
  }
}

function checkHostOffset(state: Qcow2State, entry: DecodedL2Entry, l2Offset: number, l2Index: number): void {
  const where = l2Offset + l2Index * state.geometry.l2EntrySize;
  if (entry.hostOffset >= MAX_HOST_OFFSET || !Number.isSafeInteger(entry.hostOffset)) {
    throw corruptAt(`L2 entry ${l2Index} of table ${hex(l2Offset)} points to an impossible host offset`, where);
  }
  if (entry.hostOffset % state.clusterSize !== 0) {
    throw corruptAt(`data cluster offset ${hex(entry.hostOffset)} is not cluster-aligned (L2 table ${hex(l2Offset)}, index ${l2Index})`, where);
  }
}

/** Walks [start, end) of the active mapping in guest order, one piece per cluster or subcluster (L1 holes in one piece). */
export async function* walkMapping(state: Qcow2State, start: number, end: number): AsyncGenerator<MappedPiece> {
  const { geometry, clusterSize } = state;
  const encrypted = state.header.cryptMethod !== 0;
  const seenL2 = new Map<number, number>();
  // Pieces are merged here, synchronously, and handed out one L2 table at a time: an async step per cluster
  // would dominate the cost of mapping large images. Compressed pieces stay one per cluster.
  const out: MappedPiece[] = [];
  const emit = (piece: MappedPiece) => {
    const last = out[out.length - 1];
    if (last && !last.compressed && !piece.compressed && canMerge(last, piece)) last.length += piece.length;
    else out.push({ ...piece });
  };
  let guest = start;
  while (guest < end) {
    const l1Index = Math.floor(guest / geometry.l2Coverage);
    const l1Base = l1Index * geometry.l2Coverage;
    const l1End = Math.min(end, l1Base + geometry.l2Coverage);
    const l1Entry = decodeL1Entry(state.l1, l1Index);
    if (l1Entry.l2Offset === 0) {
      // qemu ignores the other bits of an entry without an L2 table.
      emit({ kind: 'unallocated', guestOffset: guest, length: l1End - guest });
      guest = l1End;
      if (out.length > 1) yield* out.splice(0, out.length - 1);
      continue;
    }
    checkL2Offset(state, l1Index, l1Entry.l2Offset, l1Entry.reservedBitsSet);
    const previous = seenL2.get(l1Entry.l2Offset);
    if (previous !== undefined) {
      throw corruptAt(`L1 entries ${previous} and ${l1Index} point to the same L2 table ${hex(l1Entry.l2Offset)}`, state.header.l1TableOffset + l1Index * 8);
    }
    seenL2.set(l1Entry.l2Offset, l1Index);
    const tableBytes = await state.io.read(l1Entry.l2Offset, clusterSize);
    const table = new DataView(tableBytes.buffer, tableBytes.byteOffset, tableBytes.byteLength);
    while (guest < l1End) {
      const l2Index = Math.floor((guest - l1Base) / clusterSize);
      const clusterGuest = l1Base + l2Index * clusterSize;
      const clusterEnd = Math.min(l1End, clusterGuest + clusterSize);
      const entry = decodeL2Entry(table, l2Index, geometry);
      if (entry.type === 'compressed') {
        // The whole cluster is one compressed stream; subcluster bitmaps do not apply.
        emit({
          kind: 'compressed',
          guestOffset: guest,
          length: clusterEnd - guest,
          compressed: { clusterGuestOffset: clusterGuest, hostOffset: entry.compressedOffset, length: entry.compressedLength },
        });
        guest = clusterEnd;
        continue;
      }
      if ((entry.type === 'zero-plain' || entry.type === 'zero-alloc') && !geometry.zeroFlagAllowed) {
        throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(l1Entry.l2Offset)}, index ${l2Index})`, l1Entry.l2Offset + l2Index * 8);
      }
      if (entry.type === 'normal' || entry.type === 'zero-alloc') checkHostOffset(state, entry, l1Entry.l2Offset, l2Index);
      const subclusterSize = geometry.subclusterSize;
      while (guest < clusterEnd) {
        const subIndex = Math.floor((guest - clusterGuest) / subclusterSize);
        const pieceEnd = Math.min(clusterEnd, clusterGuest + (subIndex + 1) * subclusterSize);
        const type: SubclusterType = subclusterType(entry, subIndex, geometry);
        const hostOffset = entry.hostOffset + (guest - clusterGuest);
        const length = pieceEnd - guest;
        switch (type) {
          case 'normal':
            emit(encrypted ? { kind: 'encrypted', guestOffset: guest, length, hostOffset } : { kind: 'data', guestOffset: guest, length, hostOffset });
            break;
          case 'zero-alloc':
            // qemu reports no offset for encrypted images.
            emit(encrypted ? { kind: 'zero', guestOffset: guest, length } : { kind: 'zero', guestOffset: guest, length, hostOffset });
            break;
          case 'zero-plain':
            emit({ kind: 'zero', guestOffset: guest, length });
            break;
          case 'unallocated-alloc':
          case 'unallocated-plain':
            emit({ kind: 'unallocated', guestOffset: guest, length });
            break;
          case 'invalid':
            throw corruptAt(
              `L2 entry ${l2Index} of table ${hex(l1Entry.l2Offset)} has an invalid subcluster bitmap`,
              l1Entry.l2Offset + l2Index * geometry.l2EntrySize,
            );
          case 'compressed':
            break; // handled above
        }
        guest = pieceEnd;
      }
    }
    if (out.length > 1) yield* out.splice(0, out.length - 1);
  }
  yield* out;
}

/** Merges a piece stream into maximal extents (compressed pieces merge too; their descriptors are dropped). */
export async function* mergedExtents(pieces: AsyncIterable<MappedPiece>): AsyncGenerator<Extent> {
  let pending: Extent | undefined;
  for await (const piece of pieces) {
    const extent = stripPiece(piece);
    if (pending && canMerge(pending, extent)) {
      pending.length += extent.length;
      continue;
    }
    if (pending) yield pending;
    pending = extent;
  }
  if (pending) yield pending;
}

function stripPiece(piece: MappedPiece): Extent {
  const { compressed: _descriptor, ...extent } = piece;
  return extent as Extent;
}

/** Pieces merged where that keeps reads simple: compressed ones stay one per cluster. */
export async function collectReadPieces(pieces: AsyncIterable<MappedPiece>): Promise<MappedPiece[]> {
  const out: MappedPiece[] = [];
  for await (const piece of pieces) {
    const last = out[out.length - 1];
    if (last && !last.compressed && !piece.compressed && canMerge(last, piece)) {
      last.length += piece.length;
    } else {
      out.push({ ...piece });
    }
  }
  return out;
}
