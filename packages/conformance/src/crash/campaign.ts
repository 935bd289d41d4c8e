import { convertInPlace, recover, type BlockIO, type ConversionReport, type MemoryIO, type OpenOptions, type OptionValues, type Registry } from '@ic/core';
import { Classifier, OUTCOMES, FAILING_OUTCOMES, type Classification, type Outcome, type View } from './classify.js';
import { captureContent, contentDifference, type GuestContent } from './content.js';
import { CrashSpace, GENERATORS, type CrashState, type GeneratorName, type TraceStats } from './enumerate.js';
import { deriveSeed } from './random.js';
import { RecordingIO, ReadOnlyView } from './recording-io.js';
import type { SparseBytes } from './sparse.js';

export type OutcomeCounts = Record<Outcome, number>;

export function emptyCounts(): OutcomeCounts {
  return Object.fromEntries(OUTCOMES.map((o) => [o, 0])) as OutcomeCounts;
}

export function addCounts(into: OutcomeCounts, from: OutcomeCounts): OutcomeCounts {
  for (const outcome of OUTCOMES) into[outcome] += from[outcome];
  return into;
}

export interface GeneratorResult {
  /** States generated (duplicates included). */
  states: number;
  /** Distinct states among them. */
  unique: number;
  outcomes: OutcomeCounts;
}

export interface CrashFailure {
  phase: 'conversion' | 'recovery';
  generator: GeneratorName;
  state: string;
  outcome: Outcome;
  detail: string;
}

export interface EnumerationResult {
  trace: TraceStats;
  generators: Partial<Record<GeneratorName, GeneratorResult>>;
  totals: OutcomeCounts;
  states: number;
  unique: number;
  /** Per epoch of the trace: pending operations and the outcomes of the states crashed in it. */
  epochs: { pending: number; outcomes: OutcomeCounts }[];
  /** What a reader that does not recover sees in the states that carry an interrupted-conversion mark. */
  beforeRecovery: Partial<Record<View, number>>;
  /** Largest leak count reported by a check of an intact state. */
  maxLeaks: number;
  failures: CrashFailure[];
}

export interface CampaignResult extends EnumerationResult {
  source: string;
  target: string;
  seed: number;
  samples: number;
  /** The recorded conversion's own report (commit kind, relocations, sizes...); absent for a custom operation. */
  conversion?: ConversionReport;
  /** Crashes inside recover() itself: each recorded recovery's crash states, classified after a second recovery. */
  recovery: {
    recordings: number;
    rolledBack: number;
    rolledForward: number;
    result?: EnumerationResult;
  };
  durationMs: number;
}

export interface CrashCampaignOptions {
  registry: Registry;
  sourceDriver: string;
  targetDriver: string;
  /** Builds the pristine source image (called once; the conversion runs on a recorded copy). */
  buildSource(): Promise<MemoryIO>;
  /** Default: every generator. */
  generators?: readonly GeneratorName[];
  /** Random states (G5) for the conversion (default 10,000). */
  samples?: number;
  seed?: number;
  /** All-subsets (G4) only for epochs with at most this many pending operations (default 12). */
  maxSubsetOps?: number;
  openOptions?: OpenOptions;
  targetOptions?: OptionValues;
  /** When given, the content read from the pristine source must equal it (guards against a source driver bug). */
  expectedContent?: GuestContent;
  /** Interrupted states whose recovery is itself crashed (default 6; 0 = off). */
  recoveryCrashes?: number;
  /** Random states per recorded recovery (default samples / 50, at least 50). */
  recoverySamples?: number;
  /** Failing states kept with their description (default 20). */
  keepFailures?: number;
  /** See ClassifierOptions.viewBeforeRecovery (default true). */
  viewBeforeRecovery?: boolean;
  /**
   * Called once per distinct state, after classification, with the store as the classifier left it
   * (recovered when recovery ran). Lets a caller cross-check states with an external tool (qemu-img).
   */
  onState?: (visit: { phase: 'conversion' | 'recovery'; state: CrashState; classification: Classification; io: MemoryIO; describe(): string }) => void | Promise<void>;
  /**
   * The operation to record instead of the conversion (e.g. a deliberately unsafe writer in a self-test of
   * this harness, or another in-place operation). Default: convertInPlace from sourceDriver to targetDriver.
   */
  operation?: (io: BlockIO) => Promise<unknown>;
}

function isFailure(outcome: Outcome): boolean {
  return FAILING_OUTCOMES.includes(outcome);
}

interface EnumerateOptions {
  phase: 'conversion' | 'recovery';
  generators: readonly GeneratorName[];
  samples: number;
  seed: number;
  maxSubsetOps: number;
  keepFailures: number;
  /** Called for every distinct state classified (used to pick states whose recovery gets crashed). */
  onClassified?: (state: CrashState, classification: Classification) => void;
  /** Called for every distinct state with the store as the classifier left it (recovered, when it recovered). */
  onState?: CrashCampaignOptions['onState'];
}

/** Enumerates and classifies the crash states of one recording. */
export async function enumerateAndClassify(space: CrashSpace, classifier: Classifier, options: EnumerateOptions): Promise<EnumerationResult> {
  const cache = new Map<string, Classification>();
  const result: EnumerationResult = {
    trace: space.stats(),
    generators: {},
    totals: emptyCounts(),
    states: 0,
    unique: 0,
    epochs: space.epochs.map((e) => ({ pending: e.pending.length, outcomes: emptyCounts() })),
    beforeRecovery: {},
    maxLeaks: 0,
    failures: [],
  };
  for (const generator of options.generators) {
    const counts: GeneratorResult = { states: 0, unique: 0, outcomes: emptyCounts() };
    const seen = new Set<string>();
    for (const state of space.generate(generator, { samples: options.samples, seed: options.seed, maxSubsetOps: options.maxSubsetOps })) {
      let classification = cache.get(state.key);
      if (!classification) {
        const io = await space.materialise(state, `crash state ${state.key}`);
        classification = await classifier.classify(io);
        cache.set(state.key, classification);
        result.unique++;
        if (classification.beforeRecovery) result.beforeRecovery[classification.beforeRecovery] = (result.beforeRecovery[classification.beforeRecovery] ?? 0) + 1;
        result.maxLeaks = Math.max(result.maxLeaks, classification.leaks ?? 0);
        options.onClassified?.(state, classification);
        await options.onState?.({ phase: options.phase, state, classification, io, describe: () => space.describe(state) });
        if (isFailure(classification.outcome) && result.failures.length < options.keepFailures) {
          result.failures.push({ phase: options.phase, generator, state: space.describe(state), outcome: classification.outcome, detail: classification.detail });
        }
      }
      if (!seen.has(state.key)) {
        seen.add(state.key);
        counts.unique++;
      }
      counts.states++;
      counts.outcomes[classification.outcome]++;
      result.totals[classification.outcome]++;
      result.epochs[state.epoch]!.outcomes[classification.outcome]++;
      result.states++;
    }
    result.generators[generator] = counts;
  }
  return result;
}

/** Reads the pristine guest content of a source image. */
export async function pristineContent(registry: Registry, sourceDriver: string, io: MemoryIO, openOptions?: OpenOptions): Promise<GuestContent> {
  const image = await registry.get(sourceDriver).open(new ReadOnlyView(io), openOptions);
  try {
    return await captureContent(image, openOptions?.backing);
  } finally {
    await image.close();
  }
}

/**
 * Records one real in-place conversion on a RecordingIO, enumerates its crash states with the chosen
 * generators and classifies every state; then crashes recover() itself in a handful of interrupted states.
 */
export async function runCrashCampaign(options: CrashCampaignOptions): Promise<CampaignResult> {
  const started = performance.now();
  const { registry, sourceDriver, targetDriver, openOptions } = options;
  const seed = options.seed ?? 1;
  const samples = options.samples ?? 10_000;
  const generators = options.generators ?? GENERATORS;
  const maxSubsetOps = options.maxSubsetOps ?? 12;
  const keepFailures = options.keepFailures ?? 20;

  const pristineIO = await options.buildSource();
  const pristine = await pristineContent(registry, sourceDriver, pristineIO, openOptions);
  if (options.expectedContent) {
    const difference = contentDifference(pristine, options.expectedContent);
    if (difference) throw new Error(`the pristine ${sourceDriver} image does not read as expected: ${difference}`);
  }

  const recorder = await RecordingIO.wrap(pristineIO, `${sourceDriver}-to-${targetDriver}`);
  let conversion: ConversionReport | undefined;
  if (options.operation) await options.operation(recorder);
  else {
    conversion = await convertInPlace({
      io: recorder,
      source: registry.get(sourceDriver),
      target: registry.get(targetDriver),
      ...(openOptions ? { openOptions } : {}),
      ...(options.targetOptions ? { targetOptions: options.targetOptions } : {}),
    });
  }
  const space = new CrashSpace(recorder.recording());
  const classifier = new Classifier({
    registry,
    sourceDriver,
    targetDriver,
    pristine,
    ...(openOptions ? { openOptions } : {}),
    ...(options.viewBeforeRecovery !== undefined ? { viewBeforeRecovery: options.viewBeforeRecovery } : {}),
  });

  // Candidates for crashing the recovery: distinct interrupted states, by recovery direction and epoch.
  const candidates = new Map<string, CrashState>();
  const result = await enumerateAndClassify(space, classifier, {
    phase: 'conversion',
    generators,
    samples,
    seed,
    maxSubsetOps,
    keepFailures,
    ...(options.onState ? { onState: options.onState } : {}),
    onClassified: (state, classification) => {
      if (classification.recovery !== 'rolled-back' && classification.recovery !== 'rolled-forward') return;
      if (isFailure(classification.outcome)) return;
      const slot = `${classification.recovery}:${state.epoch}`;
      if (!candidates.has(slot)) candidates.set(slot, state);
    },
  });

  const recovery: CampaignResult['recovery'] = { recordings: 0, rolledBack: 0, rolledForward: 0 };
  const wanted = options.recoveryCrashes ?? 6;
  if (wanted > 0 && candidates.size > 0) {
    // Alternate directions so both roll-back and roll-forward get crashed.
    const byDirection = [...candidates.entries()].sort((a, b) => a[0].localeCompare(b[0]));
    const back = byDirection.filter(([slot]) => slot.startsWith('rolled-back')).map(([, s]) => s);
    const forward = byDirection.filter(([slot]) => slot.startsWith('rolled-forward')).map(([, s]) => s);
    const chosen: CrashState[] = [];
    while (chosen.length < wanted && (back.length > 0 || forward.length > 0)) {
      const next = (chosen.length % 2 === 0 ? back.shift() ?? forward.shift() : forward.shift() ?? back.shift())!;
      chosen.push(next);
    }
    const recoverySamples = options.recoverySamples ?? Math.max(50, Math.floor(samples / 50));
    let combined: EnumerationResult | undefined;
    for (const [n, state] of chosen.entries()) {
      const interrupted = await space.materialise(state, `interrupted ${state.key}`);
      const recorded = await RecordingIO.wrap(interrupted, `recovery of ${state.key}`);
      const action = (await recover(recorded, { drivers: registry })).action;
      if (action === 'rolled-back') recovery.rolledBack++;
      else if (action === 'rolled-forward') recovery.rolledForward++;
      recovery.recordings++;
      const part = await enumerateAndClassify(new CrashSpace(recorded.recording()), classifier, {
        phase: 'recovery',
        generators,
        samples: recoverySamples,
        seed: deriveSeed(seed, `recovery ${n}`),
        maxSubsetOps,
        keepFailures,
        ...(options.onState ? { onState: options.onState } : {}),
      });
      combined = combined ? mergeResults(combined, part, keepFailures) : part;
    }
    if (combined) recovery.result = combined;
  }

  return {
    source: sourceDriver,
    target: targetDriver,
    seed,
    samples,
    ...(conversion ? { conversion } : {}),
    ...result,
    recovery,
    durationMs: Math.round(performance.now() - started),
  };
}

function mergeResults(a: EnumerationResult, b: EnumerationResult, keepFailures: number): EnumerationResult {
  const generators: EnumerationResult['generators'] = { ...a.generators };
  for (const [name, counts] of Object.entries(b.generators) as [GeneratorName, GeneratorResult][]) {
    const mine = generators[name];
    generators[name] = mine
      ? { states: mine.states + counts.states, unique: mine.unique + counts.unique, outcomes: addCounts({ ...mine.outcomes }, counts.outcomes) }
      : counts;
  }
  const beforeRecovery = { ...a.beforeRecovery };
  for (const [view, count] of Object.entries(b.beforeRecovery) as [View, number][]) beforeRecovery[view] = (beforeRecovery[view] ?? 0) + count;
  return {
    trace: {
      ops: a.trace.ops + b.trace.ops,
      writes: a.trace.writes + b.trace.writes,
      truncates: a.trace.truncates + b.trace.truncates,
      flushes: a.trace.flushes + b.trace.flushes,
      bytesWritten: a.trace.bytesWritten + b.trace.bytesWritten,
      epochs: a.trace.epochs + b.trace.epochs,
      maxPending: Math.max(a.trace.maxPending, b.trace.maxPending),
      extendingWrites: a.trace.extendingWrites + b.trace.extendingWrites,
    },
    generators,
    totals: addCounts({ ...a.totals }, b.totals),
    states: a.states + b.states,
    unique: a.unique + b.unique,
    epochs: [...a.epochs, ...b.epochs],
    beforeRecovery,
    maxLeaks: Math.max(a.maxLeaks, b.maxLeaks),
    failures: [...a.failures, ...b.failures].slice(0, keepFailures),
  };
}

export type { SparseBytes };
