/**
 * A fuzz worker (a worker thread, bundled from the sources by pool.ts): receives the seeds once, then one job at
 * a time, runs the mutant and answers with its result. The parent kills the worker when a job takes longer than
 * the per-mutant timeout, so that a hang (even a synchronous endless loop) is caught and reported.
 */
import { parentPort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { FUZZ_DRIVERS } from './drivers.js';
import type { SeedLayout } from './fields.js';
import { seedLayout } from './layouts.js';
import { installAllocationGuard } from './guards.js';
import { runMutant } from './harness.js';
import { applyMutations, generateMutant } from './mutate.js';
import type { Seed } from './seeds.js';
import type { WorkerReply, WorkerRequest } from './pool.js';

setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as (options?: { type: 'minor' | 'major' }) => void;
/** A full collection costs ~4 ms; a minor one ~0.1 ms. */
const FULL_GC_EVERY = 64;
let jobsRun = 0;
const guard = installAllocationGuard();

let seeds: Seed[] = [];
let layouts: SeedLayout[] = [];
let campaignSeed = 1;

function reply(message: WorkerReply): void {
  parentPort!.postMessage(message);
}

parentPort!.on('message', (request: WorkerRequest) => {
  if (request.type === 'init') {
    seeds = request.seeds;
    layouts = seeds.map((seed) => seedLayout(seed));
    campaignSeed = request.campaignSeed;
    reply({ type: 'ready' });
    return;
  }
  const { job } = request;
  const seed = seeds[job.seedIndex]!;
  const mutant = job.mutations ? { seed: seed.name, index: job.index, mutations: job.mutations } : generateMutant(seed, layouts[job.seedIndex]!, job.index, campaignSeed);
  const files = applyMutations(seed, mutant.mutations);
  collect(++jobsRun % FULL_GC_EVERY === 0 ? { type: 'major' } : { type: 'minor' });
  runMutant(seed.format, files, { drivers: FUZZ_DRIVERS, allocationGuard: guard }, seed.backing).then(
    (result) => reply({ type: 'result', id: job.id, mutant, result }),
    (error: unknown) => reply({ type: 'failed', id: job.id, mutant, message: error instanceof Error ? `${error.message}\n${error.stack}` : String(error) }),
  );
});
