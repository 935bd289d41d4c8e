import { addCounts, emptyCounts, type CampaignResult, type OutcomeCounts } from './campaign.js';
import { FAILING_OUTCOMES, OUTCOMES, type Outcome } from './classify.js';
import { GENERATOR_LABELS, GENERATORS, type GeneratorName } from './enumerate.js';

/** Short column names for the outcome columns of the tables. */
export const OUTCOME_COLUMNS: Readonly<Record<Outcome, string>> = {
  OLD_INTACT: 'OLD',
  OLD_INTACT_GROWN: 'OLD_GROWN',
  NEW_INTACT: 'NEW',
  RECOVERED_OLD: 'REC_OLD',
  RECOVERED_NEW: 'REC_NEW',
  DETECTED_REFUSED: 'REFUSED',
  SILENT_BAD: 'SILENT_BAD',
  DATA_LOSS: 'DATA_LOSS',
  UNTYPED_ERROR: 'UNTYPED',
};

const GENERATOR_COLUMNS: Readonly<Record<GeneratorName, string>> = {
  prefix: 'G0',
  'omit-one': 'G1',
  'tear-512': 'T512',
  'tear-4096': 'T4096',
  subsets: 'G4',
  extension: 'G6',
  random: 'G5',
  'tear-linear': 'LINEAR',
  'garbage-one': 'G3',
};

export interface ReportRow {
  /** e.g. "qcow2 → vmdk" */
  pair: string;
  shape: string;
  clusterSize: number;
  result: CampaignResult;
}

function row(cells: readonly (string | number)[]): string {
  return `| ${cells.join(' | ')} |`;
}

/**
 * One markdown table: a line per pair × shape with the trace size, the states each generator produced, the
 * outcome counts of the conversion's crash states, the states of the crashed recoveries, and a totals line.
 */
export function formatCampaignTable(rows: readonly ReportRow[], generators: readonly GeneratorName[] = GENERATORS): string {
  const header = [
    'pair',
    'shape',
    'cluster',
    'commit',
    'ops (w/f)',
    'max |P|',
    ...generators.map((g) => GENERATOR_COLUMNS[g]),
    'unique',
    ...OUTCOMES.map((o) => OUTCOME_COLUMNS[o]),
    'recovery crash states',
    'recovery bad',
    'ms',
  ];
  const lines = [row(header), row(header.map(() => '---'))];
  const total = emptyCounts();
  const generatorTotals = Object.fromEntries(generators.map((g) => [g, 0])) as Record<GeneratorName, number>;
  let unique = 0;
  let recoveryStates = 0;
  let recoveryBad = 0;
  let ms = 0;
  for (const { pair, shape, clusterSize, result } of rows) {
    const recovery = result.recovery.result;
    const bad = recovery ? recovery.totals.SILENT_BAD + recovery.totals.DATA_LOSS + recovery.totals.UNTYPED_ERROR : 0;
    lines.push(
      row([
        pair,
        shape,
        clusterSize,
        result.conversion?.commit ?? '-',
        `${result.trace.ops} (${result.trace.writes}/${result.trace.flushes})`,
        result.trace.maxPending,
        ...generators.map((g) => result.generators[g]?.states ?? 0),
        result.unique,
        ...OUTCOMES.map((o) => result.totals[o]),
        recovery?.states ?? 0,
        bad,
        result.durationMs,
      ]),
    );
    addCounts(total, result.totals);
    for (const g of generators) generatorTotals[g] += result.generators[g]?.states ?? 0;
    unique += result.unique;
    recoveryStates += recovery?.states ?? 0;
    recoveryBad += bad;
    ms += result.durationMs;
  }
  lines.push(
    row([
      '**total**',
      `${rows.length} conversions`,
      '',
      '',
      '',
      '',
      ...generators.map((g) => generatorTotals[g]),
      unique,
      ...OUTCOMES.map((o) => total[o]),
      recoveryStates,
      recoveryBad,
      ms,
    ]),
  );
  return lines.join('\n');
}

/** Outcome totals over many campaigns, conversion states and crashed-recovery states separately. */
export function totalOutcomes(results: readonly CampaignResult[]): { conversion: OutcomeCounts; recovery: OutcomeCounts; states: number; recoveryStates: number } {
  const conversion = emptyCounts();
  const recovery = emptyCounts();
  let states = 0;
  let recoveryStates = 0;
  for (const result of results) {
    addCounts(conversion, result.totals);
    states += result.states;
    if (result.recovery.result) {
      addCounts(recovery, result.recovery.result.totals);
      recoveryStates += result.recovery.result.states;
    }
  }
  return { conversion, recovery, states, recoveryStates };
}

/** A compact table of outcome totals (conversion states and crashed-recovery states). */
export function formatTotals(results: readonly CampaignResult[]): string {
  const { conversion, recovery, states, recoveryStates } = totalOutcomes(results);
  const lines = [row(['states', 'total', ...OUTCOMES.map((o) => OUTCOME_COLUMNS[o])]), row(['---', '---', ...OUTCOMES.map(() => '---')])];
  lines.push(row(['conversion crash states', states, ...OUTCOMES.map((o) => conversion[o])]));
  lines.push(row(['crashed-recovery states', recoveryStates, ...OUTCOMES.map((o) => recovery[o])]));
  return lines.join('\n');
}

/** Legend of the generator columns. */
export function generatorLegend(generators: readonly GeneratorName[] = GENERATORS): string {
  return generators.map((g) => `${GENERATOR_COLUMNS[g]} = ${GENERATOR_LABELS[g]}`).join(', ');
}

/** One line for a campaign, for test logs. */
export function summariseCampaign(result: CampaignResult): string {
  const outcomes = OUTCOMES.filter((o) => result.totals[o] > 0)
    .map((o) => `${OUTCOME_COLUMNS[o]} ${result.totals[o]}`)
    .join(', ');
  const crashed = result.recovery.result;
  // What expectCrashSafe refuses among the crashed recoveries' states, so a log line shows it too.
  const bad = crashed ? [...FAILING_OUTCOMES, 'DETECTED_REFUSED' as const].filter((o) => crashed.totals[o] > 0).map((o) => `${OUTCOME_COLUMNS[o]} ${crashed.totals[o]}`) : [];
  const recovery = crashed ? `; recovery crashes: ${crashed.states} states${bad.length > 0 ? ` (${bad.join(', ')})` : ''}` : '';
  return `${result.source} → ${result.target}: ${result.states} states (${result.unique} unique): ${outcomes}${recovery}; ${result.durationMs} ms`;
}
