/**
 * How much of a generated suite runs. The kit's suites grow with the product of drivers, shapes, cluster sizes and
 * crash generators; a project that runs them on every commit can take a covering subset and the full set on demand.
 *
 * - 'full' (the default): every case.
 * - 'covering': for each pair of drivers, every shape once, at a cluster size that rotates with the shape (so every
 *   size the pair supports is met by some shape), and crash campaigns on one shape per pair with fewer random states.
 *   Deterministic: the same drivers give the same cases on every run.
 *
 * Set by the option of the suite, or else by the environment variable IC_KIT_COVERAGE ('full' | 'covering').
 */
export type Coverage = 'full' | 'covering';

export function coverageOf(option: Coverage | undefined): Coverage {
  if (option) return option;
  const value = typeof process === 'undefined' ? undefined : process.env.IC_KIT_COVERAGE;
  if (value === undefined || value === '' || value === 'full') return 'full';
  if (value === 'covering') return 'covering';
  throw new Error(`IC_KIT_COVERAGE must be 'full' or 'covering', not '${value}'`);
}

/** A stable small number for a name (FNV-1a), so that different pairs rotate from different places. */
export function rotation(name: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash;
}

/** Under 'covering', whether the `index`-th item of a pair's list runs when `slot` of `slots` is this run's one. */
export function covers(coverage: Coverage, pair: string, index: number, slot: number, slots: number): boolean {
  return coverage === 'full' || slots <= 1 || (index + rotation(pair)) % slots === slot;
}
