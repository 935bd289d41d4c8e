/**
 * Issue #7: an empty file and truncated files give typed errors for every driver's open, info, map and check
 * (WRONG_FORMAT when nothing of the format is left, CORRUPT when it is cut short), never INTERNAL, never anything
 * but an IcError (only ok, WRONG_FORMAT or CORRUPT), and never a read past what the file holds. Every seed is cut at 0, at small lengths, at every
 * structure's edge (and one byte either side) and one sector or cluster short of its end.
 */
import { describe, expect, it } from 'vitest';
import { FUZZ_DRIVERS, runMutants, seedImage, seedLayout, SEED_NAMES, type Mutation } from '../src/index.js';
import { MemoryIO, isIcError } from '@ic/core';

const READ_OPERATIONS = ['open', 'info', 'map', 'check'];

function cuts(name: string): number[] {
  const seed = seedImage(name);
  const map = seedLayout(seed).main;
  const edges = [...map.fields.flatMap((f) => [f.offset, f.offset + f.width]), ...map.regions.flatMap((r) => [r.offset, r.offset + r.length]), ...map.pointers];
  const lengths = new Set([0, 1, 3, 4, 8, 63, 64, 72, 104, 511, 512, 513, 4096, 10752, seed.bytes.length - 512, seed.bytes.length - map.unit, seed.bytes.length - 1]);
  for (const edge of edges) for (const delta of [-1, 0, 1]) lengths.add(edge + delta);
  return [...lengths].filter((length) => length >= 0 && length < seed.bytes.length).sort((a, b) => a - b);
}

describe('empty and truncated files', () => {
  it('a 0-byte file is WRONG_FORMAT for every driver that has a format of its own', async () => {
    for (const driver of FUZZ_DRIVERS) {
      const error = await driver.open(new MemoryIO(new Uint8Array(0), 'empty', { writable: false })).catch((e: unknown) => e);
      if (driver.name === 'raw') continue; // an empty raw image is a valid, empty disk
      expect(isIcError(error) && error.code, driver.name).toBe('WRONG_FORMAT');
    }
  });

  it('every seed cut at every structure edge: typed errors only, never INTERNAL, nothing read past the file', async () => {
    const mutants = SEED_NAMES.flatMap((seed) => cuts(seed).map((length) => ({ seed, mutations: [{ op: 'resize', length } as Mutation] })));
    const outcomes = await runMutants(mutants);
    const problems: string[] = [];
    const verdicts = new Map<string, number>();
    outcomes.forEach((outcome, index) => {
      const { seed, mutations } = mutants[index]!;
      const where = `${seed} cut to ${(mutations[0] as { length: number }).length}`;
      for (const violation of outcome.result.violations) problems.push(`${where}: ${violation.kind} in ${violation.operation}: ${violation.message}`);
      for (const operation of READ_OPERATIONS) {
        const verdict = outcome.result.verdicts[operation] ?? 'missing';
        verdicts.set(verdict, (verdicts.get(verdict) ?? 0) + 1);
        if (!['ok', 'WRONG_FORMAT', 'CORRUPT', 'SKIPPED'].includes(verdict)) problems.push(`${where}: ${operation} ${verdict}`);
      }
      // Nothing left of the header: not this format at all.
      if ((mutations[0] as { length: number }).length === 0) expect(outcome.result.verdicts.open, where).toBe('WRONG_FORMAT');
    });
    console.log(`${mutants.length} truncated files; verdicts of open/info/map/check: ${JSON.stringify(Object.fromEntries(verdicts))}`);
    expect(problems).toEqual([]);
  }, 300_000);
});
