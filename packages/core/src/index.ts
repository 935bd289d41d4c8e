/**
 * @ic/core — the engine: the driver registry, option parsing, in-place conversion, recovery, packing,
 * writeImage and in-memory stores. It re-exports the driver SDK (@ic/core/sdk) so that library users need
 * one import; file I/O and locks are in @ic/core/node. Browser-safe.
 */
export * from './sdk/index.js';
export { AppendAllocator, SpaceCursor } from './engine/allocator.js';
export { writeImage, type ImageContent } from './engine/build-image.js';
export { type ConversionPhase, type ProgressEvent, type ConvertInPlaceRequest, type ConversionReport } from './engine/convert-types.js';
export { SECTOR_SIZE, convertInPlace } from './engine/convert.js';
export { candidateClusterSizes, chooseGeometry, type GeometryChoice } from './engine/geometry.js';
export {
  TRAILER_SIZE,
  TRANSITIONAL_MAGIC,
  MAX_HEAD_LENGTH,
  recordBlock,
  encodeRecordStart,
  readIntent,
  readLog,
  identityDigest,
  transitionalSector,
  isTransitionalSector,
  inspectInterrupted,
  rollBack,
  type IntentRecord,
  type FoundIntent,
  type InterruptedState,
  type RecordBlock,
  type PackMode,
} from './engine/intent.js';
export { MemoryIO, CountingIO, type IoStats } from './engine/memory-io.js';
export { parseSize, parseOptions } from './engine/options.js';
export { packImage, type PackOptions, type PackReport } from './engine/pack.js';
export {
  compactImage,
  defragImage,
  fragmentationLine,
  measureFragmentation,
  MOVER_LOG_ENTRIES,
  type CompactOptions,
  type CompactReport,
  type DefragOptions,
  type DefragReport,
  type Fragmentation,
} from './engine/mover.js';
export { MappingPlanner, planMapping, type Relocation, type RelocationReason, type PlanStats, type Plan, type PlanInput } from './engine/planner.js';
export { recover, type RecoveryResult, type RecoverOptions } from './engine/recover.js';
export { convertToIdentity, type IdentityOptions, type IdentityReport } from './engine/to-identity.js';
export { releaseUnreferenced, estimateRelease, RELEASE_GRANULE, RELEASE_LONG_RUN, RELEASE_SHORT_RUNS, type ReleaseReport, type ReleaseOptions } from './engine/release.js';
export { PROBE_LENGTH, Registry, type ProbeResult } from './engine/registry.js';
