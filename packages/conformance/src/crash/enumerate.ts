import type { MemoryIO } from '@ic/core';
import { deriveSeed, Random } from './random.js';
import type { Recording, RecordedOp } from './recording-io.js';
import { SparseBytes } from './sparse.js';

/**
 * Crash-state enumeration (reliability.md §2.2-2.3).
 *
 * The trace is cut into epochs at every flush. Everything before the last completed flush is durable; the
 * writes and truncates issued since then are "pending" and each may independently survive, be lost, be
 * torn (only some of its aligned sectors reach the disk) or, for a write that extends the file, leave only
 * the new size behind with zeros or garbage in the new range. Pending operations that survive are applied
 * in issue order; nothing crosses a flush.
 */

export type GeneratorName = 'prefix' | 'omit-one' | 'tear-512' | 'tear-4096' | 'subsets' | 'extension' | 'random' | 'tear-linear' | 'garbage-one';

/** The generators of the adopted model (sector-atomic devices): SILENT_BAD and DATA_LOSS must be 0 under them. */
export const GENERATORS: readonly GeneratorName[] = ['prefix', 'omit-one', 'tear-512', 'tear-4096', 'subsets', 'extension', 'random'];

/**
 * Generators beyond the adopted model (devices that are not 512-byte atomic): LINEAR tears cut a write at
 * any byte, GARBAGE fills every sector a write overlaps with random bytes. Measured and reported, not
 * required to be clean (reliability.md §2.2: the nightly models).
 */
export const WEAK_DEVICE_GENERATORS: readonly GeneratorName[] = ['tear-linear', 'garbage-one'];

/** Names used in reports, after reliability.md §2.3. */
export const GENERATOR_LABELS: Readonly<Record<GeneratorName, string>> = {
  prefix: 'G0 prefix',
  'omit-one': 'G1 omit-one',
  'tear-512': 'G2 tear-one T512',
  'tear-4096': 'G2 tear-one T4096',
  subsets: 'G4 all subsets',
  extension: 'G6 extension',
  random: 'G5 random',
  'tear-linear': 'G2 tear-one LINEAR',
  'garbage-one': 'G3 garbage-one',
};

/** How one pending operation reached the disk in a crash state (absent from the state = lost). */
export type OpFate =
  | { kind: 'full' }
  /** Only these byte ranges of the write (relative to its offset, each a run of whole aligned units) persisted. */
  | { kind: 'torn'; unit: number; ranges: readonly (readonly [number, number])[] }
  /** The file grew to the end of the write but the data did not arrive: the new range is zeros or garbage. */
  | { kind: 'extension'; fill: 'zeros' | 'garbage'; seed: number }
  /** Every 512-byte sector the write overlaps holds random bytes (a device without powersafe overwrite). */
  | { kind: 'garbage'; seed: number };

export interface CrashState {
  generator: GeneratorName;
  /** The epoch whose pending operations are partly applied. */
  epoch: number;
  /** Pending operation index (into the recording's ops) → its fate. Pending operations not listed are lost. */
  kept: ReadonlyMap<number, OpFate>;
  /** Identifies the bytes of the state: two states with the same key are identical. */
  key: string;
}

export interface Epoch {
  index: number;
  /** Indexes into the recording's ops of the writes and truncates issued in this epoch. */
  pending: number[];
  /** Whether a flush ended the epoch (the last epoch of a trace usually has no pending ops). */
  closed: boolean;
}

export interface TraceStats {
  ops: number;
  writes: number;
  truncates: number;
  flushes: number;
  bytesWritten: number;
  epochs: number;
  /** Largest number of pending operations in one epoch. */
  maxPending: number;
  /** Writes that end past the file size at the time they were issued. */
  extendingWrites: number;
}

export interface EnumerationOptions {
  /** Enumerate all subsets only for epochs with at most this many pending operations (default 12). */
  maxSubsetOps?: number;
  /** Number of random states (G5) for the whole trace (default 10,000). */
  samples?: number;
  seed?: number;
  /** A torn write with more units than this gets a sample of tear points instead of all (default 12). */
  maxTearPoints?: number;
}

function fateKey(fate: OpFate): string {
  switch (fate.kind) {
    case 'full':
      return '';
    case 'torn':
      return `t${fate.unit}[${fate.ranges.map(([a, b]) => `${a}-${b}`).join(',')}]`;
    case 'extension':
      return fate.fill === 'zeros' ? 'x0' : `xg${fate.seed}`;
    case 'garbage':
      return `g${fate.seed}`;
  }
}

/** Aligned unit boundaries strictly inside a write: the points where a tear can cut it. */
export function tearBoundaries(offset: number, length: number, unit: number): { first: number; count: number } {
  const first = Math.floor(offset / unit) * unit + unit;
  const end = offset + length;
  if (first >= end) return { first, count: 0 };
  return { first, count: Math.floor((end - 1 - first) / unit) + 1 };
}

export class CrashSpace {
  readonly epochs: Epoch[];
  readonly ops: readonly RecordedOp[];
  private readonly bases: SparseBytes[] = [];

  constructor(readonly recording: Recording) {
    this.ops = recording.ops;
    const epochs: Epoch[] = [{ index: 0, pending: [], closed: false }];
    recording.ops.forEach((op, index) => {
      const current = epochs[epochs.length - 1]!;
      if (op.kind === 'flush') {
        current.closed = true;
        epochs.push({ index: epochs.length, pending: [], closed: false });
      } else current.pending.push(index);
    });
    this.epochs = epochs;
  }

  stats(): TraceStats {
    let writes = 0;
    let truncates = 0;
    let flushes = 0;
    let bytesWritten = 0;
    let extendingWrites = 0;
    for (const op of this.ops) {
      if (op.kind === 'write') {
        writes++;
        bytesWritten += op.data.length;
        if (op.offset + op.data.length > op.sizeBefore) extendingWrites++;
      } else if (op.kind === 'truncate') truncates++;
      else flushes++;
    }
    return {
      ops: this.ops.length,
      writes,
      truncates,
      flushes,
      bytesWritten,
      epochs: this.epochs.length,
      maxPending: Math.max(0, ...this.epochs.map((e) => e.pending.length)),
      extendingWrites,
    };
  }

  /** The durable bytes at the start of an epoch: the base with every operation of earlier epochs applied. */
  baseOf(epoch: number): SparseBytes {
    if (this.bases.length === 0) this.bases.push(this.recording.base);
    while (this.bases.length <= epoch) {
      const previous = this.epochs[this.bases.length - 1]!;
      this.bases.push(this.bases[this.bases.length - 1]!.apply(previous.pending.map((i) => this.ops[i] as Exclude<RecordedOp, { kind: 'flush' }>)));
    }
    return this.bases[epoch]!;
  }

  /** The bytes after the whole trace. */
  finalBytes(): SparseBytes {
    const last = this.epochs[this.epochs.length - 1]!;
    return this.baseOf(last.index).apply(last.pending.map((i) => this.ops[i] as Exclude<RecordedOp, { kind: 'flush' }>));
  }

  state(generator: GeneratorName, epoch: number, kept: Map<number, OpFate>): CrashState {
    const pending = this.epochs[epoch]!.pending;
    const allFull = pending.length > 0 && pending.every((i) => kept.get(i)?.kind === 'full');
    // Every pending operation of a closed epoch applied = the start of the next epoch.
    if (allFull && epoch + 1 < this.epochs.length) return { generator, epoch: epoch + 1, kept: new Map(), key: `E${epoch + 1}:` };
    const parts = [...kept.entries()].sort((a, b) => a[0] - b[0]).map(([i, fate]) => `${i}${fateKey(fate)}`);
    return { generator, epoch, kept, key: `E${epoch}:${parts.join(',')}` };
  }

  /** Human-readable description of a state, for failure messages. */
  describe(state: CrashState): string {
    const pending = this.epochs[state.epoch]!.pending;
    if (pending.length === 0) return `epoch ${state.epoch} start (all earlier operations durable)`;
    const parts = pending.map((i) => {
      const op = this.ops[i]!;
      const what = op.kind === 'write' ? `write ${op.data.length}@${op.offset}` : op.kind === 'truncate' ? `truncate ${op.size}` : 'flush';
      const fate = state.kept.get(i);
      const how = !fate
        ? 'lost'
        : fate.kind === 'full'
          ? 'kept'
          : fate.kind === 'torn'
            ? `torn (${fateKey(fate)})`
            : fate.kind === 'garbage'
              ? 'sectors garbage'
              : `size only, ${fate.fill}`;
      return `#${i} ${what}: ${how}`;
    });
    return `epoch ${state.epoch} [${parts.join('; ')}]`;
  }

  /** Builds the crash state as a fresh MemoryIO. */
  async materialise(state: CrashState, name = 'crash-state'): Promise<MemoryIO> {
    const io = await this.baseOf(state.epoch).toMemoryIO(name);
    const indexes = [...state.kept.keys()].sort((a, b) => a - b);
    for (const index of indexes) {
      const op = this.ops[index]!;
      const fate = state.kept.get(index)!;
      if (op.kind === 'truncate') {
        await io.truncate(op.size);
      } else if (op.kind === 'write') {
        if (fate.kind === 'full') await io.write(op.offset, op.data);
        else if (fate.kind === 'torn') {
          for (const [from, to] of fate.ranges) await io.write(op.offset + from, op.data.subarray(from, to));
        } else if (fate.kind === 'garbage') {
          const from = Math.floor(op.offset / 512) * 512;
          const to = Math.ceil((op.offset + op.data.length) / 512) * 512;
          await io.write(from, new Random(fate.seed).bytes(to - from));
        } else {
          const size = await io.size();
          const end = op.offset + op.data.length;
          if (end > size) {
            if (fate.fill === 'zeros') await io.truncate(end);
            else await io.write(size, new Random(fate.seed).bytes(end - size));
          }
        }
      }
    }
    return io;
  }

  private isWrite(index: number): boolean {
    return this.ops[index]!.kind === 'write';
  }

  private extends(index: number): boolean {
    const op = this.ops[index]!;
    return op.kind === 'write' && op.offset + op.data.length > op.sizeBefore;
  }

  private allFull(indexes: readonly number[], except?: number): Map<number, OpFate> {
    const kept = new Map<number, OpFate>();
    for (const i of indexes) if (i !== except) kept.set(i, { kind: 'full' });
    return kept;
  }

  /** Tear points (number of leading units kept) to try for a write of `units` units. */
  private tearPoints(units: number, random: Random, maxTearPoints: number): number[] {
    if (units - 1 <= maxTearPoints) return Array.from({ length: units - 1 }, (_, i) => i + 1);
    const points = new Set([1, Math.floor(units / 2), units - 1]);
    // Eleven points at most, and never more than there are (a short write with a small maxTearPoints has fewer).
    while (points.size < Math.min(11, units - 1)) points.add(1 + random.below(units - 1));
    return [...points].sort((a, b) => a - b);
  }

  /** The states one generator produces for the whole trace (a generator function: states are built lazily). */
  *generate(generator: GeneratorName, options: EnumerationOptions = {}): Generator<CrashState> {
    const maxSubsetOps = options.maxSubsetOps ?? 12;
    const maxTearPoints = options.maxTearPoints ?? 12;
    const random = new Random(deriveSeed(options.seed ?? 1, generator));
    if (generator === 'random') {
      yield* this.randomStates(options.samples ?? 10_000, random);
      return;
    }
    for (const epoch of this.epochs) {
      const pending = epoch.pending;
      switch (generator) {
        case 'prefix':
          for (let k = 0; k <= pending.length; k++) yield this.state(generator, epoch.index, this.allFull(pending.slice(0, k)));
          break;
        case 'omit-one':
          for (const omitted of pending) yield this.state(generator, epoch.index, this.allFull(pending, omitted));
          break;
        case 'tear-512':
        case 'tear-4096': {
          const unit = generator === 'tear-512' ? 512 : 4096;
          for (const index of pending) {
            if (!this.isWrite(index)) continue;
            const op = this.ops[index] as Extract<RecordedOp, { kind: 'write' }>;
            const { first, count } = tearBoundaries(op.offset, op.data.length, unit);
            if (count === 0) continue;
            for (const k of this.tearPoints(count + 1, random, maxTearPoints)) {
              const cut = first + (k - 1) * unit - op.offset;
              for (const restKept of [true, false]) {
                const kept = restKept ? this.allFull(pending, index) : new Map<number, OpFate>();
                kept.set(index, { kind: 'torn', unit, ranges: [[0, cut]] });
                yield this.state(generator, epoch.index, kept);
              }
            }
          }
          break;
        }
        case 'subsets':
          if (pending.length === 0 || pending.length > maxSubsetOps) break;
          for (let mask = 0; mask < 1 << pending.length; mask++) {
            yield this.state(generator, epoch.index, this.allFull(pending.filter((_, bit) => (mask >> bit) & 1)));
          }
          break;
        case 'tear-linear':
          // A cut at any byte: a few cuts per write, never on a sector boundary (T512 covers those).
          for (const index of pending) {
            if (!this.isWrite(index)) continue;
            const op = this.ops[index] as Extract<RecordedOp, { kind: 'write' }>;
            if (op.data.length < 2) continue;
            const cuts = new Set<number>();
            for (let tries = 0; tries < 16 && cuts.size < Math.min(4, op.data.length - 1); tries++) {
              const cut = 1 + random.below(op.data.length - 1);
              if ((op.offset + cut) % 512 !== 0) cuts.add(cut);
            }
            for (const cut of [...cuts].sort((a, b) => a - b)) {
              for (const restKept of [true, false]) {
                const kept = restKept ? this.allFull(pending, index) : new Map<number, OpFate>();
                kept.set(index, { kind: 'torn', unit: 1, ranges: [[0, cut]] });
                yield this.state(generator, epoch.index, kept);
              }
            }
          }
          break;
        case 'garbage-one':
          for (const index of pending) {
            if (!this.isWrite(index)) continue;
            for (const restKept of [true, false]) {
              const kept = restKept ? this.allFull(pending, index) : new Map<number, OpFate>();
              kept.set(index, { kind: 'garbage', seed: 1 + random.below(0x7fffffff) });
              yield this.state(generator, epoch.index, kept);
            }
          }
          break;
        case 'extension':
          for (const index of pending) {
            if (!this.extends(index)) continue;
            for (const fill of ['zeros', 'garbage'] as const) {
              for (const restKept of [true, false]) {
                const kept = restKept ? this.allFull(pending, index) : new Map<number, OpFate>();
                kept.set(index, { kind: 'extension', fill, seed: 1 + random.below(0x7fffffff) });
                yield this.state(generator, epoch.index, kept);
              }
            }
          }
          break;
      }
    }
  }

  /**
   * Seeded random states mixing subsets, tears at both granularities (a leading run or a scattered set of
   * units) and extension garbage. Epochs are picked uniformly among those with pending operations.
   */
  private *randomStates(samples: number, random: Random): Generator<CrashState> {
    const busy = this.epochs.filter((e) => e.pending.length > 0);
    if (busy.length === 0) return;
    for (let n = 0; n < samples; n++) {
      const epoch = busy[random.below(busy.length)]!;
      const kept = new Map<number, OpFate>();
      for (const index of epoch.pending) {
        const op = this.ops[index]!;
        if (op.kind !== 'write') {
          if (random.chance(0.5)) kept.set(index, { kind: 'full' });
          continue;
        }
        const r = random.next();
        if (r < 0.45) kept.set(index, { kind: 'full' });
        else if (r < 0.7) continue;
        else if (r < 0.9) {
          const fate = this.randomTear(op, random);
          if (fate) kept.set(index, fate);
        } else if (this.extends(index)) {
          kept.set(index, { kind: 'extension', fill: random.chance(0.5) ? 'zeros' : 'garbage', seed: 1 + random.below(0x7fffffff) });
        }
      }
      yield this.state('random', epoch.index, kept);
    }
  }

  private randomTear(op: Extract<RecordedOp, { kind: 'write' }>, random: Random): OpFate | undefined {
    const unit = random.chance(0.5) ? 512 : 4096;
    const { first, count } = tearBoundaries(op.offset, op.data.length, unit);
    if (count === 0) return random.chance(0.5) ? { kind: 'full' } : undefined;
    const units = count + 1;
    // Relative end of unit u (0-based): the boundary after it, or the end of the write.
    const unitEnd = (u: number) => (u < count ? first + u * unit - op.offset : op.data.length);
    const unitStart = (u: number) => (u === 0 ? 0 : unitEnd(u - 1));
    if (random.chance(0.5)) {
      const k = 1 + random.below(units - 1);
      return { kind: 'torn', unit, ranges: [[0, unitEnd(k - 1)]] };
    }
    // Scattered: groups of consecutive units (at most 64 groups) each kept or lost.
    const groups = Math.min(64, units);
    const ranges: [number, number][] = [];
    let all = true;
    for (let g = 0; g < groups; g++) {
      const fromUnit = Math.floor((g * units) / groups);
      const toUnit = Math.floor(((g + 1) * units) / groups);
      if (!random.chance(0.5)) {
        all = false;
        continue;
      }
      const from = unitStart(fromUnit);
      const to = unitEnd(toUnit - 1);
      const last = ranges[ranges.length - 1];
      if (last && last[1] === from) last[1] = to;
      else ranges.push([from, to]);
    }
    if (all) return { kind: 'full' };
    if (ranges.length === 0) return undefined;
    return { kind: 'torn', unit, ranges };
  }
}
