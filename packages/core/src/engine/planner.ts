import { IcError } from '../sdk/index.js';
import { pushExtent, type Extent } from '../sdk/index.js';
import type { SpaceAllocator, TargetLayout } from '../sdk/index.js';

/** A target cluster whose guest content is copied to new host space before the commit. */
export interface Relocation {
  guestOffset: number;
  /** Guest bytes in the cluster (less than the cluster size only for the last, partial cluster). */
  length: number;
  /** New host offset (cluster-aligned, a whole cluster reserved). */
  hostOffset: number;
  /** Why it cannot stay: for plans and messages. */
  reason: 'header-region' | 'misaligned' | 'beyond-addressable' | 'mixed-content' | 'zero-fill';
}

export interface PlanStats {
  clustersKept: number;
  clustersRelocated: number;
  bytesRelocated: number;
  zeroClusters: number;
  unallocatedClusters: number;
}

export interface Plan {
  /** The target's mapping: data, zero and unallocated extents, cluster-aligned, merged, covering the disk. */
  mapping: Extent[];
  relocations: Relocation[];
  stats: PlanStats;
}

export interface PlanInput {
  /** The source map, merged, covering [0, virtualSize). */
  extents: readonly Extent[];
  virtualSize: number;
  layout: TargetLayout;
  /** The source has a backing file: unallocated and zero differ. */
  hasBacking: boolean;
  /** Space for relocated clusters. */
  space: SpaceAllocator;
  /** Zero extents with a hostOffset read as zeros there (raw holes): they may share a kept cluster with data. */
  zeroHostRangesReadAsZero?: boolean;
  /** The source declares no zero extents (and has no backing file): its zero runs become unallocated. */
  zeroAsUnallocated?: boolean;
}

const emptyStats = (): PlanStats => ({ clustersKept: 0, clustersRelocated: 0, bytesRelocated: 0, zeroClusters: 0, unallocatedClusters: 0 });

/**
 * Decides, for every target cluster, whether its data stays where it is, moves, or becomes a zero or
 * unallocated cluster. A data cluster stays only when its guest bytes are one host run starting on a
 * target-cluster boundary, outside the target's header region and inside its addressable range.
 */
export function planMapping(input: PlanInput): Plan {
  const { extents, virtualSize, layout, hasBacking, space } = input;
  const clusterSize = layout.clusterSize;
  const mapping: Extent[] = [];
  const relocations: Relocation[] = [];
  const stats = emptyStats();
  const clustersIn = (length: number) => Math.ceil(length / clusterSize);

  const relocate = (guestOffset: number, length: number, reason: Relocation['reason']) => {
    const hostOffset = space.allocate(clusterSize, clusterSize);
    relocations.push({ guestOffset, length, hostOffset, reason });
    pushExtent(mapping, { kind: 'data', guestOffset, length, hostOffset });
    stats.clustersRelocated++;
    stats.bytesRelocated += length;
  };

  const emitEmpty = (kind: 'zero' | 'unallocated', guestOffset: number, length: number) => {
    if (input.zeroAsUnallocated) kind = 'unallocated';
    if (kind === 'zero' && !layout.zeroExtents) {
      if (hasBacking) {
        // The target cannot say "zero, hide the backing file": store real zeros, cluster by cluster.
        for (let at = guestOffset; at < guestOffset + length; at += clusterSize) {
          relocate(at, Math.min(clusterSize, guestOffset + length - at), 'zero-fill');
        }
        return;
      }
      kind = 'unallocated'; // without a backing file both read as zeros
    }
    pushExtent(mapping, { kind, guestOffset, length });
    if (kind === 'zero') stats.zeroClusters += clustersIn(length);
    else stats.unallocatedClusters += clustersIn(length);
  };

  /** A cluster of data and zero-reading host holes that form one aligned host run is kept as data. */
  const keepMixed = (from: number, guest: number, clusterEnd: number): boolean => {
    let expectedHost: number | undefined;
    for (let i = from; i < extents.length && extents[i]!.guestOffset < clusterEnd; i++) {
      const extent = extents[i]!;
      const host = 'hostOffset' in extent ? extent.hostOffset : undefined;
      if (host === undefined || (extent.kind !== 'data' && extent.kind !== 'zero')) return false;
      const at = host + (Math.max(guest, extent.guestOffset) - extent.guestOffset);
      if (expectedHost !== undefined && at !== expectedHost) return false;
      expectedHost = at + (Math.min(clusterEnd, extent.guestOffset + extent.length) - Math.max(guest, extent.guestOffset));
    }
    const hostOffset = expectedHost! - (clusterEnd - guest);
    if (hostOffset % clusterSize !== 0 || hostOffset < layout.headerRegionSize || hostOffset + clusterSize > layout.maxHostOffset) return false;
    pushExtent(mapping, { kind: 'data', guestOffset: guest, length: clusterEnd - guest, hostOffset });
    stats.clustersKept++;
    return true;
  };

  let index = 0; // first extent that may overlap the current cluster
  let guest = 0;
  while (guest < virtualSize) {
    while (index < extents.length && extents[index]!.guestOffset + extents[index]!.length <= guest) index++;
    const first = extents[index];
    if (!first || first.guestOffset > guest) throw new IcError('INTERNAL', `plan: source map has no extent at guest ${guest}`);
    const clusterEnd = Math.min(guest + clusterSize, virtualSize);
    const firstEnd = first.guestOffset + first.length;

    if (firstEnd >= clusterEnd) {
      // One source extent covers the whole cluster.
      if (first.kind === 'unallocated' || first.kind === 'zero') {
        // Take every whole cluster this extent covers in one step (and the partial last one at the disk's end).
        const runEnd = firstEnd >= virtualSize ? virtualSize : guest + Math.floor((firstEnd - guest) / clusterSize) * clusterSize;
        emitEmpty(first.kind, guest, runEnd - guest);
        guest = runEnd;
        continue;
      }
      if (first.kind === 'data') {
        const hostOffset = first.hostOffset + (guest - first.guestOffset);
        const reason =
          hostOffset % clusterSize !== 0
            ? 'misaligned'
            : hostOffset < layout.headerRegionSize
              ? 'header-region'
              : hostOffset + clusterSize > layout.maxHostOffset
                ? 'beyond-addressable'
                : undefined;
        if (reason) relocate(guest, clusterEnd - guest, reason);
        else {
          pushExtent(mapping, { kind: 'data', guestOffset: guest, length: clusterEnd - guest, hostOffset });
          stats.clustersKept++;
        }
        guest = clusterEnd;
        continue;
      }
      throw new IcError('UNSUPPORTED', `${first.kind} data at guest offset ${guest} cannot be kept in place`);
    }

    // Several source extents share this target cluster (the target's clusters are larger than the source's).
    let hasData = false;
    let hasZero = false;
    let hasUnallocated = false;
    for (let i = index; i < extents.length && extents[i]!.guestOffset < clusterEnd; i++) {
      const kind = extents[i]!.kind;
      if (kind === 'data') hasData = true;
      else if (kind === 'zero') hasZero = true;
      else if (kind === 'unallocated') hasUnallocated = true;
      else throw new IcError('UNSUPPORTED', `${kind} data at guest offset ${extents[i]!.guestOffset} cannot be kept in place`);
    }
    if (hasUnallocated && hasBacking && (hasData || hasZero)) {
      throw new IcError(
        'UNSUPPORTED',
        `target cluster at guest offset ${guest} would mix backing-file content with this image's data; choose a target cluster size equal to the source's (${clusterSize} was used)`,
      );
    }
    if (hasData && input.zeroHostRangesReadAsZero && keepMixed(index, guest, clusterEnd)) {
      guest = clusterEnd;
      continue;
    }
    if (hasData) relocate(guest, clusterEnd - guest, 'mixed-content');
    else emitEmpty(hasZero && !hasUnallocated ? 'zero' : 'unallocated', guest, clusterEnd - guest);
    guest = clusterEnd;
  }
  return { mapping, relocations, stats };
}
