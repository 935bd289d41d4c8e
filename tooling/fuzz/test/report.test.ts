/**
 * The fuzz report: at least 10^5 mutants over every seed, with totals per driver and operation, every distinct
 * finding with the mutations that reproduce it, and the cost per mutant. Skipped unless IC_FUZZ_REPORT=1:
 *   IC_FUZZ_REPORT=1 pnpm exec vitest run --project @ic/fuzz test/report.test.ts
 * Knobs: IC_FUZZ_MUTANTS (total, default 100000), IC_FUZZ_SEED (campaign seed, default 1), IC_FUZZ_WORKERS
 * (worker threads, default the machine's parallelism up to 4), IC_FUZZ_TIMEOUT_MS (per-mutant hang timeout, 60000).
 */
import { describe, expect, it } from 'vitest';
import { formatFindings, formatTotals, runCampaign, SEED_NAMES } from '../src/index.js';

const enabled = process.env.IC_FUZZ_REPORT === '1';
const TOTAL = Number(process.env.IC_FUZZ_MUTANTS ?? 100_000);
const SEED = Number(process.env.IC_FUZZ_SEED ?? 1);

describe.skipIf(!enabled)('fuzz report (IC_FUZZ_REPORT=1)', () => {
  it(`${TOTAL} mutants: totals per driver and operation`, async () => {
    const perSeed = Math.ceil(TOTAL / SEED_NAMES.length);
    const started = Date.now();
    const result = await runCampaign({
      mutantsPerSeed: perSeed,
      campaignSeed: SEED,
      ...(process.env.IC_FUZZ_WORKERS ? { workers: Number(process.env.IC_FUZZ_WORKERS) } : {}),
      timeoutMs: Number(process.env.IC_FUZZ_TIMEOUT_MS ?? 60_000),
      onProgress: (done, total) => console.log(`  ${done}/${total} mutants, ${((Date.now() - started) / 1000).toFixed(0)} s`),
      progressEvery: 10_000,
    });
    const perDriver = Object.entries(result.mutantsPerDriver).map(([driver, count]) => `${driver} ${count}`).join(', ');
    console.log(
      [
        `fuzz report: ${result.mutants} mutants (${perDriver}) of ${SEED_NAMES.length} seeds, campaign seed ${result.campaignSeed}, in ${(result.durationMs / 1000).toFixed(0)} s`,
        `per mutant: p99 ${result.p99MutantMs.toFixed(0)} ms, slowest ${result.slowestMutantMs.toFixed(0)} ms; most read by one mutant ${result.maxBytesRead} bytes; largest ArrayBuffer growth ${result.maxMemoryGrowth} bytes`,
        `violations: ${result.violations}`,
        '',
        formatTotals(result),
        '',
        `new findings:\n${formatFindings(result)}`,
        `known findings:\n${formatFindings(result, { known: true })}`,
      ].join('\n'),
    );
    expect(result.mutants).toBeGreaterThanOrEqual(TOTAL);
    expect(formatFindings(result)).toBe('no findings');
  }, 24 * 3600_000);
});
