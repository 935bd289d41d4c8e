/**
 * The CI-sized fuzz run: a few thousand deterministic mutants of every seed, each through every read operation
 * and a dry-run conversion to every in-place target (reliability.md §3): typed errors only (never INTERNAL, never
 * anything but an IcError), no read or buffer larger than the input allows, bounded memory, nothing written, and
 * no hang (a watchdog kills a mutant that runs past a generous timeout). Known findings fixed elsewhere
 * (KNOWN_FINDINGS, each with a `.fails` test in findings.test.ts) are tolerated; anything new fails the test and
 * prints the mutations that reproduce it.
 *
 * IC_FUZZ_CI_MUTANTS sets the mutants per seed (default 25: 31 seeds through 8 drivers; the report job runs them at scale).
 */
import { describe, expect, it } from 'vitest';
import { formatFindings, formatTotals, runCampaign, SEED_NAMES } from '../src/index.js';

const MUTANTS_PER_SEED = Number(process.env.IC_FUZZ_CI_MUTANTS ?? 25);

describe('mutation fuzzer (CI run)', () => {
  it(`${MUTANTS_PER_SEED} mutants of each of the ${SEED_NAMES.length} seeds: typed errors only, no oversized read or allocation, nothing written`, async () => {
    const result = await runCampaign({ mutantsPerSeed: MUTANTS_PER_SEED, campaignSeed: 7, workers: 2 });
    console.log(`${result.mutants} mutants in ${(result.durationMs / 1000).toFixed(1)} s\n${formatTotals(result)}\nknown: ${formatFindings(result, { known: true })}`);
    expect(result.mutants).toBe(MUTANTS_PER_SEED * SEED_NAMES.length);
    expect(formatFindings(result)).toBe('no findings');
  }, 600_000);
});
