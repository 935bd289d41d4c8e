import { ClusterBitmap } from '../sdk/bitmap.js';
import { alignUp, IcError, type TargetLayout } from '../sdk/index.js';
import type { SpaceCursor } from './allocator.js';
import { DeferredWrites } from './deferred.js';
import type { HostOccupancy } from './occupancy.js';
import type { Placed } from './planner.js';
import { RunList } from './runs.js';

/**
 * Placements other than 'anywhere' (see Placement in the SDK), as the engine carries them out.
 *
 * Before the commit nothing inside the old file changes (a rollback is then a truncation, byte-exact, and does not
 * depend on the source driver having named every structure it uses): a write the placement needs inside the old
 * file waits for the commit (deferred.ts), after the transitional marker.
 *  - packed: the clusters that stay decide where the packed run starts (the engine picks the start, at or past
 *    the target's, that keeps the most clusters); cluster k of the run lies at start + k * C and slots 0 .. n-1
 *    are all used. A cluster stays when its slot index is below n; moved clusters fill the free slots: directly
 *    past the old file's end, through scratch space and a deferred copy inside it.
 *  - prefixed: each block needs `prefix` bytes right before its data, which the target writes. A cluster stays
 *    when no other cluster that stays overlaps its prefix: the most that can stay is found greedily in host order
 *    (equal intervals). A prefix inside the old file is deferred.
 *  - identity: guest byte g at host byte g. Data stored elsewhere would have to move to its own offset, and empty
 *    ranges would have to read as zeros there, which inside the old file means rewriting it, not converting it:
 *    refused before anything is written (raw and fixed VHD, whose bytes are all in place, convert).
 */

/** What the survey learns for one candidate geometry, before the build. */
export class PlacementSurvey {
  private hosts = new Float64Array(256);
  private guests = new Float64Array(256);
  /** Clusters that could stay (one aligned host run, inside the addressable range). */
  count = 0;
  /** Identity: host ranges the build writes before the commit (moved data, zeroed holes), in host order. */
  readonly writes = new RunList();

  constructor(
    readonly layout: TargetLayout,
    readonly virtualSize: number,
  ) {}

  get kind(): 'anywhere' | 'packed' | 'prefixed' | 'identity' {
    return this.layout.placement?.kind ?? 'anywhere';
  }

  candidate(guestOffset: number, hostOffset: number): void {
    if (this.count === this.hosts.length) {
      this.hosts = grow(this.hosts);
      this.guests = grow(this.guests);
    }
    this.hosts[this.count] = hostOffset;
    this.guests[this.count] = guestOffset;
    this.count++;
  }

  write(hostOffset: number, length: number): void {
    if (length > 0) this.writes.append(hostOffset, hostOffset + length);
  }

  /** Decides which candidates stay, given the number of target data clusters. */
  resolve(dataClusters: number): PlacementDecision {
    const C = this.layout.clusterSize;
    const placement = this.layout.placement;
    if (!placement || placement.kind === 'anywhere' || placement.kind === 'identity') return { start: 0, kept: undefined, keptCount: this.count, demotedBytes: 0, dataClusters, slots: undefined };
    const kept = new ClusterBitmap();
    let keptCount = 0;
    let demotedBytes = 0;
    if (placement.kind === 'packed') {
      const start = this.packedStart(placement.start, dataClusters);
      const slots = new ClusterBitmap();
      for (let i = 0; i < this.count; i++) {
        const offset = this.hosts[i]! - start;
        if (offset < 0 || offset % C !== 0 || offset / C >= dataClusters) {
          demotedBytes += this.clusterBytes(i);
          continue;
        }
        kept.add(this.guests[i]! / C);
        slots.add(offset / C);
        keptCount++;
      }
      return { start, kept, keptCount, demotedBytes, dataClusters, slots };
    }
    // prefixed: intervals [host - prefix, host + C) of equal length; keep greedily in host order.
    const order = this.hostOrder();
    let end = Number.NEGATIVE_INFINITY;
    for (const i of order) {
      const host = this.hosts[i]!;
      if (host - placement.prefix < end) {
        demotedBytes += this.clusterBytes(i);
        continue;
      }
      kept.add(this.guests[i]! / C);
      keptCount++;
      end = host + C;
    }
    return { start: 0, kept, keptCount, demotedBytes, dataClusters, slots: undefined };
  }

  /** Guest bytes of candidate i (the disk's last cluster may be short). */
  private clusterBytes(i: number): number {
    return Math.min(this.layout.clusterSize, this.virtualSize - this.guests[i]!);
  }

  /**
   * The packed run's start keeping the most candidates: a start s keeps the candidates at s + k*C with k < n, so
   * only starts congruent to candidate hosts modulo C are worth trying (the most common residues), and for each
   * residue the best window [s, s + n*C) begins at a candidate (sliding it up to the first one loses nothing).
   * Ties go to the lowest start (less space before the run).
   */
  private packedStart(minimum: number, n: number): number {
    const C = this.layout.clusterSize;
    const alignment = this.layout.hostAlignment ?? C;
    const low = alignUp(Math.max(minimum, this.layout.headerRegionSize), alignment);
    // The run must fit below maxHostOffset however many clusters end up in it.
    const high = this.layout.maxHostOffset - Math.ceil(this.virtualSize / C) * C;
    const byResidue = new Map<number, number[]>();
    for (let i = 0; i < this.count; i++) {
      const host = this.hosts[i]!;
      if (host < low || host > high) continue;
      const list = byResidue.get(host % C);
      if (list) list.push(host);
      else byResidue.set(host % C, [host]);
    }
    const classes = [...byResidue.values()].sort((a, b) => b.length - a.length).slice(0, 16);
    let best = { start: low, kept: 0 };
    for (const hosts of classes) {
      if (hosts.length < best.kept) break;
      const sorted = Float64Array.from(hosts).sort();
      for (let i = 0, j = 0; i < sorted.length; i++) {
        while (j < sorted.length && sorted[j]! < sorted[i]! + n * C) j++;
        const kept = j - i;
        if (kept > best.kept || (kept === best.kept && sorted[i]! < best.start)) best = { start: sorted[i]!, kept };
      }
    }
    return best.start;
  }

  private hostOrder(): Uint32Array {
    const order = new Uint32Array(this.count);
    let sorted = true;
    for (let i = 0; i < this.count; i++) {
      order[i] = i;
      if (i > 0 && this.hosts[i]! < this.hosts[i - 1]!) sorted = false;
    }
    if (!sorted) order.sort((a, b) => this.hosts[a]! - this.hosts[b]!);
    return order;
  }

  /** Identity: refuses writes inside the old file or onto anything the source references (the header included). */
  checkWrites(occupancy: HostOccupancy, fileSizeBefore: number, refuse: (reason: string) => IcError): void {
    for (const [start, end] of this.writes) {
      if (start < fileSizeBefore || occupancy.overlaps(start, end - start)) {
        throw refuse(
          `the ${this.layout.placement?.kind} layout keeps every guest byte at its own host offset, and host range 0x${start.toString(16)}..0x${end.toString(16)} would have to change (data stored elsewhere, or a hole that does not read as zeros); that rewrites the file rather than converting it in place`,
        );
      }
    }
  }
}

function grow(old: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> {
  const next = new Float64Array(old.length * 2);
  next.set(old);
  return next;
}

export interface PlacementDecision {
  /** packed: the host offset of slot 0. */
  start: number;
  /** packed, prefixed: the guest cluster indexes that stay. */
  kept: ClusterBitmap | undefined;
  keptCount: number;
  /** Guest bytes of the candidates that do not stay. */
  demotedBytes: number;
  dataClusters: number;
  /** packed: the slots the kept clusters fill. */
  slots: ClusterBitmap | undefined;
}

/** The decision of a target without a placement of its own ('anywhere'). */
export function emptyDecision(): PlacementDecision {
  return { start: 0, kept: undefined, keptCount: 0, demotedBytes: 0, dataClusters: 0, slots: undefined };
}

/**
 * The build side: which clusters stay, where moved ones go, which target writes may happen now and which wait
 * for the commit.
 */
export class PlacementRuntime {
  readonly deferred: DeferredWrites;
  /** prefixed: the data start of every block (kept or moved) by its cluster-sized host window. */
  private readonly blockStarts = new Map<number, number>();
  private nextSlot = 0;
  private readonly C: number;

  constructor(
    readonly layout: TargetLayout,
    private readonly decision: PlacementDecision,
    private readonly occupancy: HostOccupancy,
    /** Space past everything for moved clusters and target metadata. */
    private readonly cursor: SpaceCursor,
    /** Space past that for the copies of clusters whose final place is deferred. */
    private readonly scratch: SpaceCursor,
    deferredCapacity: number,
    /** Writes below this wait for the commit. */
    private readonly fileSizeBefore: number,
  ) {
    this.C = layout.clusterSize;
    this.deferred = new DeferredWrites(deferredCapacity);
  }

  get kind(): 'anywhere' | 'packed' | 'prefixed' | 'identity' {
    return this.layout.placement?.kind ?? 'anywhere';
  }

  keeps(guestOffset: number, _hostOffset: number): boolean {
    return this.decision.kept?.has(guestOffset / this.C) ?? true;
  }

  place(length: number, guestOffset: number): Placed {
    const C = this.C;
    const placement = this.layout.placement ?? { kind: 'anywhere' };
    switch (placement.kind) {
      case 'anywhere':
        return { hostOffset: this.cursor.take(alignUp(length, C), C, 'relocated clusters'), length };
      case 'identity':
        return { hostOffset: guestOffset, length };
      case 'prefixed': {
        const alignment = this.layout.hostAlignment ?? C;
        const lead = alignUp(placement.prefix, alignment);
        const hostOffset = this.cursor.take(lead + C, alignment, 'relocated blocks') + lead;
        this.blockStarts.set(Math.floor(hostOffset / C), hostOffset);
        return { hostOffset, length: Math.min(length, C) };
      }
      case 'packed':
        return this.nextSlots(length);
    }
  }

  /** The next free slots of a packed run: as many contiguous ones as wanted that are all free now, or one that is not. */
  private nextSlots(length: number): Placed {
    const C = this.C;
    const { start, slots, dataClusters } = this.decision;
    while (this.nextSlot < dataClusters && slots!.has(this.nextSlot)) this.nextSlot++;
    if (this.nextSlot >= dataClusters) throw new IcError('INTERNAL', `plan: no free slot left in the packed run for guest data (${dataClusters} slots)`);
    const first = this.nextSlot;
    const hostOffset = start + first * C;
    if (!this.writableNow(hostOffset, C)) {
      // The slot lies inside the old file: copy to scratch now, into the slot at the commit.
      this.nextSlot++;
      const copyTo = this.scratch.take(C, C, 'scratch space');
      this.deferred.copy(hostOffset, copyTo, C);
      return { hostOffset, length: Math.min(length, C), copyTo };
    }
    const wanted = Math.ceil(length / C);
    let count = 1;
    while (count < wanted && first + count < dataClusters && !slots!.has(first + count) && this.writableNow(start + (first + count) * C, C)) count++;
    this.nextSlot = first + count;
    return { hostOffset, length: Math.min(length, count * C) };
  }

  /** Past the old file and past everything the source references. */
  private writableNow(offset: number, length: number): boolean {
    return offset >= this.fileSizeBefore && !this.occupancy.overlaps(offset, length);
  }

  /** prefixed: a kept block's data start, so that the target may write its prefix. */
  kept(hostOffset: number, length: number): void {
    if (this.kind !== 'prefixed') return;
    for (let at = 0; at < length; at += this.C) this.blockStarts.set(Math.floor((hostOffset + at) / this.C), hostOffset + at);
  }

  /**
   * A target write outside its allocations: a prefixed block's prefix. 'now' past the old file, 'deferred'
   * (recorded here) inside it; undefined when the write is no prefix.
   */
  claim(offset: number, data: Uint8Array): 'now' | 'deferred' | undefined {
    const placement = this.layout.placement;
    if (placement?.kind !== 'prefixed') return undefined;
    const end = offset + data.length;
    // The block whose prefix this is starts in [end, end + prefix).
    let block: number | undefined;
    for (const window of [Math.floor(end / this.C), Math.floor((end + placement.prefix - 1) / this.C)]) {
      const start = this.blockStarts.get(window);
      if (start !== undefined && start >= end && offset >= start - placement.prefix) block = start;
    }
    if (block === undefined) return undefined;
    if (this.writableNow(offset, data.length)) return 'now';
    this.deferred.write(offset, data);
    return 'deferred';
  }
}
