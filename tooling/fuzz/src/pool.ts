import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { MutantResult } from './harness.js';
import type { Violation } from './guards.js';
import type { Mutant, Mutation } from './mutate.js';
import type { Seed } from './seeds.js';

/** One mutant to run: generated from (campaign seed, seed, index), or given explicitly. */
export interface Job {
  id: number;
  seedIndex: number;
  index: number;
  mutations?: Mutation[];
}

export type WorkerRequest = { type: 'init'; seeds: Seed[]; campaignSeed: number } | { type: 'job'; job: Job };

export type WorkerReply =
  | { type: 'ready' }
  | { type: 'result'; id: number; mutant: Mutant; result: MutantResult }
  | { type: 'failed'; id: number; mutant: Mutant; message: string };

export interface JobOutcome {
  job: Job;
  /** Undefined when the worker was killed or died before it answered (then `result.violations` says why). */
  mutant: Mutant | undefined;
  result: MutantResult;
}

export interface PoolOptions {
  seeds: Seed[];
  campaignSeed: number;
  workers: number;
  /** A mutant still running after this long is a hang: its worker is killed and replaced. */
  timeoutMs: number;
  onOutcome: (outcome: JobOutcome) => void;
}

let bundled: Promise<string> | undefined;

/**
 * Where the workspace's @ic/* specifiers point in the sources, the way vitest.config.ts aliases them: an export's
 * "@ic/source" entry, else the package's src/index.ts for its root.
 */
function workspaceSources(): Map<string, string> {
  const root = fileURLToPath(new URL('../../../', import.meta.url));
  const out = new Map<string, string>();
  for (const group of ['packages', 'apps', 'tooling']) {
    for (const entry of readdirSync(join(root, group))) {
      const dir = join(root, group, entry);
      if (!existsSync(join(dir, 'package.json'))) continue;
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name: string; exports?: Record<string, unknown> };
      for (const [subpath, target] of Object.entries(manifest.exports ?? {})) {
        const source = typeof target === 'object' && target !== null ? (target as Record<string, unknown>)['@ic/source'] : undefined;
        if (typeof source === 'string') out.set(subpath === '.' ? manifest.name : `${manifest.name}/${subpath.slice(2)}`, join(dir, source));
      }
      if (!out.has(manifest.name) && existsSync(join(dir, 'src/index.ts'))) out.set(manifest.name, join(dir, 'src/index.ts'));
    }
  }
  return out;
}

/**
 * The worker, bundled from the TypeScript sources (every @ic/* package resolved to its src/), so that the fuzzer
 * runs what the tests run, without a build. Once per process.
 */
export function workerBundle(): Promise<string> {
  bundled ??= (async () => {
    const { build } = await import('esbuild');
    const dir = mkdtempSync(join(tmpdir(), 'ic-fuzz-worker-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const outfile = join(dir, 'worker.mjs');
    await build({
      entryPoints: [fileURLToPath(new URL('./worker.ts', import.meta.url))],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      outfile,
      plugins: [
        {
          name: 'ic-workspace-sources',
          setup(plugin) {
            const sources = workspaceSources();
            plugin.onResolve({ filter: /^@ic\// }, (args) => {
              const path = sources.get(args.path);
              return path ? { path } : undefined;
            });
          },
        },
      ],
      logLevel: 'silent',
      sourcemap: 'inline',
    });
    return outfile;
  })();
  return bundled;
}

function killedResult(kind: Violation['kind'], message: string): MutantResult {
  return { verdicts: {}, timings: {}, violations: [{ kind, operation: 'worker', message }], durationMs: 0, bytesRead: 0, memoryGrowth: 0 };
}

interface Slot {
  worker: Worker;
  ready: boolean;
  job: Job | undefined;
  startedAt: number;
}

/**
 * Runs jobs on `workers` worker threads, one job per worker at a time. A watchdog kills a worker whose job runs
 * past the timeout (reported as a 'timeout' violation) and starts a fresh one; a worker that dies (out of
 * memory, say) is reported as a 'crash' and replaced too.
 */
export async function runJobs(jobs: Iterable<Job>, options: PoolOptions): Promise<void> {
  const file = await workerBundle();
  const iterator = jobs[Symbol.iterator]();
  let exhausted = false;
  let running = 0;
  let failure: Error | undefined;
  await new Promise<void>((resolve, reject) => {
    const slots: Slot[] = [];
    const finish = (): void => {
      if (!exhausted || running > 0) return;
      clearInterval(watchdog);
      for (const slot of slots) void slot.worker.terminate();
      if (failure) reject(failure);
      else resolve();
    };
    const next = (slot: Slot): void => {
      slot.job = undefined;
      if (failure) exhausted = true;
      const item = exhausted ? undefined : iterator.next();
      if (!item || item.done) {
        exhausted = true;
        finish();
        return;
      }
      slot.job = item.value;
      slot.startedAt = Date.now();
      running++;
      slot.worker.postMessage({ type: 'job', job: item.value } satisfies WorkerRequest);
    };
    const settle = (slot: Slot, outcome: JobOutcome): void => {
      running--;
      try {
        options.onOutcome(outcome);
      } catch (error) {
        failure ??= error instanceof Error ? error : new Error(String(error));
      }
    };
    const replace = (slot: Slot, kind: Violation['kind'], message: string): void => {
      const job = slot.job;
      slot.job = undefined;
      void slot.worker.terminate();
      if (job) settle(slot, { job, mutant: undefined, result: killedResult(kind, message) });
      const index = slots.indexOf(slot);
      slots[index] = spawn();
    };
    const spawn = (): Slot => {
      const worker = new Worker(file, { resourceLimits: { maxOldGenerationSizeMb: 2048 } });
      const slot: Slot = { worker, ready: false, job: undefined, startedAt: 0 };
      worker.on('message', (reply: WorkerReply) => {
        if (reply.type === 'ready') {
          slot.ready = true;
          next(slot);
          return;
        }
        const job = slot.job;
        if (!job || job.id !== reply.id) return;
        if (reply.type === 'failed') {
          failure ??= new Error(`fuzz harness failed on ${reply.mutant.seed}#${reply.mutant.index}: ${reply.message}`);
          settle(slot, { job, mutant: reply.mutant, result: killedResult('crash', reply.message) });
        } else settle(slot, { job, mutant: reply.mutant, result: reply.result });
        next(slot);
      });
      worker.on('error', (error) => {
        if (slots.includes(slot)) replace(slot, 'crash', `worker died: ${error.message}`);
      });
      worker.on('exit', () => {
        if (slots.includes(slot) && slot.job) replace(slot, 'crash', 'worker exited');
      });
      worker.postMessage({ type: 'init', seeds: options.seeds, campaignSeed: options.campaignSeed } satisfies WorkerRequest);
      return slot;
    };
    const watchdog = setInterval(() => {
      const now = Date.now();
      for (const slot of [...slots]) {
        if (slot.job && now - slot.startedAt > options.timeoutMs) {
          replace(slot, 'timeout', `no answer after ${options.timeoutMs} ms`);
          finish();
        }
      }
    }, 100);
    for (let i = 0; i < Math.max(1, options.workers); i++) slots.push(spawn());
  });
}
