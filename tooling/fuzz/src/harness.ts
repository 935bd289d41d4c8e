import { inflateRawSync, inflateSync } from 'node:zlib';
import { convertInPlace, hasCapability, isIcError, type Driver, type Extent, type Image, type OpenOptions } from '@ic/core';
import { companionOpener, GuardedIO, GuardTripped, readOnlyStore, storeUnchanged, ViolationLog, type AllocationGuard, type Violation } from './guards.js';
import type { MutantFiles } from './mutate.js';

/** zlib for compressed clusters and grains (qcow2: raw deflate; VMDK: zlib streams). */
export const inflate: NonNullable<OpenOptions['inflate']> = (data, kind) =>
  new Uint8Array(kind === 'zlib' ? inflateSync(data) : inflateRawSync(data, { finishFlush: 2 }));

/** What one operation ended with: 'ok', the IcError code, EXCEPTION (not an IcError) or SKIPPED (open failed). */
export type Verdict = string;

export interface MutantResult {
  /** Operation name -> verdict (probe, open, info, map, read, check, convert:<target>). */
  verdicts: Record<string, Verdict>;
  /** Operation name -> milliseconds it took. */
  timings: Record<string, number>;
  violations: Violation[];
  durationMs: number;
  /** Bytes read through every store of the mutant. */
  bytesRead: number;
  /** Largest growth of process.memoryUsage().arrayBuffers seen after an operation, in bytes. */
  memoryGrowth: number;
}

export interface HarnessOptions {
  /** Every registered driver: all probe the mutant, in-place targets get a dry run each. */
  drivers: readonly Driver[];
  /** ArrayBuffer growth allowed per mutant beyond 8x its input. Default 256 MiB. */
  memorySlack?: number;
  /** The allocation guard of this thread, when installed (a fuzz worker installs one). */
  allocationGuard?: AllocationGuard;
}

/** The image a mutant names as its backing file, opened from the seed's unmutated bytes. */
export interface BackingInput {
  format: string;
  bytes: Uint8Array;
  companions?: Record<string, Uint8Array>;
}

const MAP_EXTENT_KINDS = new Set(['data', 'zero', 'unallocated', 'compressed', 'encrypted']);
/** Guest bytes read per range (a few ranges per mutant). */
const READ_LENGTH = 64 * 1024;

function describe(error: unknown): string {
  if (error instanceof Error) {
    const frame = error.stack?.split('\n').find((line) => line.trim().startsWith('at '))?.trim() ?? '';
    return `${error.name}: ${error.message} ${frame}`;
  }
  return String(error);
}

/** Backing images are never mutated: each is opened once per thread and shared by the mutants of its seed. */
const backingImages = new WeakMap<Uint8Array, Promise<Image>>();

function openBacking(backing: BackingInput, drivers: readonly Driver[]): Promise<Image> {
  let image = backingImages.get(backing.bytes);
  if (!image) {
    const driver = drivers.find((d) => d.name === backing.format);
    if (!driver) throw new Error(`no driver for backing format ${backing.format}`);
    const options: OpenOptions = { inflate };
    if (backing.companions) options.openFile = companionOpener(backing.companions, new ViolationLog());
    image = driver.open(readOnlyStore(backing.bytes, `backing.${backing.format}`), options);
    backingImages.set(backing.bytes, image);
  }
  return image;
}

/**
 * Runs every read-side operation on a mutant through the library, and a dry-run conversion to every in-place
 * target, on read-only guarded stores. Records a verdict per operation and every violation of the rules:
 * an error that is not an IcError, an INTERNAL error, a read or a buffer larger than the input allows, memory
 * growth, a write, changed bytes, a broken map or info.
 */
export async function runMutant(format: string, files: MutantFiles, options: HarnessOptions, backing?: BackingInput): Promise<MutantResult> {
  const started = performance.now();
  const log = new ViolationLog();
  const verdicts: Record<string, Verdict> = {};
  const timings: Record<string, number> = {};
  const inputBytes = files.main.length + Object.values(files.companions).reduce((sum, bytes) => sum + bytes.length, 0);
  const memoryBudget = 8 * inputBytes + (options.memorySlack ?? 256 * 1024 * 1024);
  const guard = options.allocationGuard;
  if (guard) {
    guard.limit = inputBytes + 64 * 1024 * 1024;
    guard.log = log;
  }
  const baseline = process.memoryUsage().arrayBuffers;
  let memoryGrowth = 0;
  const store = readOnlyStore(files.main, `mutant.${format}`);
  const io = new GuardedIO(store, files.main, store.name, log);
  const openFile = Object.keys(files.companions).length > 0 ? companionOpener(files.companions, log) : undefined;
  const driver = options.drivers.find((d) => d.name === format);
  if (!driver) throw new Error(`no driver for ${format}`);

  const attempt = async (operation: string, run: () => unknown): Promise<boolean> => {
    log.operation = operation;
    const operationStarted = performance.now();
    let verdict: Verdict = 'ok';
    try {
      await run();
    } catch (error) {
      if (isIcError(error)) {
        verdict = error.code;
        if (error.code === 'INTERNAL') log.add('internal', error.message);
      } else {
        verdict = 'EXCEPTION';
        if (!(error instanceof GuardTripped)) log.add('exception', describe(error));
      }
    }
    verdicts[operation] = verdict;
    timings[operation] = performance.now() - operationStarted;
    const growth = process.memoryUsage().arrayBuffers - baseline;
    memoryGrowth = Math.max(memoryGrowth, growth);
    if (growth > memoryBudget) log.add('memory', `arrayBuffers grew by ${growth} bytes (budget ${memoryBudget})`);
    return verdict === 'ok';
  };

  // Every driver's probe, on the head and tail like the registry passes them.
  await attempt('probe', () => {
    const head = files.main.subarray(0, 65536);
    const tail = files.main.subarray(Math.max(0, files.main.length - 65536));
    for (const candidate of options.drivers) candidate.probe(head, files.main.length, tail);
  });

  const backingImage = backing ? await openBacking(backing, options.drivers) : undefined;
  const openOptions: OpenOptions = { inflate };
  if (openFile) openOptions.openFile = openFile;
  if (backingImage) openOptions.backing = backingImage;

  let image: Image | undefined;
  await attempt('open', async () => {
    image = await driver.open(io, openOptions);
  });
  let virtualSize = 0;
  let firstData: Extent | undefined;
  if (image) {
    const opened = image;
    await attempt('info', () => {
      const info = opened.info();
      virtualSize = info.virtualSize;
      if (!Number.isSafeInteger(info.virtualSize) || info.virtualSize < 0) log.add('info-invariant', `virtualSize ${info.virtualSize}`);
      if (info.clusterSize !== undefined && (!Number.isSafeInteger(info.clusterSize) || info.clusterSize <= 0)) log.add('info-invariant', `clusterSize ${info.clusterSize}`);
    });
    await attempt('map', async () => {
      let expected = 0;
      for await (const item of opened.map()) {
        for (const extent of (Array.isArray(item) ? item : [item]) as Extent[]) {
          const host = (extent as { hostOffset?: number }).hostOffset;
          const problem =
            !MAP_EXTENT_KINDS.has(extent.kind)
              ? `unknown kind ${extent.kind}`
              : extent.guestOffset !== expected
                ? `extent at ${extent.guestOffset}, expected ${expected}`
                : !Number.isSafeInteger(extent.length) || extent.length <= 0
                  ? `extent length ${extent.length} at ${extent.guestOffset}`
                  : host !== undefined && (!Number.isSafeInteger(host) || host < 0)
                    ? `host offset ${host} at guest ${extent.guestOffset}`
                    : undefined;
          if (problem) {
            log.add('map-invariant', problem);
            return;
          }
          if (!firstData && extent.kind === 'data') firstData = extent;
          expected += extent.length;
        }
      }
      if (expected !== virtualSize) log.add('map-invariant', `extents cover ${expected} bytes, the virtual size is ${virtualSize}`);
    });
    await attempt('read', async () => {
      if (virtualSize === 0) return;
      const ranges: [number, number][] = [
        [0, Math.min(READ_LENGTH, virtualSize)],
        [Math.floor(virtualSize / 2 / 512) * 512, Math.min(4096, virtualSize - Math.floor(virtualSize / 2 / 512) * 512)],
        [virtualSize - Math.min(4096, virtualSize), Math.min(4096, virtualSize)],
      ];
      if (firstData && firstData.guestOffset < virtualSize) ranges.push([firstData.guestOffset, Math.min(firstData.length, READ_LENGTH, virtualSize - firstData.guestOffset)]);
      for (const [offset, length] of ranges) {
        const bytes = await opened.read(offset, length);
        if (bytes.length !== length) log.add('exception', `read(${offset}, ${length}) returned ${bytes.length} bytes`);
      }
    });
    if (opened.check) await attempt('check', () => opened.check!());
    else verdicts.check = 'SKIPPED'; // the format has no check (VHD, as in qemu)
    await attempt('close', () => opened.close());
  } else {
    for (const operation of ['info', 'map', 'read', 'check']) verdicts[operation] = 'SKIPPED';
  }

  for (const target of options.drivers) {
    if (!hasCapability(target, 'inPlaceTarget')) continue;
    await attempt(`convert:${target.name}`, () => convertInPlace({ io, source: driver, target, dryRun: true, openOptions }));
  }

  log.operation = 'after';
  if (!storeUnchanged(store, files.main)) log.add('modified', `${store.name} changed`);
  if (guard) guard.log = undefined;
  return { verdicts, timings, violations: log.violations, durationMs: performance.now() - started, bytesRead: io.bytesRead, memoryGrowth };
}
