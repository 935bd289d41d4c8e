/**
 * Crash-safety proof machinery: record an in-place operation, enumerate the states a crash can leave the
 * file in (reliability.md §2.2-2.3), classify every state (§2.4), and inject I/O errors. See
 * docs/crash-safety.md for the model, the generators, the outcomes and the measured figures.
 */
export { DroppedFlushesIO, RecordingIO, ReadOnlyView, type RecordedOp, type Recording } from './recording-io.js';
export { SparseBytes } from './sparse.js';
export { Random, deriveSeed } from './random.js';
export {
  CrashSpace,
  GENERATORS,
  GENERATOR_LABELS,
  WEAK_DEVICE_GENERATORS,
  tearBoundaries,
  type CrashState,
  type Epoch,
  type EnumerationOptions,
  type GeneratorName,
  type OpFate,
  type TraceStats,
} from './enumerate.js';
export {
  captureContent,
  compareGuestBytes,
  contentDifference,
  contentFromImageContent,
  CONTENT_WINDOW,
  type CompareOptions,
  type GuestContent,
} from './content.js';
export {
  acceptsAnyBytes,
  Classifier,
  FAILING_OUTCOMES,
  OUTCOMES,
  type Classification,
  type ClassifierOptions,
  type Outcome,
  type View,
} from './classify.js';
export {
  addCounts,
  emptyCounts,
  enumerateAndClassify,
  pristineContent,
  runCrashCampaign,
  type CampaignResult,
  type CrashCampaignOptions,
  type CrashFailure,
  type EnumerationResult,
  type GeneratorResult,
  type OutcomeCounts,
} from './campaign.js';
export { describeFault, FaultyIO, runFaultSweep, type Fault, type FaultRun, type FaultSweepOptions, type FaultSweepResult } from './faulty-io.js';
export { buildCrashSource, canBeCrashSource, crashShapes, writeImageInHostOrder, type CrashShape, type CrashSource } from './sources.js';
export { formatCampaignTable, formatTotals, generatorLegend, OUTCOME_COLUMNS, summariseCampaign, totalOutcomes, type ReportRow } from './report.js';
export { describeCrashCampaigns, expectCrashSafe, expectNoBadStates, type CrashSuiteOptions } from './suite.js';
