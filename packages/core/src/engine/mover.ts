import { alignUp, IcError, isAllZero, itemBatches, type BlockIO, type DataExtent, type Driver, type Extent, type ZeroExtent, type Image, type OpenOptions, type ReferenceCounts, type UnitRun } from '../sdk/index.js';
import { COPY_CHUNK, type CopyRun } from './copy.js';
import { encodeRecordStart, identityDigest, logCapacityFor, logOffsetOf, recordBlock, writeNextSlot, type FoundIntent, type IntentRecord } from './intent.js';
import { clearCut, Formats, packImage, survey, switchWave, type PackLog, type PackReport, type PointerSwitch, type Survey } from './pack.js';
import { coveredSpare } from './references.js';
import { ReadView } from './view.js';

/**
 * The mover: moves allocation units of a live image to new host offsets, crash-safely, through the units the
 * driver lists (Image.units(): each unit with the one pointer, plus an optional mirror, that names it, in the
 * driver's encoding). Every step is a wave of pack.ts's switchWave: copy into free space, flush, log the pointer
 * sectors, flush, switch, flush; a unit's old place is reused only by a later wave.
 *
 * A session puts an intent record block past the end of the image (state committed, same format on both sides,
 * packing on): its log area holds the redo log. If the process dies, `recover` (or any writing ic command, which
 * recovers first) re-applies a torn switch, then packs the image (fills the holes, cuts the file), which leaves it
 * clean; rerunning the command finishes the job. Nothing else is kept: a budgeted run ends with the record
 * dropped and no unit parked, and the next run plans again from the image alone (the goal depends only on the
 * image's content, so repeated runs end where one run ends).
 *
 * Extra space: the record block (a log of at most MOVER_LOG_ENTRIES sectors, ~4 MiB, plus 3 KiB) and the spare
 * space past the image's end that cycles of moves go through (defrag: at most `spareBytes`, default 64 MiB or
 * 1/8 of the image, never less than its largest unit; compact: its largest table).
 */

/** Sector entries of the mover's redo log: waves with more switched sectors go in chunks. */
export const MOVER_LOG_ENTRIES = 8192;
const DEFAULT_SPARE = 64 * 1024 * 1024;

export interface Fragmentation {
  /** Data clusters mapped (guest order). */
  allocatedClusters: number;
  /** Data clusters whose host offset does not follow the previous data cluster's (qemu-img check's count). */
  fragmentedClusters: number;
  clusterSize: number;
}

/**
 * Fragmentation in qemu-img check's terms: walking the guest's allocated clusters (data, and zero clusters that keep
 * a host cluster: qcow2's zero-allocated ones) in guest order, a cluster is fragmented when its host offset is not
 * the previous one's plus the cluster size (qemu counts this per L2 table; over the whole walk it is the same or
 * one more per table boundary).
 */
export async function measureFragmentation(image: Image): Promise<Fragmentation> {
  const C = image.info().clusterSize ?? 512;
  let allocated = 0;
  let fragmented = 0;
  let next = -1;
  for await (const batch of itemBatches(image.map())) {
    for (const extent of batch) {
      if (!isAllocated(extent)) continue;
      const clusters = Math.ceil(extent.length / C);
      if (next >= 0 && extent.hostOffset !== next) fragmented++;
      allocated += clusters;
      next = extent.hostOffset + extent.length;
    }
  }
  return { allocatedClusters: allocated, fragmentedClusters: fragmented, clusterSize: C };
}

export function fragmentationLine(f: Fragmentation): string {
  const percent = f.allocatedClusters === 0 ? 0 : (100 * f.fragmentedClusters) / f.allocatedClusters;
  return `${f.fragmentedClusters}/${f.allocatedClusters} = ${percent.toFixed(2)}% fragmented clusters`;
}

/** Every unit, one row each (typed arrays): where it is, how long, its pointer(s), what orders it. */
export interface UnitTable {
  count: number;
  /** Current first cluster. */
  pos: Float64Array;
  clusters: Float64Array;
  /** Pointer and mirror file offsets at the start of the session (-1: no mirror). */
  pointer: Float64Array;
  mirror: Float64Array;
  format: Uint16Array;
  isTable: Uint8Array;
  isData: Uint8Array;
  /** Original first cluster (pointers inside a table are found through it). */
  origin: Float64Array;
  formats: Formats;
}

export async function listUnits(image: Image, surveyed: Survey): Promise<UnitTable> {
  const C = surveyed.clusterSize;
  const runs: UnitRun[] = [];
  let count = 0;
  for await (const batch of surveyed.units.complete ? surveyed.units.batches() : itemBatches(image.units!())) {
    for (const run of batch) {
      runs.push(run);
      count += run.count;
    }
  }
  const table: UnitTable = {
    count,
    pos: new Float64Array(count),
    clusters: new Float64Array(count),
    pointer: new Float64Array(count),
    mirror: new Float64Array(count),
    format: new Uint16Array(count),
    isTable: new Uint8Array(count),
    isData: new Uint8Array(count),
    origin: new Float64Array(count),
    formats: new Formats(),
  };
  let i = 0;
  for (const run of runs) {
    const format = table.formats.index(run.pointer);
    const unitClusters = run.unitLength / C;
    for (let k = 0; k < run.count; k++, i++) {
      table.pos[i] = table.origin[i] = run.hostOffset / C + k * unitClusters;
      table.clusters[i] = unitClusters;
      table.pointer[i] = run.pointerOffset + k * run.pointerStride;
      table.mirror[i] = run.mirrorPointerOffset === undefined ? -1 : run.mirrorPointerOffset + k * run.pointerStride;
      table.format[i] = format;
      table.isTable[i] = unitClusters > 1 || run.kind === 'table' ? 1 : 0;
      table.isData[i] = run.kind === 'data' ? 1 : 0;
    }
  }
  return table;
}

/** Finds, for a pointer's original file offset, where it lives now: inside a table that may have moved. */
export class PointerLocator {
  private readonly starts: Float64Array;
  private readonly index: Int32Array;
  constructor(
    private readonly units: UnitTable,
    private readonly C: number,
  ) {
    const tables: number[] = [];
    for (let i = 0; i < units.count; i++) if (units.isTable[i]) tables.push(i);
    tables.sort((a, b) => units.origin[a]! - units.origin[b]!);
    this.index = Int32Array.from(tables);
    this.starts = Float64Array.from(tables.map((t) => units.origin[t]! * C));
  }
  /** The current offset of the byte at original offset `at`; `moving` gives a table's destination in this wave. */
  locate(at: number, moving: (unit: number) => number | undefined): number {
    let low = 0;
    let high = this.starts.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.starts[mid]! <= at) low = mid + 1;
      else high = mid;
    }
    if (low === 0) return at;
    const unit = this.index[low - 1]!;
    const start = this.starts[low - 1]!;
    if (at >= start + this.units.clusters[unit]! * this.C) return at;
    const cluster = moving(unit) ?? this.units.pos[unit]!;
    return cluster * this.C + (at - start);
  }
}

/** An open mover session: the record block past the spare space, and the wave counters. */
export class Session {
  readonly sequence = { value: 0 };
  readonly counters = { flushes: 0 };
  constructor(
    readonly io: BlockIO,
    readonly log: PackLog,
    readonly blockOffset: number,
    readonly blockLength: number,
    /** The image's reference counts (Image.referenceCounts), which every wave and the final cut keep exact. */
    readonly counts?: { counts: ReferenceCounts; clusterSize: number },
  ) {}

  /** `reach`: the highest offset units may be moved to besides the spare space (default imageEnd). */
  static async begin(io: BlockIO, driver: Driver, imageEnd: number, spareBytes: number, C: number, reach = imageEnd, counts?: ReferenceCounts): Promise<Session> {
    const blockOffset = alignUp(Math.max(imageEnd, reach) + spareBytes, C);
    const block = recordBlock(blockOffset, 0, logCapacityFor(MOVER_LOG_ENTRIES), C);
    const sector0 = await io.read(0, 512);
    const record: IntentRecord = {
      state: 'growing',
      identityDigest: await identityDigest(io),
      fileSizeBefore: imageEnd,
      targetFileSize: 0,
      headerRegionSize: 0,
      sourceFormat: driver.name,
      targetFormat: driver.name,
      pack: 'always',
      packBudget: 0,
      headOffset: 0,
      deferred: false,
      oldHead: sector0,
      newHead: sector0,
    };
    const start = encodeRecordStart(block, record);
    await io.write(start.offset, start.bytes);
    await io.flush();
    // Committed at once (nothing to switch): from here on recovery re-applies the log and packs the image.
    const found: FoundIntent = { record, block, slot: 0, sequence: 1 };
    await writeNextSlot(io, found, { ...record, state: 'committed', targetFileSize: imageEnd, oldHead: new Uint8Array(0), newHead: new Uint8Array(0) });
    await io.flush();
    const session = new Session(io, { offset: logOffsetOf(block), capacity: block.logCapacity }, blockOffset, block.length, counts ? { counts, clusterSize: C } : undefined);
    session.counters.flushes = 2;
    return session;
  }

  /** `released`: host ranges the switches leave unnamed without a copy (zero or unallocated switches). */
  wave(copies: readonly CopyRun[], switches: readonly PointerSwitch[], released?: readonly { offset: number; length: number }[]): Promise<void> {
    const references = this.counts ? { ...this.counts, ...(released ? { released } : {}) } : undefined;
    return switchWave(this.io, copies, switches, this.log, this.sequence, this.counters, references);
  }

  /** Drops the record (and everything past `size`; their reference counts first). */
  async end(size: number): Promise<void> {
    if (this.counts) await clearCut(this.io, this.counts.counts, this.counts.clusterSize, size, this.log, this.sequence, this.counters);
    await this.io.truncate(size);
    await this.io.flush();
    this.counters.flushes++;
  }
}

export async function opened<T>(io: BlockIO, driver: Driver, limit: number, openOptions: OpenOptions, work: (image: Image) => Promise<T>): Promise<T> {
  const image = await driver.open(new ReadView(io, limit), openOptions);
  try {
    return await work(image);
  } finally {
    await image.close();
  }
}

function refuse(driver: Driver, what: string): IcError {
  return new IcError(
    'UNSUPPORTED',
    `${driver.name}: cannot ${what}: the driver lists no movable units (it has no pointers to switch, or a move needs more than a pointer switch, e.g. reference counts that must follow)`,
    { format: driver.name },
  );
}

export async function surveyed(driver: Driver, image: Image, what: string): Promise<Survey> {
  if (!image.units) throw refuse(driver, what);
  const description = await image.conversionSource?.();
  if (description && description.blockers.length > 0) {
    throw new IcError('UNSUPPORTED', `${driver.name}: cannot ${what}: ${description.blockers.map((b) => `${b.feature}: ${b.reason}`).join('; ')}`, { format: driver.name });
  }
  return survey(driver, image);
}

export function throwIfAborted(signal: AbortSignal | undefined, name: string, done: string): void {
  if (signal?.aborted) throw new IcError('INTERRUPTED', `${name}: stopped after ${done}; the image is valid; run \`ic recover\` to tidy it up`);
}

// ---------------------------------------------------------------------------------------------------------------
// defrag

export interface DefragOptions {
  /**
   * Stop after this many unit moves (the image is left valid and clean; run again to go on). Raised to at least 3
   * and twice the largest table's clusters plus 2: breaking a cycle of moves, or clearing a table's place, takes that.
   */
  maxMoves?: number;
  /** Stop at the next wave after this many milliseconds. */
  maxMilliseconds?: number;
  dryRun?: boolean;
  /** Spare space past the image's end that cycles of moves go through (default 64 MiB or 1/8 of the units). */
  spareBytes?: number;
  openOptions?: OpenOptions;
  signal?: AbortSignal;
  onProgress?: (moved: number, total: number) => void;
}

export interface DefragReport {
  /** Every unit is at its goal; false: the budget was spent (run again). */
  done: boolean;
  dryRun: boolean;
  unitsMoved: number;
  bytesMoved: number;
  /** Moves the whole plan takes from here (a dry run's estimate; equal to unitsMoved when done in one run). */
  movesPlanned: number;
  /** Units not at their goal before the run. */
  unitsOutOfPlace: number;
  /** The move budget in force (maxMoves, raised to the least that makes progress), or undefined. */
  budget: number | undefined;
  waves: number;
  flushes: number;
  before: Fragmentation;
  after: Fragmentation;
  fileSizeBefore: number;
  fileSizeAfter: number;
  /** The most bytes past the image's end used (spare space and the record block). */
  extraBytes: number;
  clusterSize: number;
}

export interface Move {
  unit: number;
  to: number;
}

/**
 * Whether an extent holds a host cluster of the image's own: data, or (for defrag and compact, which keep or drop
 * it) a zero extent with a host offset (qcow2's zero-allocated clusters: the guest reads zeros, the host cluster
 * stays allocated and counts in qemu-img check's fragmentation).
 */
function isAllocated(extent: Extent): extent is DataExtent | (ZeroExtent & { hostOffset: number }) {
  return extent.kind === 'data' || (extent.kind === 'zero' && extent.hostOffset !== undefined);
}

/** The host clusters of zero extents that keep one (qcow2's zero-allocated clusters). */
async function zeroAllocatedClusters(image: Image, C: number): Promise<Set<number>> {
  const hosts = new Set<number>();
  for await (const batch of itemBatches(image.map())) {
    for (const extent of batch) {
      if (extent.kind !== 'zero' || extent.hostOffset === undefined) continue;
      for (let at = 0; at < extent.length; at += C) if ((extent.hostOffset + at) % C === 0) hosts.add((extent.hostOffset + at) / C);
    }
  }
  return hosts;
}

/**
 * The guest cluster each data cluster of the host holds (host cluster -> guest cluster), from the map; with
 * `zeroAllocated`, zero-allocated clusters too (isAllocated).
 */
export async function guestClusters(image: Image, C: number, zeroAllocated = false): Promise<Map<number, number>> {
  const guestOf = new Map<number, number>();
  for await (const batch of itemBatches(image.map())) {
    for (const extent of batch) {
      if (!isAllocated(extent) || (!zeroAllocated && extent.kind !== 'data')) continue;
      for (let at = 0; at < extent.length; at += C) {
        const host = extent.hostOffset + at;
        if (host % C === 0) guestOf.set(host / C, Math.floor((extent.guestOffset + at) / C));
      }
    }
  }
  return guestOf;
}

/**
 * Goal of defrag: header region and fixed ranges stay; then the tables (in the order of their pointers), then the
 * data units in guest order, zero-allocated ones included (units the map does not reach, e.g. past the disk's end,
 * last, in host order), each at the first position past the previous one that clears the fixed ranges.
 */
async function defragGoal(image: Image, s: Survey, units: UnitTable): Promise<{ goal: Float64Array; goalEnd: number }> {
  const guestOf = await guestClusters(image, s.clusterSize, true);
  const order = Array.from({ length: units.count }, (_, i) => i);
  const key = new Float64Array(units.count);
  for (let i = 0; i < units.count; i++) {
    if (!units.isData[i]) key[i] = -1e15 + units.pointer[i]!;
    else key[i] = guestOf.get(units.pos[i]!) ?? 1e15 + units.pos[i]!;
  }
  order.sort((a, b) => key[a]! - key[b]!);
  const goal = new Float64Array(units.count);
  const cursor = placeInOrder(order, units, s, s.headerClusters, goal);
  return { goal, goalEnd: Math.max(cursor, s.fixedEnd, s.headerClusters) };
}

/**
 * Gives the units of `order` goals one after the other from cluster `start`, each at the first position past the
 * previous one that clears the survey's fixed ranges. Returns the end of the last.
 */
export function placeInOrder(order: readonly number[], units: UnitTable, s: Survey, start: number, goal: Float64Array): number {
  const fixed = new Uint8Array(s.fixedEnd);
  for (const [a, b] of s.fixed) fixed.fill(1, a, b);
  let cursor = start;
  for (const u of order) {
    const n = units.clusters[u]!;
    for (let c = cursor; c < cursor + n && c < fixed.length; c++) {
      if (fixed[c]) {
        cursor = c + 1;
        c = cursor - 1;
      }
    }
    goal[u] = cursor;
    cursor += n;
  }
  return cursor;
}

/**
 * Plans the next wave from the current positions: every unit whose goal is free moves there; when none can (every
 * unit left is in a cycle), some units standing in others' goals are parked in spare space past the goal's end
 * (spread over the cycles, so they progress in parallel). With a budget, parking stops in time for every parked
 * unit to be settled into a hole below the goal's end before the budget runs out.
 */
export class DefragPlanner {
  readonly occ: Int32Array;
  private readonly stamp: Int32Array;
  private waveNo = 0;
  pending: number[];
  parked = new Set<number>();
  /** End of the tables' goals: the data goals follow. */
  private readonly tableZoneEnd: number;
  /** No move was made yet in this run. */
  firstStep = true;
  private pendingSet = new Set<number>();
  private spareCursor: number;

  constructor(
    readonly units: UnitTable,
    readonly goal: Float64Array,
    readonly goalEnd: number,
    readonly spareEnd: number,
    fixed: Survey['fixed'],
    headerClusters: number,
  ) {
    this.occ = new Int32Array(spareEnd).fill(-1);
    this.stamp = new Int32Array(spareEnd);
    this.occ.fill(-2, 0, Math.min(headerClusters, spareEnd));
    for (const [start, end] of fixed) this.occ.fill(-2, start, Math.min(end, spareEnd));
    for (let u = 0; u < units.count; u++) this.occ.fill(u, units.pos[u]!, units.pos[u]! + units.clusters[u]!);
    this.pending = [];
    for (let u = 0; u < units.count; u++) if (units.pos[u] !== goal[u]) this.pending.push(u);
    this.pendingSet = new Set(this.pending);
    this.spareCursor = goalEnd;
    let tableZoneEnd = headerClusters;
    for (let u = 0; u < units.count; u++) if (units.isTable[u]) tableZoneEnd = Math.max(tableZoneEnd, goal[u]! + units.clusters[u]!);
    this.tableZoneEnd = tableZoneEnd;
  }

  private free(start: number, n: number): boolean {
    if (start + n > this.spareEnd) return false;
    for (let c = start; c < start + n; c++) if (this.occ[c] !== -1 || this.stamp[c] === this.waveNo) return false;
    return true;
  }

  private reserve(u: number, to: number): void {
    const n = this.units.clusters[u]!;
    const from = this.units.pos[u]!;
    this.stamp.fill(this.waveNo, to, to + n);
    this.stamp.fill(this.waveNo, from, from + n);
  }

  /** A free run of `n` clusters in [from, to), searched from `cursor` round. */
  private findFree(n: number, from: number, to: number, cursor: number): number {
    for (const [a, b] of [
      [Math.max(from, cursor), to],
      [from, Math.min(to, cursor + n)],
    ] as const) {
      for (let c = a; c + n <= b; c++) if (this.free(c, n)) return c;
    }
    return -1;
  }

  /** The next wave, or an empty one when nothing is left (or nothing more fits the budget). */
  next(allowance: number): Move[] {
    this.waveNo++;
    const moves: Move[] = [];
    const { units, goal } = this;
    // Parked units first: they are the budget's reserve.
    const pending = this.pending.filter((u) => units.pos[u] !== goal[u]);
    this.pending = pending;
    this.pendingSet = new Set(pending);
    let budget = allowance;
    for (const u of pending) {
      const parked = this.parked.has(u);
      if (!parked && budget <= 0) continue;
      if (!this.free(goal[u]!, units.clusters[u]!)) continue;
      this.reserve(u, goal[u]!);
      moves.push({ unit: u, to: goal[u]! });
      if (!parked) budget--;
    }
    if (pending.length === 0) return moves;
    // A thin chain (a long cycle broken once moves one unit per wave): park more blockers alongside, so that the
    // cycle is cut into pieces that move in parallel.
    const ready = moves.length;
    let table = -1;
    for (const u of pending) if (units.isTable[u] && (table < 0 || goal[u]! < goal[table]!)) table = u;
    // (Not while a table is pending: the spare space is kept for clearing tables' windows.)
    if (ready > 0 && (ready * 8 >= pending.length || table >= 0)) return moves;
    if (ready > 0) return this.park(moves, pending, budget);
    // Stuck, and a table is not at its goal: clear its goal window into spare space (and park the table itself when
    // it overlaps its own goal); it moves in the next wave. Tables go first, so parked units are single clusters,
    // which always settle. Its cost: the evictions, the table's move, and one settling move per eviction.
    if (table >= 0) return this.clearWindow(table, budget);
    return this.park(moves, pending, budget);
  }

  /**
   * Parks blockers (units standing in pending units' goals) in spare space, spread over the pending units. Each
   * costs a move now, one for the unit that takes its place (at least), and one later (into its goal, or settled
   * into a hole when the budget ends): at most a third of what is left goes to parking, so the chains move.
   * Adds to `moves` (this wave's ready moves); settles when stuck and the budget is short.
   */
  private park(moves: Move[], pending: readonly number[], budget: number): Move[] {
    const { units, goal } = this;
    const ready = moves.length;
    const slots = budget === Number.POSITIVE_INFINITY ? budget : Math.floor(budget / 3);
    if (slots <= 0) return ready > 0 ? moves : this.settle();
    let cost = budget;
    const want = Math.max(1, Math.min(slots, Math.ceil(pending.length / 2)));
    const step = Math.max(1, Math.floor(pending.length / want));
    for (let k = 0; k < pending.length && moves.length - ready < want; k += step) {
      const u = pending[k]!;
      const g = goal[u]!;
      let blocker = -1;
      for (let c = g; c < g + units.clusters[u]!; c++) {
        const v = this.occ[c]!;
        if (v >= 0) {
          blocker = v;
          break;
        }
      }
      if (blocker < 0 || this.parked.has(blocker) || this.stamp[units.pos[blocker]!] === this.waveNo) continue;
      const n = units.clusters[blocker]!;
      const price = units.isTable[blocker] ? n + 3 : 3;
      if (price > cost) continue;
      const to = this.findFree(n, this.goalEnd, this.spareEnd, this.spareCursor);
      if (to < 0) {
        if (n === 1) break; // the spare space is full
        continue;
      }
      cost -= price;
      this.spareCursor = to + n;
      this.reserve(blocker, to);
      moves.push({ unit: blocker, to });
    }
    if (moves.length > 0) return moves;
    if (budget !== Number.POSITIVE_INFINITY) return this.settle();
    throw new IcError('NO_SPACE', 'defrag: the spare space is too small for the units that must go through it');
  }

  /** Empties the goal window of `table` into spare space (see next()); settles instead when the budget is short. */
  private clearWindow(table: number, budget: number): Move[] {
    const { units } = this;
    const g = this.goal[table]!;
    const n = units.clusters[table]!;
    const evict: number[] = [];
    for (let c = g; c < g + n; c++) {
      const v = this.occ[c]!;
      if (v >= 0 && !evict.includes(v)) evict.push(v);
    }
    let price = 1;
    for (const v of evict) price += units.isTable[v] ? units.clusters[v]! + 2 : 2;
    // A run's first step is always taken (a window may hold parts of two tables): every run progresses.
    if (price > budget && !this.firstStep) return this.settle();
    const moves: Move[] = [];
    // Evicted units go to holes among the data goals when there are some (a table that moved left its old place
    // free), else to spare space; never into this window.
    this.stamp.fill(this.waveNo, g, g + n);
    for (const v of evict) {
      const size = units.clusters[v]!;
      let to = this.findFree(size, this.tableZoneEnd, this.goalEnd, this.tableZoneEnd);
      if (to < 0) {
        to = this.findFree(size, this.goalEnd, this.spareEnd, this.spareCursor);
        if (to < 0) break;
        this.spareCursor = to + size;
      }
      this.reserve(v, to);
      moves.push({ unit: v, to });
    }
    if (moves.length > 0) return moves;
    if (budget !== Number.POSITIVE_INFINITY) return this.settle();
    throw new IcError('NO_SPACE', 'defrag: the spare space is too small for the units that must go through it');
  }

  /** Moves the budget must keep for the parked units: one each, a table's size more (see settle). */
  reserveNeeded(): number {
    let needed = 0;
    for (const u of this.parked) needed += this.units.isTable[u] ? this.units.clusters[u]! + 1 : 1;
    return needed;
  }

  /**
   * Budget spent: every parked unit goes into a hole below the goal's end, so nothing is left past it. Below the
   * goal's end there are at least as many free clusters as parked ones (the goal is packed). A parked table with no
   * free run of its size first gets a window of single units emptied into holes outside it (this wave; the table
   * follows in the next one): the window with the most free clusters, clear of fixed ranges and other tables.
   */
  settle(): Move[] {
    const moves: Move[] = [];
    const { units } = this;
    const parked = [...this.parked].sort((a, b) => units.clusters[b]! - units.clusters[a]!);
    for (const u of parked) {
      const n = units.clusters[u]!;
      const to = this.findFree(n, 0, this.goalEnd, 0);
      if (to >= 0) {
        this.reserve(u, to);
        moves.push({ unit: u, to });
        continue;
      }
      if (n === 1) continue;
      const window = this.bestWindow(n);
      if (window < 0) continue;
      this.stamp.fill(this.waveNo, window, window + n);
      for (let c = window; c < window + n; c++) {
        const v = this.occ[c]!;
        if (v < 0) continue;
        const hole = this.findFree(1, 0, this.goalEnd, 0);
        if (hole < 0) break;
        this.stamp[hole] = this.waveNo;
        moves.push({ unit: v, to: hole });
      }
    }
    return moves;
  }

  /** Start of the n-cluster window below the goal's end with the most free clusters and only single units, or -1. */
  private bestWindow(n: number): number {
    let best = -1;
    let bestFree = -1;
    let free = 0;
    let blocked = 0;
    const bad = (c: number) => {
      const v = this.occ[c]!;
      return v === -2 || (v >= 0 && this.units.isTable[v] === 1) || this.stamp[c] === this.waveNo;
    };
    for (let c = 0; c < this.goalEnd; c++) {
      if (this.occ[c] === -1 && this.stamp[c] !== this.waveNo) free++;
      if (bad(c)) blocked++;
      if (c >= n) {
        const out = c - n;
        if (this.occ[out] === -1 && this.stamp[out] !== this.waveNo) free--;
        if (bad(out)) blocked--;
      }
      if (c >= n - 1 && blocked === 0 && free > bestFree) {
        best = c - n + 1;
        bestFree = free;
      }
    }
    return best;
  }

  apply(moves: readonly Move[]): void {
    const { units } = this;
    for (const { unit } of moves) this.occ.fill(-1, units.pos[unit]!, units.pos[unit]! + units.clusters[unit]!);
    for (const { unit, to } of moves) {
      this.occ.fill(unit, to, to + units.clusters[unit]!);
      units.pos[unit] = to;
      if (to >= this.goalEnd) this.parked.add(unit);
      else this.parked.delete(unit);
      // A unit moved off its goal (out of a window a table settles into) is pending again.
      if (to !== this.goal[unit] && !this.pendingSet.has(unit)) {
        this.pending.push(unit);
        this.pendingSet.add(unit);
      }
    }
  }

  /** One past the highest cluster in use. */
  usedEnd(floor: number): number {
    let end = floor;
    for (let u = 0; u < this.units.count; u++) end = Math.max(end, this.units.pos[u]! + this.units.clusters[u]!);
    return end;
  }
}

/**
 * Carries out one planned wave (copies into free space, logged pointer switches; see Session.wave): a table that
 * moves in the same wave gets the pointers inside it written at its new place. Returns the bytes copied; the
 * caller then applies the wave to its planner.
 */
export async function performWave(session: Session, units: UnitTable, locator: PointerLocator, C: number, wave: readonly Move[]): Promise<number> {
  const destination = new Map<number, number>();
  for (const m of wave) if (units.isTable[m.unit]) destination.set(m.unit, m.to);
  const moving = (unit: number) => destination.get(unit);
  const copies: CopyRun[] = [];
  const switches: PointerSwitch[] = [];
  let bytes = 0;
  for (const { unit, to } of wave) {
    const length = units.clusters[unit]! * C;
    copies.push({ from: units.pos[unit]! * C, to: to * C, length });
    const format = units.formats.list[units.format[unit]!]!;
    switches.push({ at: locator.locate(units.pointer[unit]!, moving), format, target: to * C });
    if (units.mirror[unit]! >= 0) switches.push({ at: locator.locate(units.mirror[unit]!, moving), format, target: to * C });
    bytes += length;
  }
  await session.wave(copies, switches);
  return bytes;
}

/** The largest unit, in clusters. */
export function largestUnit(units: UnitTable): number {
  let largest = 1;
  for (let u = 0; u < units.count; u++) largest = Math.max(largest, units.clusters[u]!);
  return largest;
}

export function spareFor(options: Pick<DefragOptions, 'spareBytes'>, units: UnitTable, C: number): number {
  let largest = 1;
  let total = 0;
  for (let u = 0; u < units.count; u++) {
    largest = Math.max(largest, units.clusters[u]!);
    total += units.clusters[u]!;
  }
  const wanted = options.spareBytes ?? Math.min(DEFAULT_SPARE, Math.max(C, Math.floor((total * C) / 8)));
  // A table's window may have to be cleared into it while the table itself goes there too.
  return Math.max(2 * largest, Math.floor(wanted / C));
}

/** Moves the image's units so that host order follows guest order (see defragGoal), in waves, within a budget. */
export async function defragImage(io: BlockIO, driver: Driver, options: DefragOptions = {}): Promise<DefragReport> {
  const fileSizeBefore = await io.size();
  const openOptions = options.openOptions ?? {};
  const started = Date.now();
  const { s, units, goal, goalEnd, before } = await opened(io, driver, fileSizeBefore, openOptions, async (image) => {
    const s = await surveyed(driver, image, 'defragment');
    const units = await listUnits(image, s);
    return { s, units, ...(await defragGoal(image, s, units)), before: await measureFragmentation(image) };
  });
  const C = s.clusterSize;
  const imageEndCluster = Math.max(Math.ceil(fileSizeBefore / C), s.endCluster);
  const wanted = spareFor(options, units, C);
  const spare = coveredSpare(s.counts, C, Math.max(imageEndCluster, goalEnd), wanted, Math.min(wanted, 2 * largestUnit(units)), 'defragment');
  const spareEnd = Math.max(imageEndCluster, goalEnd) + spare;
  const planner = new DefragPlanner(units, goal, goalEnd, spareEnd, s.fixed, s.headerClusters);
  const outOfPlace = planner.pending.length;
  // Breaking a cycle takes 3 moves (park, fill, settle); clearing a table's window twice its size and 2 more: a
  // smaller budget could never progress.
  let largest = 1;
  for (let u = 0; u < units.count; u++) if (units.isTable[u]) largest = Math.max(largest, units.clusters[u]!);
  const maxMoves = options.maxMoves === undefined ? Number.POSITIVE_INFINITY : Math.max(options.maxMoves, 2 * largest + 2, 3);
  const report = (done: boolean, dryRun: boolean, moved: number, bytes: number, waves: number, flushes: number, after: Fragmentation, fileSizeAfter: number, planned: number, extra: number): DefragReport => ({
    done,
    dryRun,
    unitsMoved: moved,
    bytesMoved: bytes,
    movesPlanned: planned,
    unitsOutOfPlace: outOfPlace,
    budget: Number.isFinite(maxMoves) ? maxMoves : undefined,
    waves,
    flushes,
    before,
    after,
    fileSizeBefore,
    fileSizeAfter,
    extraBytes: extra,
    clusterSize: C,
  });

  if (options.dryRun) {
    // Simulate the whole plan (no budget): how many moves and waves it takes.
    let moved = 0;
    let waves = 0;
    let highest = 0;
    for (let wave = planner.next(Number.POSITIVE_INFINITY); wave.length > 0; wave = planner.next(Number.POSITIVE_INFINITY)) {
      planner.apply(wave);
      moved += wave.length;
      waves++;
      for (const m of wave) highest = Math.max(highest, m.to + units.clusters[m.unit]!);
    }
    const extra = Math.max(0, highest * C - fileSizeBefore);
    return report(outOfPlace === 0, true, 0, 0, 0, 0, before, fileSizeBefore, moved, extra);
  }
  if (outOfPlace === 0 && fileSizeBefore <= goalEnd * C) return report(true, false, 0, 0, 0, 0, before, fileSizeBefore, 0, 0);

  const session = await Session.begin(io, driver, imageEndCluster * C, spare * C, C, undefined, s.counts);
  const locator = new PointerLocator(units, C);
  let moved = 0;
  let bytes = 0;
  let waves = 0;
  let done = false;
  for (;;) {
    // Out of time, or asked to stop: no new moves, the parked units are settled, the image is left clean.
    const stop = (options.maxMilliseconds !== undefined && Date.now() - started >= options.maxMilliseconds) || options.signal?.aborted === true;
    const allowance = (stop ? 0 : maxMoves - moved) - planner.reserveNeeded();
    let wave = planner.next(Math.max(0, allowance));
    if (wave.length === 0 && planner.parked.size > 0) wave = planner.settle();
    if (wave.length === 0) {
      done = planner.pending.every((u) => units.pos[u] === goal[u]);
      break;
    }
    bytes += await performWave(session, units, locator, C, wave);
    planner.apply(wave);
    planner.firstStep = false;
    moved += wave.length;
    waves++;
    options.onProgress?.(moved, outOfPlace);
  }
  // Nothing is parked past the goal's end: cut the file there (or past the highest unit still above it).
  const end = Math.max(goalEnd, planner.usedEnd(goalEnd));
  await session.end(end * C);
  const fileSizeAfter = await io.size();
  const after = await opened(io, driver, fileSizeAfter, openOptions, (image) => measureFragmentation(image));
  const extraBytes = session.blockOffset + session.blockLength - fileSizeBefore;
  return report(done, false, moved, bytes, waves, session.counters.flushes, after, fileSizeAfter, moved, extraBytes);
}

// ---------------------------------------------------------------------------------------------------------------
// compact

export interface CompactOptions {
  /** Read every data unit; all-zero ones become unallocated (nothing shows through) or zero entries (a backing file). */
  zeroScan?: boolean;
  dryRun?: boolean;
  /** The image has a backing file (whether or not it was opened): zeroed units then become zero entries, never unallocated. */
  hasBacking?: boolean;
  openOptions?: OpenOptions;
  signal?: AbortSignal;
  onProgress?: (phase: 'scan' | 'pack', done: number, total: number) => void;
}

export interface CompactReport {
  dryRun: boolean;
  /** Data units found all zero by the scan. */
  zeroUnits: number;
  /** Of those, switched to unallocated / zero entries. */
  unallocated: number;
  zeroed: number;
  /** All-zero units the format cannot mark (a backing file and no zero entries): kept. */
  kept: number;
  /** Packing (tail units into holes, then truncate). */
  pack: PackReport | undefined;
  fileSizeBefore: number;
  fileSizeAfter: number;
  clusterSize: number;
  flushes: number;
}

/**
 * Compacts an image: with zeroScan, data units that read as zeros are switched to unallocated or zero entries
 * (logged waves, no copy); then the file is packed (pack.ts: units above the packed end move into the holes, the
 * file is cut) so the space no unit references is given back.
 */
export async function compactImage(io: BlockIO, driver: Driver, options: CompactOptions = {}): Promise<CompactReport> {
  const fileSizeBefore = await io.size();
  const openOptions = options.openOptions ?? {};
  const { s, units, zeroAllocated, backing } = await opened(io, driver, fileSizeBefore, openOptions, async (image) => {
    const s = await surveyed(driver, image, 'compact');
    const units = await listUnits(image, s);
    // Zero-allocated clusters read as zeros whatever their host bytes hold: the scan takes them without reading.
    const zeroAllocated = options.zeroScan ? await zeroAllocatedClusters(image, s.clusterSize) : new Set<number>();
    return { s, units, zeroAllocated, backing: options.hasBacking === true || image.info().backing !== undefined };
  });
  const C = s.clusterSize;
  let largestTable = 0;
  for (let u = 0; u < units.count; u++) if (units.isTable[u]) largestTable = Math.max(largestTable, units.clusters[u]!);
  const imageEnd = Math.max(Math.ceil(fileSizeBefore / C), s.endCluster) * C;

  // The scan: data units in host order, read in large pieces.
  const switches: PointerSwitch[] = [];
  const released: { offset: number; length: number }[] = [];
  let zeroUnits = 0;
  let kept = 0;
  let unallocated = 0;
  let zeroed = 0;
  if (options.zeroScan) {
    const data: number[] = [];
    for (let u = 0; u < units.count; u++) if (units.isData[u]) data.push(u);
    data.sort((a, b) => units.pos[a]! - units.pos[b]!);
    for (let i = 0; i < data.length; ) {
      let j = i + 1;
      let length = units.clusters[data[i]!]! * C;
      while (j < data.length && units.pos[data[j]!]! * C === units.pos[data[i]!]! * C + length && length < COPY_CHUNK) {
        length += units.clusters[data[j]!]! * C;
        j++;
      }
      const bytes = await io.read(units.pos[data[i]!]! * C, length);
      let at = 0;
      for (let k = i; k < j; k++) {
        const u = data[k]!;
        const n = units.clusters[u]! * C;
        if (zeroAllocated.has(units.pos[u]!) || isAllZero(bytes.subarray(at, at + n))) {
          zeroUnits++;
          const format = units.formats.list[units.format[u]!]!;
          const target = backing ? (format.zeroValue !== undefined ? 'zero' : undefined) : format.unallocatedValue !== undefined ? 'unallocated' : format.zeroValue !== undefined ? 'zero' : undefined;
          if (target === undefined) kept++;
          else {
            if (target === 'zero') zeroed++;
            else unallocated++;
            // Data units are never inside a table that moves here: their pointers are where they were listed.
            switches.push({ at: units.pointer[u]!, format, target });
            released.push({ offset: units.pos[u]! * C, length: units.clusters[u]! * C });
            if (units.mirror[u]! >= 0) switches.push({ at: units.mirror[u]!, format, target });
          }
        }
        at += n;
      }
      options.onProgress?.('scan', j, data.length);
      i = j;
    }
  }
  const base = { zeroUnits, unallocated, zeroed, kept, fileSizeBefore, clusterSize: C };
  if (options.dryRun) {
    const held = s.usedClusters + s.headerClusters - (unallocated + zeroed);
    return { ...base, dryRun: true, pack: undefined, fileSizeAfter: Math.min(fileSizeBefore, Math.max(held, s.fixedEnd) * C), flushes: 0 };
  }
  // Nothing to switch and nothing unreferenced below the end: leave the file alone (not even a record).
  if (switches.length === 0 && fileSizeBefore <= Math.max(s.headerClusters + s.usedClusters, s.fixedEnd) * C) {
    return { ...base, dryRun: false, pack: undefined, fileSizeAfter: fileSizeBefore, flushes: 0 };
  }
  const scratch = largestTable * C;
  const session = await Session.begin(io, driver, imageEnd, scratch, C, undefined, s.counts);
  if (switches.length > 0) {
    throwIfAborted(options.signal, io.name, 'nothing was changed');
    await session.wave([], switches, released);
  }
  const packed = await packImage(io, driver, {
    log: session.log,
    imageEnd,
    limit: session.blockOffset,
    scratch: { offset: imageEnd, length: session.blockOffset - imageEnd },
    ...(options.signal ? { signal: options.signal } : {}),
    onProgress: (done, total) => options.onProgress?.('pack', done, total),
  });
  let flushes = session.counters.flushes + packed.flushes;
  if (!packed.done) {
    // Not packable: keep everything referenced, drop the record.
    await session.end(Math.max(imageEnd, packed.referencedEnd));
    flushes++;
  }
  return { ...base, dryRun: false, pack: packed, fileSizeAfter: await io.size(), flushes };
}
