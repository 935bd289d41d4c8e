import { alignUp, IcError, isIcError, isPowerOfTwo, type Extent, type InPlaceTarget, type InPlaceTargetFactory, type OptionValues, type PlanSummary } from '../sdk/index.js';
import type { HostOccupancy } from './occupancy.js';
import { PlacementSurvey, type PlacementDecision } from './placement.js';
import { MappingPlanner, type PlannerOptions, type PlanStats } from './planner.js';

export interface GeometryChoice {
  clusterSize: number;
  reason: string;
}

/**
 * The smallest size planned below a large source cluster size: the common default of qcow2 and QED. A source
 * with large blocks at unaligned offsets (VDI's 1 MiB blocks at offset_data + k MiB, or blocks an in-place
 * conversion packed) keeps them all at 64 KiB, where two steps down from 1 MiB would still move them.
 */
export const SMALLEST_WIDE_CANDIDATE = 64 * 1024;

/**
 * The target cluster sizes worth planning: the user's, or the source's (clamped) and two steps either side, and
 * down to SMALLEST_WIDE_CANDIDATE when the source's is larger.
 */
export function candidateClusterSizes(factory: InPlaceTargetFactory, sourceClusterSize: number, options: OptionValues): number[] {
  const { min, max } = factory.clusterSizes;
  const requested = factory.clusterSizeOption ? options[factory.clusterSizeOption] : undefined;
  if (typeof requested === 'number') {
    if (!isPowerOfTwo(requested) || requested < min || requested > max) {
      throw new IcError('INVALID', `${factory.clusterSizeOption}=${requested} is not a power of two in [${min}, ${max}]`);
    }
    return [requested];
  }
  const clamped = Math.min(max, Math.max(min, 2 ** Math.round(Math.log2(Math.max(1, sourceClusterSize)))));
  const sizes = new Set<number>([clamped]);
  for (let size = Math.min(clamped / 4, SMALLEST_WIDE_CANDIDATE); size <= clamped * 4; size *= 2) if (size >= min && size <= max && isPowerOfTwo(size)) sizes.add(size);
  return [...sizes].sort((a, b) => a - b);
}

/**
 * One candidate geometry planned in count mode while the source map streams past once: no space is allocated
 * and nothing is kept but counters, so several candidates cost one read of the source's metadata.
 */
export class GeometryCandidate {
  readonly planner: MappingPlanner | undefined;
  /** Why this geometry cannot be used (a target problem, or a plan the target refuses). */
  failure: IcError | undefined;
  private dataClusters = 0;
  private zeroClusters = 0;
  private tablesUsed = 0;
  private lastTable = -1;
  private keptDataEnd = 0;
  /** Host bytes the relocations take past the source (a prefixed block takes its prefix too). */
  private relocated = 0;
  private relocatedClusters = 0;
  /** Bytes relocated for another reason than lying under the new header region. */
  relocatedElsewhere = 0;
  /** Placements other than 'anywhere': what the build needs to know. */
  readonly placement: PlacementSurvey | undefined;
  decision: PlacementDecision | undefined;

  constructor(
    readonly clusterSize: number,
    readonly target: InPlaceTarget,
    plannerOptions: Omit<PlannerOptions, 'layout'>,
    private readonly spaceStart: number,
  ) {
    const layout = target.layout;
    if (target.problems.length > 0) {
      this.failure = new IcError('UNSUPPORTED', target.problems[0]!);
      return;
    }
    if (layout.clusterSize !== clusterSize) {
      this.failure = new IcError('INTERNAL', `the target ignored the cluster size ${clusterSize} (its layout says ${layout.clusterSize})`);
      return;
    }
    const kind = layout.placement?.kind ?? 'anywhere';
    const placement = kind === 'anywhere' ? undefined : new PlacementSurvey(layout, plannerOptions.virtualSize);
    this.placement = placement;
    const prefix = layout.placement?.kind === 'prefixed' ? alignUp(layout.placement.prefix, layout.hostAlignment ?? clusterSize) : 0;
    try {
      this.planner = new MappingPlanner({ ...plannerOptions, layout }, {
        place: (length, guestOffset) => {
          const clusters = Math.ceil(length / clusterSize);
          this.relocatedClusters += clusters;
          if (kind === 'identity') {
            placement!.write(guestOffset, length);
            return { hostOffset: guestOffset, length };
          }
          const offset = alignUp(this.spaceStart, clusterSize) + this.relocated + prefix;
          this.relocated += clusters * (clusterSize + prefix);
          return { hostOffset: offset, length };
        },
        relocation: (relocation) => {
          if (relocation.reason !== 'header-region') this.relocatedElsewhere += relocation.length;
        },
        extent: (extent) => this.count(extent),
        // The survey keeps every cluster that may stay; which ones do is decided once all are known.
        keeps: (guestOffset, hostOffset) => {
          placement?.candidate(guestOffset, hostOffset);
          return true;
        },
        zeroInPlace: (guestOffset, length) => placement?.write(guestOffset, length),
      });
    } catch (error) {
      this.failure = isIcError(error) ? error : new IcError('INTERNAL', String(error));
    }
  }

  private count(extent: Extent): void {
    const C = this.clusterSize;
    const clusters = Math.ceil(extent.length / C);
    if (extent.kind === 'unallocated') return;
    if (extent.kind === 'data') {
      this.dataClusters += clusters;
      if (extent.hostOffset < this.spaceStart) this.keptDataEnd = Math.max(this.keptDataEnd, extent.hostOffset + clusters * C);
    } else this.zeroClusters += clusters;
    const coverage = this.target.layout.tableCoverage;
    if (coverage) {
      const first = Math.floor(extent.guestOffset / coverage);
      const last = Math.floor((extent.guestOffset + extent.length - 1) / coverage);
      this.tablesUsed += last - first + 1 - (first === this.lastTable ? 1 : 0);
      this.lastTable = last;
    }
  }

  push(extent: Extent): void {
    if (this.failure || !this.planner) return;
    try {
      this.planner.push(extent);
    } catch (error) {
      this.fail(error);
    }
  }

  /**
   * Ends the plan, once every host range of the source is known: a placement decides which of its candidates stay
   * (the others are counted as moved), identity checks its writes land on free bytes.
   */
  finish(occupancy: HostOccupancy, fileSizeBefore: number): PlanStats | undefined {
    if (this.failure || !this.planner) return undefined;
    try {
      const stats = this.planner.finish();
      const placement = this.placement;
      if (!placement) return stats;
      if (placement.kind === 'identity') {
        const { headerOffset = 0, headerRegionSize } = this.target.layout;
        placement.write(headerOffset, headerRegionSize);
        placement.checkWrites(occupancy, fileSizeBefore, (reason) => new IcError('UNSUPPORTED', reason));
        this.decision = placement.resolve(this.dataClusters);
        return stats;
      }
      const decision = placement.resolve(this.dataClusters);
      this.decision = decision;
      // Candidates that do not stay move (the survey counted them as kept).
      const demoted = placement.count - decision.keptCount;
      const prefix = this.target.layout.placement?.kind === 'prefixed' ? alignUp(this.target.layout.placement.prefix, this.target.layout.hostAlignment ?? this.clusterSize) : 0;
      stats.clustersKept -= demoted;
      stats.clustersRelocated += demoted;
      stats.bytesRelocated += decision.demotedBytes;
      this.relocatedElsewhere += decision.demotedBytes;
      this.relocatedClusters += demoted;
      if (this.target.layout.placement?.kind === 'prefixed') this.relocated += demoted * (this.clusterSize + prefix);
      return stats;
    } catch (error) {
      this.fail(error);
      return undefined;
    }
  }

  /** Host bytes past the source that relocations take (packed and identity targets move clusters into the image). */
  get relocationSpace(): number {
    return this.relocated;
  }

  /** Deferred writes the build may record at most: one per moved cluster (packed), one per kept block (prefixed). */
  get deferredBound(): { ops: number; sectors: number } {
    const placement = this.target.layout.placement;
    if (placement?.kind === 'packed') return { ops: this.relocatedClusters, sectors: 0 };
    if (placement?.kind === 'prefixed') return { ops: this.decision?.keptCount ?? 0, sectors: (this.decision?.keptCount ?? 0) * Math.ceil(placement.prefix / 512) };
    return { ops: 0, sectors: 0 };
  }

  private fail(error: unknown): void {
    if (isIcError(error) && (error.code === 'UNSUPPORTED' || error.code === 'LIMIT')) this.failure = error;
    else throw error;
  }

  summary(virtualSize: number): PlanSummary {
    return {
      virtualSize,
      clusterSize: this.clusterSize,
      dataClusters: this.dataClusters,
      zeroClusters: this.zeroClusters,
      relocatedClusters: this.relocatedClusters,
      tablesUsed: this.tablesUsed,
      spaceStart: alignUp(this.spaceStart, this.clusterSize),
      keptDataEnd: this.keptDataEnd,
    };
  }
}

/** What a finished candidate costs. */
export interface CandidateCost {
  candidate: GeometryCandidate;
  stats: PlanStats;
  metadataBytes: number;
  /** Bytes of I/O the conversion needs with this geometry: relocated data is read and written, metadata written. */
  ioBytes: number;
}

/** Another cluster size than the source's must save at least this much I/O, and at least half of it. */
export const GEOMETRY_CHANGE_MIN_SAVING = 1024 * 1024;

/**
 * Picks the geometry: the user's -o value when given; the source's own cluster size when it keeps every data
 * cluster but those under the new header region in place; otherwise the candidate with the fewest bytes of I/O
 * (relocations count twice, metadata once), ties going to the size nearest the source's. A cluster size other
 * than the source's changes the image for its whole life (metadata overhead, the guest's I/O pattern), so even
 * then it is chosen only when it moves fewer bytes than the source's size does, saves at least half the I/O and
 * at least GEOMETRY_CHANGE_MIN_SAVING bytes. Metadata alone never changes the geometry: the target's tables cost
 * more at a large cluster size on a small disk, but that is the overhead the source's cluster size already
 * chose, and a round trip through a target that had to move a block must still come back at the source's size.
 */
export function chooseGeometry(costs: readonly CandidateCost[], sourceClusterSize: number, requested: boolean): GeometryChoice {
  if (costs.length === 0) throw new IcError('INTERNAL', 'no geometry was planned');
  const describe = (cost: CandidateCost) =>
    `${cost.candidate.clusterSize}: ${cost.stats.bytesRelocated} bytes moved, ${cost.metadataBytes} bytes of metadata`;
  if (requested) return { clusterSize: costs[0]!.candidate.clusterSize, reason: `requested with -o (${describe(costs[0]!)})` };
  const own = costs.find((cost) => cost.candidate.clusterSize === sourceClusterSize);
  const distance = (size: number) => Math.abs(Math.log2(size / sourceClusterSize));
  const worthChanging = (cost: CandidateCost) =>
    !own ||
    (own.candidate.relocatedElsewhere > 0 &&
      cost.stats.bytesRelocated < own.stats.bytesRelocated &&
      cost.ioBytes * 2 <= own.ioBytes &&
      own.ioBytes - cost.ioBytes >= GEOMETRY_CHANGE_MIN_SAVING);
  const cheapest = costs
    .filter((cost) => cost !== own && worthChanging(cost))
    .sort((a, b) => a.ioBytes - b.ioBytes || distance(a.candidate.clusterSize) - distance(b.candidate.clusterSize))[0];
  const best = cheapest ?? own!;
  if (own && best === own && own.candidate.relocatedElsewhere === 0) {
    const moved = own.stats.bytesRelocated > 0 ? `only the ${own.stats.bytesRelocated} bytes under the new header move` : 'every data cluster stays in place';
    return { clusterSize: sourceClusterSize, reason: `the source's cluster size; ${moved} (${own.metadataBytes} bytes of metadata)` };
  }
  const others = costs.filter((cost) => cost !== best).map(describe);
  const reason =
    best.candidate.clusterSize === sourceClusterSize
      ? `the source's cluster size (${describe(best)})`
      : `the least I/O (${describe(best)}${others.length > 0 ? `; ${others.join('; ')}` : ''}); the source uses ${sourceClusterSize}`;
  return { clusterSize: best.candidate.clusterSize, reason };
}
