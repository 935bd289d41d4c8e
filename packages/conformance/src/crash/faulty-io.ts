import { convertInPlace, IcError, isIcError, type BlockIO, type ByteRange, type MemoryIO, type OpenOptions, type OptionValues, type Registry } from '@ic/core';
import { emptyCounts, pristineContent, type OutcomeCounts } from './campaign.js';
import { Classifier, FAILING_OUTCOMES, type Classification } from './classify.js';
import { contentDifference, type GuestContent } from './content.js';
import { SparseBytes } from './sparse.js';

/** Where FaultyIO fails: the `at`-th call (1-based) of that kind. */
export type Fault =
  | { on: 'write'; at: number; code: 'IO' | 'NO_SPACE' }
  | { on: 'truncate'; at: number; code: 'IO' | 'NO_SPACE' }
  | { on: 'flush'; at: number };

export function describeFault(fault: Fault): string {
  return fault.on === 'flush' ? `IO at flush #${fault.at}` : `${fault.code} at ${fault.on} #${fault.at}`;
}

/**
 * A BlockIO that fails one chosen call with a typed error, like blkdebug's inject-error
 * (reliability.md §2.3 G7). A failed write or truncate changes nothing. After a failed flush every later
 * call fails too, as FileIO does (the kernel may have dropped the dirty pages, so nothing may go on).
 */
export class FaultyIO implements BlockIO {
  writes = 0;
  truncates = 0;
  flushes = 0;
  /** The error this wrapper injected, once it did. */
  injected: IcError | undefined;
  private poisoned: IcError | undefined;

  constructor(
    readonly inner: BlockIO,
    readonly fault?: Fault,
  ) {}

  get name(): string {
    return this.inner.name;
  }
  get writable(): boolean {
    return this.inner.writable;
  }
  get exclusive(): boolean | undefined {
    return this.inner.exclusive;
  }

  private guard(): void {
    if (this.poisoned) throw this.poisoned;
  }

  private inject(code: 'IO' | 'NO_SPACE', what: string): IcError {
    this.injected = new IcError(code, `${this.name}: injected ${code === 'IO' ? 'I/O error' : 'no space left'} at ${what}`, { path: this.name, step: what });
    return this.injected;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.guard();
    return this.inner.read(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.guard();
    this.writes++;
    if (this.fault?.on === 'write' && this.fault.at === this.writes) throw this.inject(this.fault.code, `write #${this.writes} (${data.length} bytes at ${offset})`);
    return this.inner.write(offset, data);
  }

  async size(): Promise<number> {
    this.guard();
    return this.inner.size();
  }

  async truncate(size: number): Promise<void> {
    this.guard();
    this.truncates++;
    if (this.fault?.on === 'truncate' && this.fault.at === this.truncates) throw this.inject(this.fault.code, `truncate #${this.truncates} (to ${size})`);
    return this.inner.truncate(size);
  }

  async flush(): Promise<void> {
    this.guard();
    this.flushes++;
    if (this.fault?.on === 'flush' && this.fault.at === this.flushes) {
      this.poisoned = this.inject('IO', `flush #${this.flushes}`);
      throw this.poisoned;
    }
    return this.inner.flush();
  }

  async close(): Promise<void> {
    return this.inner.close();
  }

  dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    this.guard();
    if (this.inner.dataRanges) return this.inner.dataRanges(offset, length);
    return Promise.resolve([{ offset, length }]);
  }
}

export interface FaultRun {
  fault: Fault;
  /** How convertInPlace ended: the error it rejected with, or 'completed'. */
  result: 'completed' | { typed: boolean; code?: string; message: string };
  /** Whether the rejection is exactly the injected error. */
  rejectedWithInjected: boolean;
  /** The verdict on the store the failed conversion left behind (as after a process exit). */
  classification: Classification;
}

export interface FaultSweepOptions {
  registry: Registry;
  sourceDriver: string;
  targetDriver: string;
  buildSource(): Promise<MemoryIO>;
  openOptions?: OpenOptions;
  targetOptions?: OptionValues;
  expectedContent?: GuestContent;
  /** Error codes injected at writes and truncates (default both IO and NO_SPACE). */
  codes?: readonly ('IO' | 'NO_SPACE')[];
}

export interface FaultSweepResult {
  /** Calls made by an undisturbed conversion. */
  writes: number;
  truncates: number;
  flushes: number;
  runs: FaultRun[];
  outcomes: OutcomeCounts;
  /** Runs that did not reject with the injected error (another error, or none). */
  wrongErrors: FaultRun[];
  /** Runs whose store is classified SILENT_BAD, DATA_LOSS or UNTYPED_ERROR. */
  unsafe: FaultRun[];
}

/**
 * Runs the conversion once per fault position: every write (each code), every truncate (each code) and
 * every flush. Each run must reject with the injected typed error, and leave a store that is intact or
 * recoverable.
 */
export async function runFaultSweep(options: FaultSweepOptions): Promise<FaultSweepResult> {
  const { registry, sourceDriver, targetDriver, openOptions } = options;
  const source = registry.get(sourceDriver);
  const target = registry.get(targetDriver);
  const codes = options.codes ?? (['IO', 'NO_SPACE'] as const);
  const pristineIO = await options.buildSource();
  const pristineBytes = await SparseBytes.fromIO(pristineIO);
  const pristine = await pristineContent(registry, sourceDriver, pristineIO, openOptions);
  if (options.expectedContent) {
    const difference = contentDifference(pristine, options.expectedContent);
    if (difference) throw new Error(`the pristine ${sourceDriver} image does not read as expected: ${difference}`);
  }
  const classifier = new Classifier({ registry, sourceDriver, targetDriver, pristine, viewBeforeRecovery: false, ...(openOptions ? { openOptions } : {}) });
  const convert = (io: BlockIO) =>
    convertInPlace({ io, source, target, ...(openOptions ? { openOptions } : {}), ...(options.targetOptions ? { targetOptions: options.targetOptions } : {}) });

  const counting = new FaultyIO(await pristineBytes.toMemoryIO('fault sweep (undisturbed)'));
  await convert(counting);

  const faults: Fault[] = [];
  for (let at = 1; at <= counting.writes; at++) for (const code of codes) faults.push({ on: 'write', at, code });
  for (let at = 1; at <= counting.truncates; at++) for (const code of codes) faults.push({ on: 'truncate', at, code });
  for (let at = 1; at <= counting.flushes; at++) faults.push({ on: 'flush', at });

  const result: FaultSweepResult = { writes: counting.writes, truncates: counting.truncates, flushes: counting.flushes, runs: [], outcomes: emptyCounts(), wrongErrors: [], unsafe: [] };
  for (const fault of faults) {
    const store = await pristineBytes.toMemoryIO(`fault sweep (${describeFault(fault)})`);
    const faulty = new FaultyIO(store, fault);
    let outcome: FaultRun['result'] = 'completed';
    let rejectedWithInjected = false;
    try {
      await convert(faulty);
    } catch (error) {
      outcome = isIcError(error)
        ? { typed: true, code: error.code, message: error.message }
        : { typed: false, message: error instanceof Error ? `${error.name}: ${error.message}` : String(error) };
      // The engine must pass the injected error on: the same error, or one with its code that says more (the
      // state the image is in) and keeps the injected one as its cause.
      const injected = faulty.injected;
      const causes = (value: unknown): unknown[] => (value instanceof Error && value.cause !== undefined ? [value.cause, ...causes(value.cause)] : []);
      rejectedWithInjected =
        injected !== undefined &&
        (error === injected ||
          (isIcError(error) && error.code === injected.code && (error.message === injected.message || causes(error).some((cause) => cause === injected || (isIcError(cause) && cause.message === injected.message)))));
    }
    const classification = await classifier.classify(store);
    const run: FaultRun = { fault, result: outcome, rejectedWithInjected, classification };
    result.runs.push(run);
    result.outcomes[classification.outcome]++;
    if (!rejectedWithInjected) result.wrongErrors.push(run);
    if (FAILING_OUTCOMES.includes(classification.outcome)) result.unsafe.push(run);
  }
  return result;
}
