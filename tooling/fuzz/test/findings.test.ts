/**
 * Fuzzer findings as named regression tests: each rebuilds its mutant from a qemu-img seed and the recorded
 * mutations (offset + value), runs the whole harness on it in-process and expects no violation.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyMutations, FUZZ_DRIVERS, installAllocationGuard, runMutant, seedImage, type AllocationGuard, type Mutation, type MutantResult } from '../src/index.js';

let guard: AllocationGuard;
beforeAll(() => {
  guard = installAllocationGuard();
});
afterAll(() => guard.uninstall());

/** The harness on seed + mutations; the violations it found, as text. */
async function replay(seedName: string, mutations: Mutation[]): Promise<MutantResult & { found: string[] }> {
  const seed = seedImage(seedName);
  const result = await runMutant(seed.format, applyMutations(seed, mutations), { drivers: FUZZ_DRIVERS, allocationGuard: guard }, seed.backing);
  return { ...result, found: result.violations.map((v) => `${v.kind} in ${v.operation}: ${v.message}`) };
}

const be32 = (offset: number, value: number, field?: string): Mutation => ({ op: 'set', offset, width: 4, endian: 'be', value: String(value), ...(field ? { field } : {}) });

describe('fuzzer findings', () => {
  it('qcow2: backing_file_size 0xe20e45ce with no backing file made open read 3.8 GB (issue #7)', async () => {
    const result = await replay('qcow2-v3', [be32(16, 0xe20e45ce, 'backingFileSize')]);
    expect(result.found).toEqual([]);
    expect(result.verdicts.open).toBe('ok');
    expect(result.verdicts.check).toBe('ok');
  });

  it('qcow2: backing_file_size 4 MiB with no backing file and a dirty byte in the L1 (seed qcow2-snapshot#17)', async () => {
    const result = await replay('qcow2-snapshot', [{ op: 'write', offset: 196608, hex: '01' }, be32(16, 4194304, 'backingFileSize')]);
    expect(result.found).toEqual([]);
  });
});

/**
 * Findings whose fix lies in code this package's owner may not change; each is marked `.fails` (it passes while the
 * bug is there) and listed in KNOWN_FINDINGS so that the CI fuzz run tolerates exactly it. Fixing the bug makes the
 * test fail: then drop `.fails` and its KNOWN_FINDINGS entry.
 */
describe('known findings (owned elsewhere)', () => {
  it.fails('qcow2 map: an L2 entry whose host offset is past 2^53 comes out as an unsafe number (mapping.ts fast path; seed qcow2-4k-refcount1#2)', async () => {
    // Bit 54 of an L2 entry: the general path (checkHostOffset) refuses it, the inline fast path of walkMapping does
    // not, so map() yields hostOffset 2^54 (reads of it then fail with OUT_OF_BOUNDS, typed).
    const result = await replay('qcow2-4k-refcount1', [{ op: 'flip', offset: 286969, bit: 6 }]);
    expect(result.found).toEqual([]);
  });
});
