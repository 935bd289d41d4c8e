import { availableParallelism } from 'node:os';
import type { Violation } from './guards.js';
import type { Mutant, Mutation } from './mutate.js';
import { isKnownFinding, violationShape } from './known.js';
import { runJobs, type Job, type JobOutcome } from './pool.js';
import { seedImages, type Seed } from './seeds.js';

export interface CampaignOptions {
  /** Mutants per seed. */
  mutantsPerSeed: number;
  /** Seeds by name (default: all). */
  seeds?: readonly string[];
  campaignSeed?: number;
  /** Worker threads (default: the machine's parallelism, at most 4). */
  workers?: number;
  /** Per-mutant timeout that only catches hangs (default 30 s). */
  timeoutMs?: number;
  /** Called every `progressEvery` mutants with the count done. */
  onProgress?: (done: number, total: number) => void;
  progressEvery?: number;
}

/** A violation with the mutant that shows it: a seed name plus mutations rebuild it. */
export interface Finding {
  violation: Violation;
  /** Undefined when the worker was killed (the mutant can be regenerated from seed and index). */
  mutant: Mutant | undefined;
  seed: string;
  /** The seed's format (the driver that opened the mutant). */
  format: string;
  index: number;
  /** Listed in KNOWN_FINDINGS: understood, tested with `.fails`, fixed elsewhere. */
  known: boolean;
}

export interface CampaignResult {
  mutants: number;
  /** driver (the seed's format) -> operation -> verdict -> count. */
  totals: Record<string, Record<string, Record<string, number>>>;
  /** Mutants per driver. */
  mutantsPerDriver: Record<string, number>;
  /** The first mutant of every distinct violation (kind, operation, message shape), with the count of each. */
  findings: (Finding & { count: number })[];
  violations: number;
  durationMs: number;
  slowestMutantMs: number;
  /** 99th percentile of the per-mutant time. */
  p99MutantMs: number;
  maxBytesRead: number;
  maxMemoryGrowth: number;
  campaignSeed: number;
}

export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const started = performance.now();
  const seeds: Seed[] = seedImages(options.seeds);
  const campaignSeed = options.campaignSeed ?? 1;
  const total = seeds.length * options.mutantsPerSeed;
  const totals: CampaignResult['totals'] = {};
  const mutantsPerDriver: Record<string, number> = {};
  const findings = new Map<string, Finding & { count: number }>();
  const durations: number[] = [];
  let violations = 0;
  let maxBytesRead = 0;
  let maxMemoryGrowth = 0;
  let done = 0;

  // Interleaved by seed, so that a partial run still covers every seed.
  function* jobs(): Generator<Job> {
    let id = 0;
    for (let index = 0; index < options.mutantsPerSeed; index++) {
      for (let seedIndex = 0; seedIndex < seeds.length; seedIndex++) yield { id: id++, seedIndex, index };
    }
  }

  const onOutcome = ({ job, mutant, result }: JobOutcome): void => {
    const seed = seeds[job.seedIndex]!;
    const driver = (totals[seed.format] ??= {});
    mutantsPerDriver[seed.format] = (mutantsPerDriver[seed.format] ?? 0) + 1;
    for (const [operation, verdict] of Object.entries(result.verdicts)) {
      const row = (driver[operation] ??= {});
      row[verdict] = (row[verdict] ?? 0) + 1;
    }
    for (const violation of result.violations) {
      violations++;
      const shape = `${seed.format} ${violationShape(violation)}`;
      const seen = findings.get(shape);
      if (seen) seen.count++;
      else findings.set(shape, { violation, mutant, seed: seed.name, format: seed.format, index: job.index, known: isKnownFinding(seed.format, violation), count: 1 });
    }
    durations.push(result.durationMs);
    maxBytesRead = Math.max(maxBytesRead, result.bytesRead);
    maxMemoryGrowth = Math.max(maxMemoryGrowth, result.memoryGrowth);
    done++;
    if (options.onProgress && done % (options.progressEvery ?? 10_000) === 0) options.onProgress(done, total);
  };

  await runJobs(jobs(), {
    seeds,
    campaignSeed,
    workers: options.workers ?? Math.min(4, Math.max(1, availableParallelism())),
    timeoutMs: options.timeoutMs ?? 30_000,
    onOutcome,
  });
  durations.sort((a, b) => a - b);
  return {
    mutants: done,
    totals,
    mutantsPerDriver,
    findings: [...findings.values()],
    violations,
    durationMs: performance.now() - started,
    slowestMutantMs: durations[durations.length - 1] ?? 0,
    p99MutantMs: durations[Math.floor(durations.length * 0.99)] ?? 0,
    maxBytesRead,
    maxMemoryGrowth,
    campaignSeed,
  };
}

/**
 * Runs given mutants (seed name + mutations) on the worker pool, with the same watchdog, and returns each one's
 * result in order.
 */
export async function runMutants(
  mutants: readonly { seed: string; mutations: Mutation[] }[],
  options: { workers?: number; timeoutMs?: number } = {},
): Promise<JobOutcome[]> {
  const names = [...new Set(mutants.map((mutant) => mutant.seed))];
  const seeds = seedImages(names);
  const outcomes: JobOutcome[] = new Array(mutants.length);
  const jobs = mutants.map((mutant, id) => ({ id, seedIndex: names.indexOf(mutant.seed), index: id, mutations: mutant.mutations }));
  await runJobs(jobs, {
    seeds,
    campaignSeed: 0,
    workers: options.workers ?? Math.min(4, Math.max(1, availableParallelism())),
    timeoutMs: options.timeoutMs ?? 30_000,
    onOutcome: (outcome) => {
      outcomes[outcome.job.id] = outcome;
    },
  });
  return outcomes;
}

/** The totals as a table: one row per driver and operation, one column per verdict. */
export function formatTotals(result: CampaignResult): string {
  const verdicts = new Set<string>();
  for (const operations of Object.values(result.totals)) for (const row of Object.values(operations)) for (const verdict of Object.keys(row)) verdicts.add(verdict);
  const order = ['ok', ...[...verdicts].filter((v) => v !== 'ok').sort()];
  const header = ['driver', 'operation', ...order];
  const rows: string[][] = [];
  for (const [driver, operations] of Object.entries(result.totals)) {
    for (const [operation, row] of Object.entries(operations)) rows.push([driver, operation, ...order.map((verdict) => String(row[verdict] ?? 0))]);
  }
  const lines = [header, header.map(() => '---'), ...rows].map((cells) => `| ${cells.join(' | ')} |`);
  return lines.join('\n');
}

/** One line per finding (new ones only, unless `known`): what, where, how often, and the mutant that reproduces it. */
export function formatFindings(result: CampaignResult, options: { known?: boolean } = {}): string {
  const listed = result.findings.filter((finding) => finding.known === (options.known ?? false));
  if (listed.length === 0) return options.known ? 'no known findings' : 'no findings';
  return listed
    .map((finding) => {
      const reproduce = finding.mutant ? JSON.stringify(finding.mutant.mutations) : `(regenerate ${finding.seed}#${finding.index} with campaign seed ${result.campaignSeed})`;
      return `${finding.format}: ${finding.violation.kind} in ${finding.violation.operation} (${finding.count}x), seed ${finding.seed}#${finding.index}: ${finding.violation.message}\n  mutations: ${reproduce}`;
    })
    .join('\n');
}
