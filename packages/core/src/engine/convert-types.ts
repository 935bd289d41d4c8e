import type { Driver, OpenOptions, OptionValues } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';
import type { IoStats } from './memory-io.js';
import type { ReleaseReport } from './release.js';

export type ConversionPhase = 'validate' | 'plan' | 'relocate' | 'build' | 'commit' | 'verify' | 'cleanup' | 'pack';

export interface ProgressEvent {
  phase: ConversionPhase;
  /** Work done and total in this phase, in bytes or items; total 0 means "no measure". */
  done: number;
  total: number;
}

export interface ConvertInPlaceRequest {
  /** The image file, opened writable (read-only is enough for a dry run). */
  io: BlockIO;
  /** Driver of the image's current format. */
  source: Driver;
  /** Driver of the format to convert to. */
  target: Driver;
  /** -o options for the target, validated against target.options. */
  targetOptions?: OptionValues;
  /** Plan and report without writing anything. */
  dryRun?: boolean;
  /** Options for opening the source (untrusted mode, decompressor, backing image for relocations). */
  openOptions?: OpenOptions;
  onProgress?: (event: ProgressEvent) => void;
  /**
   * Stops the conversion at its next safe point: before the commit the file is put back as it was (the error
   * says so); after it, the new image is left valid and the error (code INTERRUPTED, with IcError.imageFormat)
   * names the format it is in.
   */
  signal?: AbortSignal;
  /**
   * Write through a store that is not exclusive (BlockIO.exclusive is not true: QEMU's locks could not be
   * taken). Another process may then use the image while it is rewritten; only for callers that know none will.
   */
  allowUnlocked?: boolean;
  /**
   * After the switch, pack the file so that no cluster is left unreferenced, for targets whose format counts
   * those as leaks (TargetLayout.unreferencedClustersLeak): 'auto' (default) packs when the moves cost no more
   * than twice the metadata the conversion reads and writes (the report says what was left and why otherwise),
   * 'always', or 'never'. A dry run reports what packing would cost.
   */
  compact?: 'auto' | 'always' | 'never';
  /**
   * Read every data cluster and plan the all-zero ones as unallocated (zero clusters over a backing file).
   * Costs a read of all the data, so it is off unless asked for; holes the file system reports are found
   * without it.
   */
  zeroScan?: boolean;
  /**
   * After the commit, give the file system back the space the new image does not reference (old places of
   * relocated clusters, the source's old tables): file-system holes where the store can punch them, and the
   * unreferenced tail cut. Default true.
   */
  release?: boolean;
}

/** What a conversion did, or would do (dry run). Also the JSON of `ic convert-inplace --output=json`. */
export interface ConversionReport {
  sourceFormat: string;
  targetFormat: string;
  dryRun: boolean;
  virtualSize: number;
  sourceClusterSize: number;
  targetClusterSize: number;
  /** Why the target cluster size was chosen. */
  geometryReason: string;
  /** Target clusters whose data stays where it is. */
  clustersKept: number;
  /** Target clusters whose data is copied to new space before the commit. */
  clustersRelocated: number;
  bytesRelocated: number;
  zeroClusters: number;
  unallocatedClusters: number;
  /** Bytes of target metadata written outside the header region. */
  metadataBytes: number;
  /** Bytes written at offset 0 by the commit. */
  headerBytes: number;
  fileSizeBefore: number;
  fileSizeAfter: number;
  /** Measured (a dry run reports 0). */
  io: IoStats;
  durationMs: number;
  /**
   * How the header was switched: one sector; the region's tail first and sector 0 last; or, when the tail
   * overwrites bytes the source still uses, a transitional marker in sector 0 first (`ic recover` finishes it).
   */
  commit: 'single-sector' | 'tail-then-sector-0' | 'transitional' | 'none';
  verified: boolean;
  /** What packing the file did (absent when the target has nothing to pack or packing was off). */
  compaction?: {
    done: boolean;
    unitsMoved: number;
    bytesMoved: number;
    bytesPlanned: number;
    /** Unreferenced clusters left in the file (qemu-img check's leaks); 0 when done. */
    leaksLeft: number;
    /**
     * Clusters of the source's holes (a sparse raw file's: they read as zeros where they are) that the new image
     * references as data clusters, in place, because packing them away would have moved too much data. They
     * read as zeros; `qemu-img map` shows them as data that reads as zeros instead of holes. Absent otherwise.
     */
    holesKept?: number;
    reason: string;
  };
  /**
   * What the release step gave back after the commit (a dry run: its estimate). Absent when turned off
   * (ConvertInPlaceRequest.release false).
   */
  release?: ReleaseReport;
  /** Bytes the engine reserved past the source's end before building (relocations + the target's estimate). */
  spaceReserved: number;
}

export type { Driver, BlockIO };
