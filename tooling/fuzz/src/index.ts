/**
 * @ic/fuzz: a mutation fuzzer over every driver's parsers. Seeds are real images made by qemu-img at test time
 * (seeds.ts); mutations are structure-aware and deterministic (fields.ts, mutate.ts); every mutant runs every
 * read-side operation and a dry-run conversion to every in-place target on read-only guarded stores
 * (harness.ts, guards.ts), in worker threads with a per-mutant watchdog (pool.ts), and the totals are gathered
 * per driver and operation (campaign.ts).
 */
export * from './seeds.js';
export * from './fields.js';
export * from './layouts.js';
export * from './mutate.js';
export * from './guards.js';
export * from './harness.js';
export * from './pool.js';
export * from './campaign.js';
export * from './known.js';
export { FUZZ_DRIVERS } from './drivers.js';
