/**
 * @ic/core — the engine: the driver registry, option parsing, in-place conversion, recovery, compaction,
 * writeImage and in-memory stores. It re-exports the driver SDK (@ic/core/sdk) so that library users need
 * one import; file I/O and locks are in @ic/core/node. Browser-safe.
 */
export * from './sdk/index.js';
export { AppendAllocator } from './engine/allocator.js';
export { writeImage, type ImageContent } from './engine/build-image.js';
export { compactImage, planCompaction, type CompactionReport, type CompactionMove } from './engine/compact.js';
export { type ConversionPhase, type ProgressEvent, type ConvertInPlaceRequest, type ConversionReport } from './engine/convert-types.js';
export { SECTOR_SIZE, chooseGeometry, convertInPlace, type GeometryChoice } from './engine/convert.js';
export { referencedRanges, zeroStaleHeaderBytes } from './engine/host-ranges.js';
export {
  TRAILER_SIZE,
  TRANSITIONAL_MAGIC,
  intentBlockLength,
  encodeIntent,
  readIntent,
  identityDigest,
  transitionalSector,
  isTransitionalSector,
  inspectInterrupted,
  recover,
  rollBack,
  type IntentRecord,
  type FoundIntent,
  type InterruptedState,
  type RecoveryResult,
  type RecoverOptions,
} from './engine/intent.js';
export { MemoryIO, CountingIO, type IoStats } from './engine/memory-io.js';
export { parseSize, parseOptions } from './engine/options.js';
export { planMapping, type Relocation, type PlanStats, type Plan, type PlanInput } from './engine/planner.js';
export { PROBE_LENGTH, Registry, type ProbeResult } from './engine/registry.js';
