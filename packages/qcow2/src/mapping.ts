import { canMerge, ClusterBitmap, readInto, type Extent } from '@ic/core/sdk';
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

export interface WalkOptions {
  /**
   * Also refuse what qemu tolerates on reads but what an in-place conversion must not carry over: reserved bits
   * in L2 entries, data clusters in the header cluster or starting past the end of the file.
   */
  strict?: boolean;
}

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

const TWO_32 = 2 ** 32;

/**
 * Collects pieces for one batch, merging each with the previous one where it continues it (compressed pieces
 * never merge: their descriptors differ).
 */
class PieceBatch {
  out: MappedPiece[] = [];
  private last: MappedPiece | undefined;

  /** Appends a piece of `kind` without allocating when it extends the last one. */
  add(kind: 'data' | 'zero' | 'unallocated' | 'encrypted', guestOffset: number, length: number, hostOffset: number | undefined): void {
    const last = this.last;
    if (last && last.kind === kind && !last.compressed && last.guestOffset + last.length === guestOffset) {
      const lastHost = 'hostOffset' in last ? last.hostOffset : undefined;
      if ((lastHost === undefined && hostOffset === undefined) || (lastHost !== undefined && hostOffset !== undefined && lastHost + last.length === hostOffset)) {
        last.length += length;
        return;
      }
    }
    const piece = (hostOffset === undefined ? { kind, guestOffset, length } : { kind, guestOffset, length, hostOffset }) as MappedPiece;
    this.out.push(piece);
    this.last = piece;
  }

  addPiece(piece: MappedPiece): void {
    const last = this.last;
    if (last && !last.compressed && !piece.compressed && canMerge(last, piece)) {
      last.length += piece.length;
      return;
    }
    const copy = { ...piece };
    this.out.push(copy);
    this.last = copy;
  }

  take(): MappedPiece[] {
    const out = this.out;
    this.out = [];
    this.last = undefined;
    return out;
  }
}

/**
 * Walks [start, end) of the active mapping in guest order and yields it in batches (one or more L2 tables each),
 * merged inside a batch. Standard L2 entries are decoded inline from their two 32-bit halves with no object per
 * entry; compressed entries, subclusters (extended L2) and encrypted images take the general path.
 */
export async function* walkMapping(state: Qcow2State, start: number, end: number, options: WalkOptions = {}): AsyncGenerator<MappedPiece[]> {
  const { geometry, clusterSize, fileSize } = state;
  const encrypted = state.header.cryptMethod !== 0;
  const general = geometry.extendedL2 || encrypted;
  const strict = options.strict === true;
  const seenL2 = new ClusterBitmap();
  const batch = new PieceBatch();
  // One buffer for every L2 table of the walk: a table is decoded before the next is read.
  const tableBytes = new Uint8Array(clusterSize);
  const table = new DataView(tableBytes.buffer);
  let guest = start;
  while (guest < end) {
    const l1Index = Math.floor(guest / geometry.l2Coverage);
    const l1Base = l1Index * geometry.l2Coverage;
    const l1End = Math.min(end, l1Base + geometry.l2Coverage);
    const l1Entry = decodeL1Entry(state.l1, l1Index);
    if (l1Entry.l2Offset === 0) {
      // qemu ignores the other bits of an entry without an L2 table.
      batch.add('unallocated', guest, l1End - guest, undefined);
      guest = l1End;
      if (batch.out.length >= 4096) yield batch.take();
      continue;
    }
    checkL2Offset(state, l1Index, l1Entry.l2Offset, l1Entry.reservedBitsSet);
    if (!seenL2.add(l1Entry.l2Offset / clusterSize)) {
      throw corruptAt(`two L1 entries point to the same L2 table ${hex(l1Entry.l2Offset)} (L1 index ${l1Index})`, state.header.l1TableOffset + l1Index * 8);
    }
    await readInto(state.io, l1Entry.l2Offset, tableBytes);
    const firstIndex = Math.floor((guest - l1Base) / clusterSize);
    const lastIndex = Math.ceil((l1End - l1Base) / clusterSize);
    const tableAt = l1Entry.l2Offset;
    // Runs of entries of one kind (host-contiguous for data) are found first and handed over as one piece.
    let runKind: 'data' | 'zero' | 'unallocated' | undefined;
    let runFrom = 0;
    let runTo = 0;
    let runHost = 0;
    const flush = () => {
      if (runKind !== undefined) batch.add(runKind, runFrom, runTo - runFrom, runKind === 'unallocated' || (runKind === 'zero' && runHost < 0) ? undefined : runHost);
      runKind = undefined;
    };
    // The raw entry that would continue the current data run (host + one cluster, same flags): most entries of
    // an allocated image are exactly that, and need no decoding.
    let nextHigh = -1;
    let nextLow = -1;
    const entrySize = geometry.l2EntrySize;
    for (let l2Index = firstIndex; l2Index < lastIndex; l2Index++) {
      const at = l2Index * entrySize;
      const high = table.getUint32(at);
      const low = table.getUint32(at + 4);
      if (low === nextLow && high === nextHigh && l2Index !== firstIndex && !general && (!strict || runHost + (runTo - runFrom) < fileSize)) {
        runTo = Math.min(l1End, l1Base + (l2Index + 1) * clusterSize);
        const lowNext = low + clusterSize;
        nextLow = lowNext >= TWO_32 ? lowNext - TWO_32 : lowNext;
        nextHigh = lowNext >= TWO_32 ? high + 1 : high;
        continue;
      }
      nextLow = -1;
      const clusterGuest = l1Base + l2Index * clusterSize;
      const from = l2Index === firstIndex ? Math.max(guest, clusterGuest) : clusterGuest;
      const to = Math.min(l1End, clusterGuest + clusterSize);
      if (general || (high & 0x40000000) !== 0) {
        flush();
        walkGeneral(state, table, tableAt, l2Index, clusterGuest, from, to, batch, encrypted, strict);
        continue;
      }
      const host = (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0);
      const zero = (low & 1) !== 0;
      if (strict && ((high & 0x3f000000) !== 0 || (low & 0x1fe) !== 0)) {
        throw corruptAt(`L2 entry ${l2Index} of table ${hex(tableAt)} has reserved bits set`, tableAt + at);
      }
      let kind: 'data' | 'zero' | 'unallocated';
      let pieceHost: number; // -1: none
      if (host === 0) {
        if (zero && !geometry.zeroFlagAllowed) throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(tableAt)}, index ${l2Index})`, tableAt + at);
        // With an external data file, offset 0 with COPIED names guest offset 0 of the data file.
        if (!zero && geometry.hasDataFile && (high & 0x80000000) !== 0) {
          kind = 'data';
          pieceHost = from - clusterGuest;
        } else {
          kind = zero ? 'zero' : 'unallocated';
          pieceHost = -1;
        }
      } else {
        // Bits 53..55 of the offset field: no file is that large, and the number would not be exact (as checkHostOffset).
        if (host >= MAX_HOST_OFFSET || !Number.isSafeInteger(host)) throw corruptAt(`L2 entry ${l2Index} of table ${hex(tableAt)} points to an impossible host offset`, tableAt + at);
        if (host % clusterSize !== 0) {
          throw corruptAt(`data cluster offset ${hex(host)} is not cluster-aligned (L2 table ${hex(tableAt)}, index ${l2Index})`, tableAt + at);
        }
        if (zero && !geometry.zeroFlagAllowed) throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(tableAt)}, index ${l2Index})`, tableAt + at);
        if (strict && !geometry.hasDataFile) {
          if (host < clusterSize) throw corruptAt(`data cluster at ${hex(host)} overlaps the header cluster`, tableAt + at);
          // Like qemu: the last cluster may end past EOF (it reads as zeros there), but must start inside.
          if (host >= fileSize) throw corruptAt(`data cluster ${hex(host)} lies past the end of the file (${hex(fileSize)})`, tableAt + at);
        }
        kind = zero ? 'zero' : 'data';
        pieceHost = host + (from - clusterGuest);
      }
      if (runKind === kind && runTo === from && (pieceHost < 0 ? runHost < 0 : runHost >= 0 && runHost + (runTo - runFrom) === pieceHost)) {
        runTo = to;
        continue;
      }
      flush();
      runKind = kind;
      runFrom = from;
      runTo = to;
      runHost = pieceHost;
      if (kind === 'data' && !zero && !geometry.hasDataFile) {
        // A plain data entry: the next one continues the run if it names the next host cluster with the same flags.
        const lowNext = low + clusterSize;
        nextLow = lowNext >= TWO_32 ? lowNext - TWO_32 : lowNext;
        nextHigh = lowNext >= TWO_32 ? high + 1 : high;
      }
    }
    flush();
    guest = l1End;
    if (batch.out.length >= 4096) yield batch.take();
  }
  if (batch.out.length > 0) yield batch.take();
}

/** One L2 entry the general way: compressed clusters, subclusters, encrypted images. */
function walkGeneral(
  state: Qcow2State,
  table: DataView,
  l2Offset: number,
  l2Index: number,
  clusterGuest: number,
  from: number,
  to: number,
  batch: PieceBatch,
  encrypted: boolean,
  strict: boolean,
): void {
  const { geometry } = state;
  const entry = decodeL2Entry(table, l2Index, geometry);
  const entryAt = l2Offset + l2Index * geometry.l2EntrySize;
  if (entry.type === 'compressed') {
    // The whole cluster is one compressed stream; subcluster bitmaps do not apply.
    batch.addPiece({
      kind: 'compressed',
      guestOffset: from,
      length: to - from,
      compressed: { clusterGuestOffset: clusterGuest, hostOffset: entry.compressedOffset, length: entry.compressedLength },
    });
    return;
  }
  if (strict && entry.reservedBitsSet) throw corruptAt(`L2 entry ${l2Index} of table ${hex(l2Offset)} has reserved bits set`, entryAt);
  if ((entry.type === 'zero-plain' || entry.type === 'zero-alloc') && !geometry.zeroFlagAllowed) {
    throw corruptAt(`zero cluster entry in a version 2 image (L2 table ${hex(l2Offset)}, index ${l2Index})`, entryAt);
  }
  if (entry.type === 'normal' || entry.type === 'zero-alloc') checkHostOffset(state, entry, l2Offset, l2Index);
  const subclusterSize = geometry.subclusterSize;
  for (let guest = from; guest < to; ) {
    const subIndex = Math.floor((guest - clusterGuest) / subclusterSize);
    const pieceEnd = Math.min(to, clusterGuest + (subIndex + 1) * subclusterSize);
    const type: SubclusterType = subclusterType(entry, subIndex, geometry);
    const hostOffset = entry.hostOffset + (guest - clusterGuest);
    const length = pieceEnd - guest;
    switch (type) {
      case 'normal':
        batch.add(encrypted ? 'encrypted' : 'data', guest, length, hostOffset);
        break;
      case 'zero-alloc':
        // qemu reports no offset for encrypted images.
        batch.add('zero', guest, length, encrypted ? undefined : hostOffset);
        break;
      case 'zero-plain':
        batch.add('zero', guest, length, undefined);
        break;
      case 'unallocated-alloc':
      case 'unallocated-plain':
        batch.add('unallocated', guest, length, undefined);
        break;
      case 'invalid':
        throw corruptAt(`L2 entry ${l2Index} of table ${hex(l2Offset)} has an invalid subcluster bitmap`, entryAt);
      case 'compressed':
        break; // handled above
    }
    guest = pieceEnd;
  }
}

/** Merges batches of pieces across batch boundaries into batches of extents (compressed descriptors are dropped). */
export async function* mergedExtents(batches: AsyncIterable<MappedPiece[]>): AsyncGenerator<Extent[]> {
  let pending: Extent | undefined;
  for await (const pieces of batches) {
    const out: Extent[] = [];
    for (const piece of pieces) {
      const extent = stripPiece(piece);
      if (pending && canMerge(pending, extent)) {
        pending.length += extent.length;
        continue;
      }
      if (pending) out.push(pending);
      pending = extent;
    }
    if (out.length > 0) yield out;
  }
  if (pending) yield [pending];
}

function stripPiece(piece: MappedPiece): Extent {
  if (!piece.compressed) return piece;
  const { compressed: _descriptor, ...extent } = piece;
  return extent as Extent;
}

/** Pieces merged where that keeps reads simple: compressed ones stay one per cluster. */
export async function collectReadPieces(batches: AsyncIterable<MappedPiece[]>): Promise<MappedPiece[]> {
  const batch = new PieceBatch();
  for await (const pieces of batches) for (const piece of pieces) batch.addPiece(piece);
  return batch.take();
}
