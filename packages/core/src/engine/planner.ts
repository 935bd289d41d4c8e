import { IcError, pushExtent, type Extent, type SpaceAllocator, type TargetLayout } from '../sdk/index.js';

export type RelocationReason = 'header-region' | 'misaligned' | 'beyond-addressable' | 'mixed-content' | 'zero-fill' | 'placement';

/** Where the bytes of a relocated range come from. */
export type RelocationSource =
  /** One host run of the source: guest byte g of the range is host byte hostOffset + (g - guestOffset). */
  | { kind: 'host'; hostOffset: number }
  /** Zeros (a zero run the target cannot record over a backing file). */
  | { kind: 'zero' }
  /** Several pieces (a target cluster larger than the source's): data from the host, zeros elsewhere. */
  | { kind: 'pieces'; pieces: readonly { guestOffset: number; length: number; hostOffset?: number }[] };

/** Target clusters whose guest content is copied to new host space before the commit. */
export interface Relocation {
  /**
   * Where the bytes are copied before the commit when that is not hostOffset: scratch space, from which a write
   * deferred to the commit puts them in place (their final place still holds something the source uses).
   */
  copyTo?: number;
  guestOffset: number;
  /** Guest bytes (whole clusters, except for the last cluster of the disk). */
  length: number;
  /** New host offset (cluster-aligned; whole clusters reserved). */
  hostOffset: number;
  /** Why it cannot stay: for plans and messages. */
  reason: RelocationReason;
  source: RelocationSource;
}

export interface PlanStats {
  clustersKept: number;
  clustersRelocated: number;
  bytesRelocated: number;
  zeroClusters: number;
  unallocatedClusters: number;
}

/** Host space granted for guest bytes that must move. */
export interface Placed {
  hostOffset: number;
  /** Bytes granted from the start of the request (whole clusters, or the rest of the request); at least one cluster. */
  length: number;
  /** See Relocation.copyTo. */
  copyTo?: number;
}

/** Receives the plan as it is made: target mapping extents in guest order, and the ranges that must move. */
export interface PlanSink {
  /**
   * Host space for the guest bytes [guestOffset, guestOffset+length) that must move (whole clusters). It may grant
   * less than asked (a packed target's free slots are not contiguous): the planner asks again for the rest.
   */
  place(length: number, guestOffset: number): Placed;
  relocation?(relocation: Relocation): void;
  /** The next extent of the target mapping (cluster-aligned, merged by the caller if it wants). */
  extent(extent: Extent): void;
  /**
   * Placements 'packed' and 'prefixed': whether the target cluster at `guestOffset`, whose data is one host run at
   * the aligned `hostOffset` inside the addressable range, stays there. Absent: it stays.
   */
  keeps?(guestOffset: number, hostOffset: number): boolean;
  /** Placement 'identity': the empty target range [guestOffset, +length) must read as zeros at its own host offset. */
  zeroInPlace?(guestOffset: number, length: number): void;
}

export interface PlannerOptions {
  virtualSize: number;
  layout: TargetLayout;
  /** The source has a backing file: unallocated and zero differ. */
  hasBacking: boolean;
  /** Zero extents with a hostOffset read as zeros there (raw holes): they may share a kept cluster with data. */
  zeroHostRangesReadAsZero?: boolean;
  /** Zero runs become unallocated (without a backing file both read as zeros; the default then). */
  zeroAsUnallocated?: boolean;
  /**
   * With zeroHostRangesReadAsZero, placement 'anywhere': whole clusters of a zero run that can stay at their
   * host range are kept as data clusters there (they read as zeros), instead of becoming empty. A target that
   * counts every unreferenced cluster as a leak (QED) then references the source's holes without moving
   * anything; clusters that could not stay (under the header, misaligned) still become empty.
   */
  holesAsData?: boolean;
}

const emptyStats = (): PlanStats => ({ clustersKept: 0, clustersRelocated: 0, bytesRelocated: 0, zeroClusters: 0, unallocatedClusters: 0 });

/**
 * Decides, for every target cluster, whether its data stays where it is, moves, or becomes a zero or
 * unallocated cluster, as the source map streams in (guest order). A data cluster stays only when its guest
 * bytes are one host run starting on a host-alignment boundary, outside the target's header region and inside
 * its addressable range. Work is per extent, not per cluster: a long extent is split arithmetically into the
 * runs that stay and the runs that move. Memory: the source extents of one target cluster.
 */
export class MappingPlanner {
  readonly stats: PlanStats = emptyStats();
  /** Clusters of zero-reading holes kept as data (holesAsData); counted in stats.clustersKept too. */
  holeClustersKept = 0;
  private readonly clusterSize: number;
  private readonly alignment: number;
  /** Source extents not yet fully planned, in guest order; the first may be partly planned. */
  private pending: Extent[] = [];
  private pendingEnd = 0;
  /** Next guest offset to plan (a cluster boundary). */
  private guest = 0;
  private readonly placement: 'anywhere' | 'packed' | 'prefixed' | 'identity';
  /** Lowest host offset a kept cluster may start at. */
  private readonly minHost: number;
  /** Some target cluster holds data (kept or relocated). */
  private dataPlanned = false;

  constructor(
    private readonly options: PlannerOptions,
    private readonly sink: PlanSink,
  ) {
    this.clusterSize = options.layout.clusterSize;
    this.alignment = options.layout.hostAlignment ?? this.clusterSize;
    const { layout } = options;
    const placement = layout.placement ?? { kind: 'anywhere' };
    this.placement = placement.kind;
    const headerOffset = layout.headerOffset ?? 0;
    if (headerOffset !== 0 && (placement.kind !== 'identity' || headerOffset < options.virtualSize)) {
      throw new IcError('UNSUPPORTED', `a header region at ${headerOffset} is supported for identity placement past the disk's end only (the layout says '${placement.kind}')`);
    }
    this.minHost =
      placement.kind === 'packed' ? Math.max(layout.headerRegionSize, placement.start) : placement.kind === 'prefixed' ? layout.headerRegionSize + placement.prefix : layout.headerRegionSize;
  }

  /** The next source extent (guest order, contiguous with the previous one). */
  push(extent: Extent): void {
    if (extent.length <= 0) return;
    if (extent.guestOffset !== this.pendingEnd) {
      throw new IcError('INTERNAL', `plan: source extent at guest ${extent.guestOffset} does not continue from ${this.pendingEnd}`);
    }
    this.pending.push(extent);
    this.pendingEnd = extent.guestOffset + extent.length;
    this.drain(false);
  }

  /** Plans what is left; the source map must have covered the whole disk. */
  finish(): PlanStats {
    if (this.pendingEnd !== this.options.virtualSize) {
      throw new IcError('INTERNAL', `plan: the source map ends at ${this.pendingEnd}, the virtual size is ${this.options.virtualSize}`);
    }
    this.drain(true);
    return this.stats;
  }

  /** Plans every target cluster the pending extents cover completely (all of them at the end). */
  private drain(final: boolean): void {
    const { virtualSize } = this.options;
    const C = this.clusterSize;
    const limit = final ? virtualSize : Math.floor(this.pendingEnd / C) * C;
    while (this.guest < limit) {
      while (this.pending.length > 0 && this.pending[0]!.guestOffset + this.pending[0]!.length <= this.guest) this.pending.shift();
      const first = this.pending[0];
      if (!first || first.guestOffset > this.guest) throw new IcError('INTERNAL', `plan: source map has no extent at guest ${this.guest}`);
      const firstEnd = first.guestOffset + first.length;
      const clusterEnd = Math.min(this.guest + C, virtualSize);
      if (firstEnd >= clusterEnd) {
        // One source extent covers at least this whole cluster: plan every whole cluster it covers at once.
        const runEnd = firstEnd >= virtualSize ? virtualSize : Math.min(limit, this.guest + Math.floor((firstEnd - this.guest) / C) * C);
        this.planRun(first, this.guest, runEnd);
        this.guest = runEnd;
        continue;
      }
      this.planShared(this.guest, clusterEnd);
      this.guest = clusterEnd;
    }
    // Keep only what the next clusters can still use.
    while (this.pending.length > 0 && this.pending[0]!.guestOffset + this.pending[0]!.length <= this.guest) this.pending.shift();
  }

  private clustersIn(length: number): number {
    return Math.ceil(length / this.clusterSize);
  }

  /** Guest range [from, to) of one source extent, cluster-aligned (to may be the disk's end). */
  private planRun(extent: Extent, from: number, to: number): void {
    switch (extent.kind) {
      case 'unallocated':
      case 'zero':
        if (this.keepsHoles() && this.readsZeroAtHost(extent)) {
          this.keepHoleRun(extent, from, to);
          return;
        }
        if (this.placement === 'identity' && !this.readsZeroInPlace(extent, from)) this.sink.zeroInPlace?.(from, to - from);
        this.emitEmpty(extent.kind, from, to - from);
        return;
      case 'data': {
        const C = this.clusterSize;
        const { headerRegionSize, maxHostOffset } = this.options.layout;
        const hostFrom = extent.hostOffset + (from - extent.guestOffset);
        if (this.placement === 'identity') {
          if (hostFrom === from && to <= maxHostOffset) this.keep(from, to - from, hostFrom);
          else this.relocate(from, to - from, 'placement', { kind: 'host', hostOffset: hostFrom });
          return;
        }
        if (hostFrom % this.alignment !== 0) {
          this.relocate(from, to - from, 'misaligned', { kind: 'host', hostOffset: hostFrom });
          return;
        }
        if (this.placement !== 'anywhere') {
          this.planEachCluster(from, to, hostFrom);
          return;
        }
        // Clusters under the header region move; so do those that would end past the addressable range.
        const clusters = this.clustersIn(to - from);
        const underHeader = Math.min(clusters, Math.max(0, Math.ceil((headerRegionSize - hostFrom) / C)));
        const addressable = Math.max(underHeader, Math.min(clusters, Math.floor((maxHostOffset - hostFrom) / C)));
        let at = from;
        const hostAt = (guest: number) => extent.hostOffset + (guest - extent.guestOffset);
        if (underHeader > 0) {
          const end = Math.min(to, from + underHeader * C);
          this.relocate(at, end - at, 'header-region', { kind: 'host', hostOffset: hostAt(at) });
          at = end;
        }
        if (addressable > underHeader) {
          const end = Math.min(to, from + addressable * C);
          this.sink.extent({ kind: 'data', guestOffset: at, length: end - at, hostOffset: hostAt(at) });
          this.dataPlanned = true;
          this.stats.clustersKept += addressable - underHeader;
          at = end;
        }
        if (at < to) this.relocate(at, to - at, 'beyond-addressable', { kind: 'host', hostOffset: hostAt(at) });
        return;
      }
      default:
        throw new IcError('UNSUPPORTED', `${extent.kind} data at guest offset ${from} cannot be kept in place`);
    }
  }

  private keepsHoles(): boolean {
    return this.options.holesAsData === true && this.options.zeroHostRangesReadAsZero === true && this.placement === 'anywhere';
  }

  /** A zero run whose host range reads as zeros (a hole of the source file). */
  private readsZeroAtHost(extent: Extent): extent is Extent & { kind: 'zero'; hostOffset: number } {
    return extent.kind === 'zero' && this.options.zeroHostRangesReadAsZero === true && extent.hostOffset !== undefined;
  }

  /**
   * holesAsData: the whole clusters of a hole run that can stay (aligned, past the header region, addressable) are
   * kept as data; the clusters before and after that stretch become empty.
   */
  private keepHoleRun(extent: Extent & { hostOffset: number }, from: number, to: number): void {
    const C = this.clusterSize;
    const { maxHostOffset } = this.options.layout;
    const hostFrom = extent.hostOffset + (from - extent.guestOffset);
    if (hostFrom % this.alignment !== 0) {
      this.emitEmpty('zero', from, to - from);
      return;
    }
    const clusters = this.clustersIn(to - from);
    const skip = Math.min(clusters, Math.max(0, Math.ceil((this.minHost - hostFrom) / C)));
    const fits = Math.max(skip, Math.min(clusters, Math.floor((maxHostOffset - hostFrom) / C)));
    const keepFrom = Math.min(to, from + skip * C);
    const keepTo = Math.min(to, from + fits * C);
    if (keepFrom > from) this.emitEmpty('zero', from, keepFrom - from);
    if (keepTo > keepFrom) {
      this.keep(keepFrom, keepTo - keepFrom, hostFrom + (keepFrom - from));
      this.holeClustersKept += this.clustersIn(keepTo - keepFrom);
    }
    if (to > keepTo) this.emitEmpty('zero', keepTo, to - keepTo);
  }

  /** A zero run that is a hole of the source at its own guest offset (a raw file's): it reads as zeros there already. */
  private readsZeroInPlace(extent: Extent, guest: number): boolean {
    return extent.kind === 'zero' && this.options.zeroHostRangesReadAsZero === true && extent.hostOffset !== undefined && extent.hostOffset + (guest - extent.guestOffset) === guest;
  }

  private keep(guestOffset: number, length: number, hostOffset: number): void {
    this.sink.extent({ kind: 'data', guestOffset, length, hostOffset });
    this.dataPlanned = true;
    this.stats.clustersKept += this.clustersIn(length);
  }

  /**
   * Packed and prefixed placements: cluster by cluster (the target decides which may stay), in runs of one
   * decision. `hostFrom` is aligned.
   */
  private planEachCluster(from: number, to: number, hostFrom: number): void {
    const C = this.clusterSize;
    const { maxHostOffset } = this.options.layout;
    let runStart = from;
    let runReason: RelocationReason | 'kept' | undefined;
    const flush = (end: number) => {
      if (runReason === undefined || end <= runStart) return;
      const host = hostFrom + (runStart - from);
      if (runReason === 'kept') this.keep(runStart, end - runStart, host);
      else this.relocate(runStart, end - runStart, runReason, { kind: 'host', hostOffset: host });
    };
    for (let guest = from; guest < to; guest += C) {
      const host = hostFrom + (guest - from);
      const reason: RelocationReason | 'kept' =
        host < this.minHost ? 'header-region' : host + C > maxHostOffset ? 'beyond-addressable' : this.sink.keeps?.(guest, host) === false ? 'placement' : 'kept';
      // Kept clusters of a prefixed target are never contiguous; runs of one decision still are for the others.
      if (reason !== runReason || (reason === 'kept' && this.placement === 'prefixed')) {
        flush(guest);
        runStart = guest;
        runReason = reason;
      }
    }
    flush(to);
  }

  private relocate(guestOffset: number, length: number, reason: RelocationReason, source: RelocationSource): void {
    for (let done = 0; done < length; ) {
      const placed = this.sink.place(length - done, guestOffset + done);
      const granted = Math.min(length - done, placed.length);
      if (!(granted > 0) || (granted < length - done && granted % this.clusterSize !== 0)) {
        throw new IcError('INTERNAL', `plan: ${placed.length} bytes granted for ${length - done} relocated bytes at guest ${guestOffset + done}`);
      }
      const piece: Relocation = { guestOffset: guestOffset + done, length: granted, hostOffset: placed.hostOffset, reason, source: sliceSource(source, done) };
      if (placed.copyTo !== undefined) piece.copyTo = placed.copyTo;
      this.sink.relocation?.(piece);
      this.sink.extent({ kind: 'data', guestOffset: piece.guestOffset, length: granted, hostOffset: placed.hostOffset });
      this.dataPlanned = true;
      done += granted;
    }
    this.stats.clustersRelocated += this.clustersIn(length);
    this.stats.bytesRelocated += length;
  }

  private emitEmpty(kind: 'zero' | 'unallocated', guestOffset: number, length: number): void {
    const { virtualSize, layout } = this.options;
    if (layout.needsDataCluster && !this.dataPlanned && length > 0 && guestOffset + length === virtualSize) {
      // Nothing holds data and the target's check needs a data cluster: the disk's last cluster is stored as zeros.
      const last = Math.floor((virtualSize - 1) / this.clusterSize) * this.clusterSize;
      if (last > guestOffset) this.emitEmpty(kind, guestOffset, last - guestOffset);
      this.relocate(last, virtualSize - last, 'zero-fill', { kind: 'zero' });
      return;
    }
    if (this.options.zeroAsUnallocated) kind = 'unallocated';
    if (kind === 'zero' && !this.options.layout.zeroExtents) {
      if (this.options.hasBacking) {
        // The target cannot say "zero, hide the backing file": store real zeros.
        this.relocate(guestOffset, length, 'zero-fill', { kind: 'zero' });
        return;
      }
      kind = 'unallocated'; // without a backing file both read as zeros
    }
    this.sink.extent({ kind, guestOffset, length });
    if (kind === 'zero') this.stats.zeroClusters += this.clustersIn(length);
    else this.stats.unallocatedClusters += this.clustersIn(length);
  }

  /** One target cluster shared by several source extents (the target's clusters are larger than the source's). */
  private planShared(guest: number, clusterEnd: number): void {
    let hasData = false;
    let hasZero = false;
    let hasUnallocated = false;
    const inCluster: Extent[] = [];
    for (const extent of this.pending) {
      if (extent.guestOffset >= clusterEnd) break;
      if (extent.guestOffset + extent.length <= guest) continue;
      inCluster.push(extent);
      if (extent.kind === 'data') hasData = true;
      else if (extent.kind === 'zero') hasZero = true;
      else if (extent.kind === 'unallocated') hasUnallocated = true;
      else throw new IcError('UNSUPPORTED', `${extent.kind} data at guest offset ${extent.guestOffset} cannot be kept in place`);
    }
    if (hasUnallocated && this.options.hasBacking && (hasData || hasZero)) {
      throw new IcError(
        'UNSUPPORTED',
        `target cluster at guest offset ${guest} would mix backing-file content with this image's data; choose a target cluster size equal to the source's (${this.clusterSize} was used)`,
      );
    }
    if (hasData && this.options.zeroHostRangesReadAsZero && this.keepMixed(inCluster, guest, clusterEnd)) return;
    if (!hasData && hasZero && this.keepsHoles() && this.keepMixed(inCluster, guest, clusterEnd)) {
      this.holeClustersKept++;
      return;
    }
    if (!hasData) {
      if (this.placement === 'identity') {
        for (const extent of inCluster) {
          const from = Math.max(guest, extent.guestOffset);
          if (!this.readsZeroInPlace(extent, from)) this.sink.zeroInPlace?.(from, Math.min(clusterEnd, extent.guestOffset + extent.length) - from);
        }
      }
      this.emitEmpty(hasZero && !hasUnallocated ? 'zero' : 'unallocated', guest, clusterEnd - guest);
      return;
    }
    const pieces = inCluster.map((extent) => {
      const from = Math.max(guest, extent.guestOffset);
      const to = Math.min(clusterEnd, extent.guestOffset + extent.length);
      return extent.kind === 'data'
        ? { guestOffset: from, length: to - from, hostOffset: extent.hostOffset + (from - extent.guestOffset) }
        : { guestOffset: from, length: to - from };
    });
    this.relocate(guest, clusterEnd - guest, 'mixed-content', { kind: 'pieces', pieces });
  }

  /** A cluster of data and zero-reading host holes that form one aligned host run is kept as data. */
  private keepMixed(inCluster: readonly Extent[], guest: number, clusterEnd: number): boolean {
    let expectedHost: number | undefined;
    for (const extent of inCluster) {
      const host = 'hostOffset' in extent ? extent.hostOffset : undefined;
      if (host === undefined || (extent.kind !== 'data' && extent.kind !== 'zero')) return false;
      const at = host + (Math.max(guest, extent.guestOffset) - extent.guestOffset);
      if (expectedHost !== undefined && at !== expectedHost) return false;
      expectedHost = at + (Math.min(clusterEnd, extent.guestOffset + extent.length) - Math.max(guest, extent.guestOffset));
    }
    const hostOffset = expectedHost! - (clusterEnd - guest);
    const { maxHostOffset } = this.options.layout;
    const stays =
      this.placement === 'identity'
        ? hostOffset === guest && clusterEnd <= maxHostOffset
        : hostOffset % this.alignment === 0 &&
          hostOffset >= this.minHost &&
          hostOffset + this.clusterSize <= maxHostOffset &&
          (this.placement === 'anywhere' || this.sink.keeps?.(guest, hostOffset) !== false);
    if (!stays) return false;
    this.keep(guest, clusterEnd - guest, hostOffset);
    return true;
  }
}

/** The part of a relocation's source from `skip` guest bytes on. */
function sliceSource(source: RelocationSource, skip: number): RelocationSource {
  if (skip === 0 || source.kind === 'zero') return source;
  if (source.kind === 'host') return { kind: 'host', hostOffset: source.hostOffset + skip };
  // Pieces describe one target cluster, which is never split.
  throw new IcError('INTERNAL', 'plan: a mixed cluster was split');
}

/** A whole plan in memory: for tests, dry runs of small images and writeImage. */
export interface Plan {
  /** The target's mapping: data, zero and unallocated extents, cluster-aligned, merged, covering the disk. */
  mapping: Extent[];
  relocations: Relocation[];
  stats: PlanStats;
}

export interface PlanInput extends PlannerOptions {
  /** The source map, covering [0, virtualSize). */
  extents: readonly Extent[];
  /** Space for relocated clusters. */
  space: SpaceAllocator;
}

/** Plans a source map held in memory (see MappingPlanner). */
export function planMapping(input: PlanInput): Plan {
  const mapping: Extent[] = [];
  const relocations: Relocation[] = [];
  const clusterSize = input.layout.clusterSize;
  const planner = new MappingPlanner(input, {
    place: (length) => ({ hostOffset: input.space.allocate(Math.ceil(length / clusterSize) * clusterSize, clusterSize), length }),
    relocation: (relocation) => relocations.push(relocation),
    extent: (extent) => pushExtent(mapping, extent),
  });
  for (const extent of input.extents) planner.push(extent);
  return { mapping, relocations, stats: planner.finish() };
}
