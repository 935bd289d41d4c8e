import { ClusterBitmap } from '../sdk/bitmap.js';
import { alignUp, IcError, itemBatches, type BlockIO, type Driver, type Image, type PointerFormat, type ReferenceCounts, type UnitRun } from '../sdk/index.js';
import { encodeLog, LOG_INVALID, logEntriesFor, type LogEntry } from './intent.js';
import { copyRuns, type CopyRun } from './copy.js';
import { RunList } from './runs.js';
import { checkCovered, counterSectors, cutRange, type WaveCounts } from './references.js';
import { ReadView } from './view.js';

/**
 * Packing: after a conversion to a format that counts every unreferenced cluster as a leak (QED), move the
 * units that lie above the packed end into the holes below it, then cut the file there.
 *
 * The plan is made from two passes over the image's units (bitmaps and typed arrays, never an object per
 * cluster) and carried out in waves, each crash-safe and tear-safe:
 *   copy every unit of the wave to its new place (free space), flush;
 *   write a redo log of every sector the pointer switches change (inside the intent record block), flush;
 *   write those sectors, flush.
 * A unit's old place is reused only by a later wave, so any subset of one wave's switches leaves a valid image;
 * a torn switch is rewritten whole from the log by `recover`. A move waits for the wave after everything that
 * occupies its destination has left: single units into free clusters go first, tables into the windows they
 * displace units from next, units into what a table straddling the packed end left behind last (two or three
 * waves in practice). The flush count is 3 per wave (plus 2 per extra log chunk when the switches outgrow the
 * log), not per unit.
 */

export interface PackLog {
  /** File offset of the log area, inside the intent record block. */
  offset: number;
  capacity: number;
}

export interface PackOptions {
  log: PackLog;
  /** End of the image itself, as its conversion left it (holes below it are what packing fills); default: the file's size. */
  imageEnd?: number;
  /**
   * Where the intent record block starts: the image is read up to here (an interrupted packing may have moved a
   * table past imageEnd, into the scratch space); default: the file's size.
   */
  limit?: number;
  /** Free space past the image's end a table may be moved through (one table straddling the packed end may need it). */
  scratch?: { offset: number; length: number };
  /** Do nothing when the plan moves more bytes than this (the report says so). */
  maxBytes?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface PackReport {
  /** False when the plan was not carried out (too costly, or the image cannot be packed); the reason says why. */
  done: boolean;
  unitsMoved: number;
  bytesMoved: number;
  /** Bytes the plan moves (equal to bytesMoved when done). */
  bytesPlanned: number;
  /** The file size the packed image has (or would have). */
  packedSize: number;
  fileSizeBefore: number;
  fileSizeAfter: number;
  /** Unreferenced clusters left below the end (0 when done). */
  holesLeft: number;
  /** First byte past every unit and fixed range (a caller that does not pack may cut the file here, not lower). */
  referencedEnd: number;
  waves: number;
  flushes: number;
  reason: string;
}

/** Growable parallel arrays of moves. */
class Moves {
  from = new Float64Array(256);
  to = new Float64Array(256);
  length = new Float64Array(256);
  pointer = new Float64Array(256);
  /** The second pointer naming the unit (a redundant table), or -1. */
  mirror = new Float64Array(256);
  format = new Uint16Array(256);
  isTable = new Uint8Array(256);
  count = 0;

  push(from: number, to: number, length: number, pointer: number, format: number, isTable: boolean, mirror = -1): void {
    if (this.count === this.from.length) this.grow();
    this.from[this.count] = from;
    this.to[this.count] = to;
    this.length[this.count] = length;
    this.pointer[this.count] = pointer;
    this.mirror[this.count] = mirror;
    this.format[this.count] = format;
    this.isTable[this.count] = isTable ? 1 : 0;
    this.count++;
  }

  private grow(): void {
    const size = this.from.length * 2;
    const f64 = (old: Float64Array) => {
      const next = new Float64Array(size);
      next.set(old);
      return next;
    };
    this.from = f64(this.from);
    this.to = f64(this.to);
    this.length = f64(this.length);
    this.pointer = f64(this.pointer);
    this.mirror = f64(this.mirror);
    const format = new Uint16Array(size);
    format.set(this.format);
    this.format = format;
    const isTable = new Uint8Array(size);
    isTable.set(this.isTable);
    this.isTable = isTable;
  }

  bytes(): number {
    let total = 0;
    for (let i = 0; i < this.count; i++) total += this.length[i]!;
    return total;
  }
}

/** Pointer formats seen in the unit stream, deduplicated so a move stores a small index. */
export class Formats {
  readonly list: PointerFormat[] = [];
  private readonly keys = new Map<string, number>();
  index(format: PointerFormat): number {
    const key = `${format.encoding}:${format.unit ?? 1}:${format.base ?? 0}:${format.flags ?? 0n}:${format.zeroValue ?? ''}:${format.unallocatedValue ?? ''}`;
    let index = this.keys.get(key);
    if (index === undefined) {
      index = this.list.length;
      this.list.push(format);
      this.keys.set(key, index);
    }
    return index;
  }
}

/** What a pointer switch writes: a unit's new host offset, or the format's zero or unallocated value. */
export type PointerTarget = number | 'zero' | 'unallocated';

/** The stored value of a pointer to `target` (the special values are stored whole, without flags). */
function pointerValue(format: PointerFormat, target: PointerTarget): bigint {
  if (target === 'zero' || target === 'unallocated') {
    const value = target === 'zero' ? format.zeroValue : format.unallocatedValue;
    if (value === undefined) throw new IcError('INTERNAL', `pack: this pointer format has no ${target} value`);
    return value;
  }
  const unit = format.unit ?? 1;
  const relative = target - (format.base ?? 0);
  if (relative < 0 || relative % unit !== 0) throw new IcError('INTERNAL', `pack: host offset ${target} cannot be encoded with unit ${unit}`);
  return BigInt(relative / unit) | (format.flags ?? 0n);
}

/** Writes the pointer value for `target` into `sector` at byte `at`. */
function encodePointer(sector: DataView, at: number, format: PointerFormat, target: PointerTarget): void {
  const value = pointerValue(format, target);
  switch (format.encoding) {
    case 'u32le':
    case 'u32be':
      if (value > 0xffffffffn) throw new IcError('INTERNAL', `pack: pointer value ${value} does not fit 32 bits`);
      sector.setUint32(at, Number(value), format.encoding === 'u32le');
      return;
    case 'u64le':
      sector.setBigUint64(at, value, true);
      return;
    case 'u64be':
      sector.setBigUint64(at, value, false);
  }
}

export function pointerSize(format: PointerFormat): number {
  return format.encoding.startsWith('u32') ? 4 : 8;
}

/** The unit runs of the survey, kept (typed arrays) for the plan while they are few enough; else the plan lists them again. */
export class UnitCache {
  private rows = new Float64Array(6 * 256);
  private kinds: ('data' | 'table')[] = [];
  private pointers: PointerFormat[] = [];
  count = 0;
  complete = true;
  constructor(private readonly budget: number) {}
  add(run: UnitRun): void {
    if (!this.complete) return;
    if (this.count === this.budget) {
      this.complete = false;
      this.rows = new Float64Array(0);
      this.kinds = [];
      this.pointers = [];
      return;
    }
    if ((this.count + 1) * 6 > this.rows.length) {
      const grown = new Float64Array(this.rows.length * 2);
      grown.set(this.rows);
      this.rows = grown;
    }
    this.rows.set([run.hostOffset, run.unitLength, run.count, run.pointerOffset, run.pointerStride, run.mirrorPointerOffset === undefined ? 0 : run.mirrorPointerOffset + 1], this.count * 6);
    this.kinds.push(run.kind);
    this.pointers.push(run.pointer);
    this.count++;
  }
  *batches(): Generator<UnitRun[]> {
    const out: UnitRun[] = [];
    for (let i = 0; i < this.count; i++) {
      const at = i * 6;
      const run: UnitRun = {
        kind: this.kinds[i]!,
        hostOffset: this.rows[at]!,
        unitLength: this.rows[at + 1]!,
        count: this.rows[at + 2]!,
        pointerOffset: this.rows[at + 3]!,
        pointerStride: this.rows[at + 4]!,
        pointer: this.pointers[i]!,
      };
      if (this.rows[at + 5]! > 0) run.mirrorPointerOffset = this.rows[at + 5]! - 1;
      out.push(run);
      if (out.length === 4096) yield out.splice(0);
    }
    if (out.length > 0) yield out;
  }
}

/** Unit runs kept between the survey and the plan (48 bytes and a reference each). */
const UNIT_CACHE_BUDGET = 1024 * 1024;

export interface Survey {
  units: UnitCache;
  clusterSize: number;
  headerClusters: number;
  /** Clusters referenced by a unit or a fixed range. */
  used: ClusterBitmap;
  /** Multi-cluster units (tables), in clusters. */
  tables: RunList;
  /** Clusters of what the image references besides its units (they never move), in clusters. */
  fixed: RunList;
  fixedEnd: number;
  usedClusters: number;
  /** One past the highest cluster referenced. */
  endCluster: number;
  /** The reference counts that follow the moves (Image.referenceCounts), when the format has them. */
  counts?: ReferenceCounts;
}

async function withImage<T>(io: BlockIO, driver: Driver, work: (image: Image) => Promise<T>): Promise<T> {
  const image = await driver.open(io);
  try {
    return await work(image);
  } finally {
    await image.close();
  }
}

function refuseUnits(driver: Driver, message: string, what = 'pack'): IcError {
  return new IcError('UNSUPPORTED', `${driver.name}: cannot ${what}: ${message}`, { format: driver.name });
}

/** Pass A: what is referenced, as a bitmap over clusters; the tables (multi-cluster units) and fixed ranges as runs. */
export async function survey(driver: Driver, image: Image): Promise<Survey> {
  if (!image.units || !image.conversionSource) throw refuseUnits(driver, 'its images do not list their units');
  const description = await image.conversionSource();
  // The conversion geometry, as info() may leave the cluster size out where qemu-img info shows none (Parallels).
  const clusterSize = image.info().clusterSize ?? description.options.clusterSize;
  if (!clusterSize) throw refuseUnits(driver, 'its images have no cluster size');
  const headerClusters = Math.ceil((description.headerRegionSize ?? 0) / clusterSize);
  const used = new ClusterBitmap();
  const tables = new RunList();
  const units = new UnitCache(UNIT_CACHE_BUDGET);
  let usedClusters = 0;
  for await (const batch of itemBatches(image.units())) {
    for (const run of batch) {
      checkRun(driver, run, clusterSize);
      units.add(run);
      const first = run.hostOffset / clusterSize;
      const unitClusters = run.unitLength / clusterSize;
      const clusters = unitClusters * run.count;
      if (first < headerClusters) throw refuseUnits(driver, `a unit at ${run.hostOffset} lies in the header region`);
      const clash = used.addRange(first, first + clusters);
      if (clash >= 0) throw new IcError('CORRUPT', `${driver.name}: two units share host cluster ${clash}`, { format: driver.name, offset: clash * clusterSize });
      usedClusters += clusters;
      if (unitClusters > 1) for (let k = 0; k < run.count; k++) tables.push(first + k * unitClusters, first + (k + 1) * unitClusters);
    }
  }
  // What the image references besides its units stays where it is.
  let fixedEnd = headerClusters;
  const fixedSet = new ClusterBitmap();
  for await (const batch of itemBatches(description.metadataRanges())) {
    for (const range of batch) {
      if (range.length <= 0) continue;
      const first = Math.max(headerClusters, Math.floor(range.offset / clusterSize));
      const end = Math.ceil((range.offset + range.length) / clusterSize);
      if (end <= first) continue;
      // A metadata range that is a unit is counted already.
      if (used.count(first, end) === end - first && fixedSet.count(first, end) === 0) continue;
      for (let cluster = first; cluster < end; cluster++) {
        if (fixedSet.has(cluster)) continue;
        if (used.has(cluster)) throw refuseUnits(driver, `metadata at ${range.offset} overlaps a unit`);
        fixedSet.add(cluster);
        used.add(cluster);
        usedClusters++;
      }
      fixedEnd = Math.max(fixedEnd, end);
    }
  }
  const fixed = new RunList();
  for (const [start, end] of fixedSet.runs()) fixed.push(start, end);
  let endCluster = headerClusters;
  for (const [, end] of used.runs()) endCluster = Math.max(endCluster, end);
  const counts = image.referenceCounts ? await image.referenceCounts() : undefined;
  return { units, clusterSize, headerClusters, used, tables, fixed, fixedEnd, usedClusters, endCluster, ...(counts ? { counts } : {}) };
}

function checkRun(driver: Driver, run: UnitRun, clusterSize: number): void {
  const ok =
    Number.isSafeInteger(run.hostOffset) &&
    run.hostOffset % clusterSize === 0 &&
    run.unitLength > 0 &&
    run.unitLength % clusterSize === 0 &&
    Number.isSafeInteger(run.count) &&
    run.count > 0 &&
    (run.count === 1 || run.pointerStride >= pointerSize(run.pointer));
  if (!ok) throw refuseUnits(driver, `unit run at ${run.hostOffset} (${run.count} x ${run.unitLength} bytes) is not whole aligned clusters`);
}

interface Plan {
  packedEnd: number;
  /** Moves grouped by dependency: wave k moves only into places free after wave k-1. */
  waves: Moves[];
  formats: Formats;
}

/** Free runs [start, end) of clusters in [from, to) that `used` does not hold. */
function freeRuns(used: ClusterBitmap, from: number, to: number): [number, number][] {
  const out: [number, number][] = [];
  let cursor = from;
  for (const [start, end] of used.runs()) {
    if (end <= cursor) continue;
    if (start >= to) break;
    if (start > cursor) out.push([cursor, Math.min(start, to)]);
    cursor = Math.max(cursor, end);
    if (cursor >= to) break;
  }
  if (cursor < to) out.push([cursor, to]);
  return out;
}

interface SingleMove {
  from: number;
  pointer: number;
  mirror: number;
  format: number;
  table: boolean;
  /** It sits in a table's window and must leave before that table comes. */
  displaced: boolean;
}

interface TableMove {
  from: number;
  clusters: number;
  /** Destination cluster (its window). */
  to: number;
  /** The window is not a free run: it displaces single units. */
  displacing: boolean;
  /** The table straddles the packed end: its clusters below it are freed by its move. */
  straddles: boolean;
  /** Tables whose old place the window overlaps (a straddler): this one moves after them. */
  after: Set<number>;
  pointer: number;
  mirror: number;
  format: number;
  listed: boolean;
  /** First moved to scratch space past the image's end (cluster), when that breaks a dependency cycle. */
  scratch?: number;
}

/**
 * Pass B: which units move where, or why the image cannot be packed.
 *
 * The packed end is where the file ends once nothing unreferenced is left below it. Tables (multi-cluster units)
 * above it get a contiguous window below it: a free run when one is long enough, else the highest window clear of
 * what stays, whose single units are displaced (a window may also take the old place of the table that straddles
 * the packed end, once that one has moved). Single units above the end (and displaced ones) take the free
 * clusters outside the windows, then what the straddling table leaves behind. Each move is then given the wave
 * after the moves it waits for; a straddling table that would wait for its own old place first moves through
 * scratch space past the image's end.
 */
async function planPacking(image: Image, surveyed: Survey, scratch: { offset: number; length: number } | undefined): Promise<Plan | { reason: string }> {
  const { clusterSize: C, headerClusters, used, tables, fixed } = surveyed;
  const packedEnd = Math.max(headerClusters + surveyed.usedClusters, surveyed.fixedEnd);
  const formats = new Formats();

  // What a window can never take: fixed ranges and tables that stay (entirely below the packed end).
  const blocked = new ClusterBitmap();
  for (const [start, end] of fixed) blocked.addRange(start, end);
  const moves = new Map<number, TableMove>();
  /** Clusters below the packed end held by the straddling table (at most one unit can straddle it). */
  let straddler: TableMove | undefined;
  for (const [start, end] of tables) {
    if (end <= packedEnd) {
      blocked.addRange(start, end);
      continue;
    }
    const move: TableMove = { from: start, clusters: end - start, to: -1, displacing: false, straddles: start < packedEnd, after: new Set(), pointer: 0, mirror: -1, format: 0, listed: false };
    moves.set(start, move);
    if (move.straddles) straddler = move;
  }
  // The straddler first (a free run costs it nothing, and a window that displaced units whose only way out is its
  // own old place would be a cycle), then the largest first.
  const order = [...moves.values()].sort((a, b) => Number(b.straddles) - Number(a.straddles) || b.clusters - a.clusters);
  const zone = new ClusterBitmap();
  const runs = freeRuns(used, headerClusters, packedEnd);
  const scratchCluster = scratch ? alignUp(scratch.offset, C) / C : undefined;
  const scratchFits = (table: TableMove) => scratch !== undefined && scratch.length - (alignUp(scratch.offset, C) - scratch.offset) >= table.clusters * C;
  /** The first cluster of [start, start+length) a window for `table` cannot take, or -1. */
  const clash = (table: TableMove, start: number, ownPlaceFree: boolean): number => {
    let lowest = -1;
    const consider = (c: number) => {
      if (c >= 0 && (lowest < 0 || c < lowest)) lowest = c;
    };
    consider(blocked.firstInRange(start, start + table.clusters));
    consider(zone.firstInRange(start, start + table.clusters));
    // Its own old place: a copy must not overlap what it copies (unless it went through scratch space first).
    if (!ownPlaceFree && start < table.from + table.clusters && table.from < start + table.clusters) consider(Math.max(start, table.from));
    return lowest;
  };
  let cursor = packedEnd;
  const highestWindow = (table: TableMove, ownPlaceFree: boolean): number => {
    let windowStart = cursor - table.clusters;
    while (windowStart >= headerClusters) {
      const at = clash(table, windowStart, ownPlaceFree);
      if (at < 0) return windowStart;
      windowStart = at - table.clusters;
    }
    return -1;
  };
  for (const table of order) {
    const run = runs.find(([start, end]) => end - start >= table.clusters && clash(table, start, false) < 0);
    if (run) {
      table.to = run[0];
      run[0] += table.clusters;
    } else {
      let windowStart = highestWindow(table, false);
      // The straddler may need its own old place: it then moves through scratch space first.
      if (windowStart < 0 && table.straddles && scratchFits(table)) {
        windowStart = highestWindow(table, true);
        if (windowStart >= 0) table.scratch = scratchCluster;
      }
      if (windowStart < 0) return { reason: 'no contiguous room below the packed end for a table' };
      table.to = windowStart;
      table.displacing = true;
      cursor = windowStart;
    }
    zone.addRange(table.to, table.to + table.clusters);
    // A window over the straddler's old place waits for the straddler to leave it.
    if (straddler && straddler !== table && straddler.from < table.to + table.clusters && table.to < straddler.from + straddler.clusters) table.after.add(straddler.from);
  }

  const singles: SingleMove[] = [];
  for await (const batch of surveyed.units.complete ? surveyed.units.batches() : itemBatches(image.units!())) {
    for (const run of batch) {
      const unitClusters = run.unitLength / C;
      const format = formats.index(run.pointer);
      const firstCluster = run.hostOffset / C;
      if (unitClusters === 1 && firstCluster + run.count <= packedEnd && zone.count(firstCluster, firstCluster + run.count) === 0) continue;
      for (let k = 0; k < run.count; k++) {
        const from = firstCluster + k * unitClusters;
        const pointer = run.pointerOffset + k * run.pointerStride;
        const mirror = run.mirrorPointerOffset === undefined ? -1 : run.mirrorPointerOffset + k * run.pointerStride;
        if (unitClusters > 1) {
          const move = moves.get(from);
          if (move) Object.assign(move, { pointer, mirror, format, listed: true });
          continue;
        }
        // A single cluster moves when it lies above the packed end or in a table's window.
        if (from < packedEnd && !zone.has(from)) continue;
        singles.push({ from, pointer, mirror, format, table: run.kind === 'table', displaced: from < packedEnd });
      }
    }
  }
  if ([...moves.values()].some((move) => !move.listed)) return { reason: 'the units of the image were not listed the same way twice' };

  // Destinations of single units: free clusters outside the windows (usable at once), displaced units first; then
  // what the straddler leaves behind outside the windows (usable once it has moved).
  singles.sort((a, b) => Number(b.displaced) - Number(a.displaced));
  const freedLater: number[] = [];
  if (straddler) for (let c = straddler.from; c < packedEnd; c++) if (!zone.has(c)) freedLater.push(c);
  const singleTo = new Float64Array(singles.length);
  const intoFreed = new Uint8Array(singles.length);
  // Holes: the free runs below the packed end (a few, however large the image), minus the windows.
  const holeRuns = freeRuns(used, headerClusters, packedEnd);
  let run = 0;
  let holeCursor = holeRuns[0]?.[0] ?? packedEnd;
  const nextHole = (): number => {
    for (;;) {
      while (run < holeRuns.length && holeCursor >= holeRuns[run]![1]) {
        run++;
        holeCursor = holeRuns[run]?.[0] ?? packedEnd;
      }
      if (run >= holeRuns.length) return -1;
      if (!zone.has(holeCursor)) return holeCursor++;
      holeCursor++;
    }
  };
  let later = 0;
  for (let i = 0; i < singles.length; i++) {
    const hole = nextHole();
    if (hole >= 0) singleTo[i] = hole;
    else if (later < freedLater.length) {
      singleTo[i] = freedLater[later++]!;
      intoFreed[i] = 1;
    } else return { reason: 'the image has fewer free clusters below its packed end than units that must move there' };
  }

  // A straddler whose window displaces units could wait (through them) for its own old place: it first moves to
  // scratch space, which frees its old place in wave 1.
  if (straddler?.displacing && straddler.scratch === undefined && scratchFits(straddler)) straddler.scratch = scratchCluster;

  // Waves: a move goes once everything that occupies its destination has gone.
  const displacedBy = new Map<number, number>(); // window cluster -> index in singles of the unit that sits there
  singles.forEach((unit, i) => {
    if (unit.displaced) displacedBy.set(unit.from, i);
  });
  const singleLevel = new Int32Array(singles.length);
  const tableLevel = new Map<number, number>();
  const visiting = new Set<number>();
  /** Wave in which `table`'s old place below the packed end is free. */
  const freedAt = (table: TableMove): number => (table.scratch !== undefined ? 1 : levelOfTable(table));
  const levelOfTable = (table: TableMove): number => {
    const known = tableLevel.get(table.from);
    if (known !== undefined) return known;
    if (visiting.has(table.from)) return -1;
    visiting.add(table.from);
    let level = table.scratch !== undefined ? 2 : 1;
    for (let c = table.to; c < table.to + table.clusters; c++) {
      const occupant = displacedBy.get(c);
      if (occupant === undefined) continue;
      const before = levelOfSingle(occupant);
      if (before < 0) return -1;
      level = Math.max(level, before + 1);
    }
    for (const from of table.after) {
      const before = freedAt(moves.get(from)!);
      if (before < 0) return -1;
      level = Math.max(level, before + 1);
    }
    tableLevel.set(table.from, level);
    return level;
  };
  const levelOfSingle = (index: number): number => {
    if (singleLevel[index]! > 0) return singleLevel[index]!;
    const level = intoFreed[index] ? freedAt(straddler!) + 1 : 1;
    if (level <= 0) return -1;
    singleLevel[index] = level;
    return level;
  };
  const waves: Moves[] = [];
  const waveOf = (level: number): Moves => {
    while (waves.length < level) waves.push(new Moves());
    return waves[level - 1]!;
  };
  for (let i = 0; i < singles.length; i++) {
    const level = levelOfSingle(i);
    if (level < 0) return { reason: 'the moves depend on each other in a cycle' };
    const unit = singles[i]!;
    waveOf(level).push(unit.from * C, singleTo[i]! * C, C, unit.pointer, unit.format, unit.table, unit.mirror);
  }
  for (const table of moves.values()) {
    const level = levelOfTable(table);
    if (level < 0) return { reason: 'the moves depend on each other in a cycle' };
    if (table.scratch !== undefined) waveOf(1).push(table.from * C, table.scratch * C, table.clusters * C, table.pointer, table.format, true, table.mirror);
    waveOf(level).push(table.from * C, table.to * C, table.clusters * C, table.pointer, table.format, true, table.mirror);
  }
  return { packedEnd: packedEnd * C, waves: waves.filter((wave) => wave.count > 0), formats };
}

/** Moved tables so far: pointers inside them are written at their new place. */
class Relocations {
  private from: number[] = [];
  private to: number[] = [];
  private length: number[] = [];
  add(from: number, to: number, length: number): void {
    this.from.push(from);
    this.to.push(to);
    this.length.push(length);
  }
  /** Where the byte at `offset` lives now: the moves applied in the order they happened (a table may move twice). */
  translate(offset: number): number {
    let at = offset;
    for (let i = 0; i < this.from.length; i++) {
      if (at >= this.from[i]! && at < this.from[i]! + this.length[i]!) at = this.to[i]! + (at - this.from[i]!);
    }
    return at;
  }
}

async function runWave(
  io: BlockIO,
  wave: Moves,
  formats: Formats,
  moved: Relocations,
  log: PackLog,
  sequence: { value: number },
  counters: { flushes: number; moved: number; bytes: number },
  options: PackOptions,
  total: number,
  references: WaveCounts | undefined,
): Promise<void> {
  const copies: CopyRun[] = [];
  for (let i = 0; i < wave.count; i++) copies.push({ from: moved.translate(wave.from[i]!), to: wave.to[i]!, length: wave.length[i]! });
  // Tables of this wave are at their new place once copied: pointers inside them are written there.
  const waveTables = new Relocations();
  for (let i = 0; i < wave.count; i++) if (wave.isTable[i]) waveTables.add(moved.translate(wave.from[i]!), wave.to[i]!, wave.length[i]!);
  const switches: PointerSwitch[] = [];
  for (let i = 0; i < wave.count; i++) {
    const format = formats.list[wave.format[i]!]!;
    switches.push({ at: waveTables.translate(moved.translate(wave.pointer[i]!)), format, target: wave.to[i]! });
    if (wave.mirror[i]! >= 0) switches.push({ at: waveTables.translate(moved.translate(wave.mirror[i]!)), format, target: wave.to[i]! });
  }
  await switchWave(io, copies, switches, log, sequence, counters, references);
  for (let i = 0; i < wave.count; i++) {
    if (wave.isTable[i]) moved.add(moved.translate(wave.from[i]!), wave.to[i]!, wave.length[i]!);
    counters.moved++;
    counters.bytes += wave.length[i]!;
  }
  options.onProgress?.(counters.moved, total);
}

/** One pointer switch: the pointer at file offset `at` comes to name `target`. */
export interface PointerSwitch {
  at: number;
  format: PointerFormat;
  target: PointerTarget;
}

/**
 * One crash-safe, tear-safe wave of moves, the primitive packing and the mover share:
 *   copy every unit to its new place (free space: nothing references it), flush;
 *   write a redo log of every sector the pointer switches change (whole sectors), flush;
 *   write those sectors, flush.
 * Any subset of the switches leaves a valid image (each names a complete copy, the old places are still intact);
 * a torn sector is rewritten whole from the log by `recover`. The caller reuses a unit's old place only in a
 * later wave. The previous wave's log is invalidated in the same epoch as the copies: if that write is lost,
 * recover re-applies a log that is already applied (harmless). Switches with more sectors than the log holds go
 * in chunks (2 more flushes each), each chunk a valid subset. With `references` (a format with reference counts), the
 * counters of the new places are set to 1 before the switches and those of the old places to 0 after them, each
 * through the log (references.ts).
 */
export async function switchWave(
  io: BlockIO,
  copies: readonly CopyRun[],
  switches: readonly PointerSwitch[],
  log: PackLog,
  sequence: { value: number },
  counters: { flushes: number },
  references?: WaveCounts,
): Promise<void> {
  // With reference counts (see references.ts): the new places count 1 before the switches, the old ones 0 after.
  const claimed = references ? copies.map((copy) => ({ offset: copy.to, length: copy.length })) : [];
  const released = references ? [...copies.map((copy) => ({ offset: copy.from, length: copy.length })), ...(references.released ?? [])] : [];
  if (references) checkCovered(references.counts, claimed);
  await io.write(log.offset, LOG_INVALID);
  await copyRuns(io, copies, () => undefined);
  await io.flush();
  counters.flushes++;
  const state = { first: true };
  if (references && claimed.length > 0) await logAndApply(io, await counterSectors(io, references.counts, references.clusterSize, claimed, 1), log, sequence, counters, state);
  const sectors = new Map<number, Uint8Array>();
  for (const change of switches) {
    const at = change.at;
    const sectorOffset = at - (at % 512);
    if (at + pointerSize(change.format) > sectorOffset + 512) throw new IcError('INTERNAL', `pack: the pointer at ${at} crosses a sector boundary`);
    let sector = sectors.get(sectorOffset);
    if (!sector) {
      sector = await io.read(sectorOffset, 512);
      sectors.set(sectorOffset, sector);
    }
    encodePointer(new DataView(sector.buffer, sector.byteOffset, 512), at - sectorOffset, change.format, change.target);
  }
  await logAndApply(io, sectors, log, sequence, counters, state);
  if (references && released.length > 0) await logAndApply(io, await counterSectors(io, references.counts, references.clusterSize, released, 0), log, sequence, counters, state);
}

/** Sectors written through the redo log: logged, flushed, written, flushed (in chunks when they outgrow the log). */
async function logAndApply(io: BlockIO, sectors: Map<number, Uint8Array>, log: PackLog, sequence: { value: number }, counters: { flushes: number }, state: { first: boolean }): Promise<void> {
  const offsets = [...sectors.keys()].sort((a, b) => a - b);
  const perLog = logEntriesFor(log.capacity);
  if (perLog === 0) throw new IcError('INTERNAL', 'pack: no room for a redo log');
  for (let first = 0; first < offsets.length; first += perLog) {
    const chunk: LogEntry[] = offsets.slice(first, first + perLog).map((offset) => ({ offset, sector: sectors.get(offset)! }));
    if (!state.first) await io.write(log.offset, LOG_INVALID);
    state.first = false;
    await io.write(log.offset, encodeLog(chunk, ++sequence.value));
    await io.flush();
    await applyLog(io, chunk);
    await io.flush();
    counters.flushes += 2;
  }
}

/** Before the file is cut at `end`: the counters of the clusters cut off become 0 (logged: the record is still there). */
export async function clearCut(io: BlockIO, counts: ReferenceCounts, clusterSize: number, end: number, log: PackLog, sequence: { value: number }, counters: { flushes: number }): Promise<void> {
  const ranges = cutRange(counts, clusterSize, end, await io.size());
  if (ranges.length > 0) await logAndApply(io, await counterSectors(io, counts, clusterSize, ranges, 0), log, sequence, counters, { first: false });
}

/** Writes the sectors of a log, contiguous ones together. */
export async function applyLog(io: BlockIO, entries: readonly LogEntry[]): Promise<void> {
  const sorted = [...entries].sort((a, b) => a.offset - b.offset);
  for (let i = 0; i < sorted.length; ) {
    let j = i + 1;
    while (j < sorted.length && sorted[j]!.offset === sorted[j - 1]!.offset + 512 && j - i < 8192) j++;
    const bytes = new Uint8Array((j - i) * 512);
    for (let k = i; k < j; k++) bytes.set(sorted[k]!.sector, (k - i) * 512);
    await io.write(sorted[i]!.offset, bytes);
    i = j;
  }
}

/**
 * Packs the image in `io` (see the comment at the top). The caller has made the intent record durable: its log
 * area is where the switches are logged, and cutting the file at the packed end drops the record too.
 */
export async function packImage(io: BlockIO, driver: Driver, options: PackOptions): Promise<PackReport> {
  const fileSizeBefore = await io.size();
  // The image is read up to the intent record block; writes go to the file itself.
  const view = new ReadView(io, options.limit ?? fileSizeBefore);
  const { surveyed, plan } = await withImage(view, driver, async (image) => {
    const surveyed = await survey(driver, image);
    // Scratch space the reference counts do not cover cannot take a table.
    const counts = surveyed.counts;
    const scratch = options.scratch && counts ? { offset: options.scratch.offset, length: Math.max(0, Math.min(options.scratch.length, counts.coveredEnd - options.scratch.offset)) } : options.scratch;
    return { surveyed, plan: await planPacking(image, surveyed, scratch) };
  });
  const holesBelow = (end: number) => Math.max(0, end - surveyed.headerClusters - surveyed.used.count(surveyed.headerClusters, end));
  const notDone = (reason: string, bytesPlanned: number, packedSize: number): PackReport => ({
    done: false,
    unitsMoved: 0,
    bytesMoved: 0,
    bytesPlanned,
    packedSize,
    fileSizeBefore,
    fileSizeAfter: fileSizeBefore,
    holesLeft: holesBelow(Math.max(surveyed.endCluster, Math.ceil((options.imageEnd ?? fileSizeBefore) / surveyed.clusterSize))),
    referencedEnd: surveyed.endCluster * surveyed.clusterSize,
    waves: 0,
    flushes: 0,
    reason,
  });
  if ('reason' in plan) return notDone(plan.reason, 0, fileSizeBefore);
  const bytesPlanned = plan.waves.reduce((sum, wave) => sum + wave.bytes(), 0);
  if (options.maxBytes !== undefined && bytesPlanned > options.maxBytes) {
    return notDone(`packing would move ${bytesPlanned} bytes, more than the ${options.maxBytes} allowed`, bytesPlanned, plan.packedEnd);
  }
  const counters = { flushes: 0, moved: 0, bytes: 0 };
  const total = plan.waves.reduce((sum, wave) => sum + wave.count, 0);
  const moved = new Relocations();
  const sequence = { value: 0 };
  const references = surveyed.counts ? { counts: surveyed.counts, clusterSize: surveyed.clusterSize } : undefined;
  for (const wave of plan.waves) {
    if (options.signal?.aborted) {
      throw new IcError('INTERRUPTED', `${io.name}: packing stopped after ${counters.moved} of ${total} moves; the image is valid; run \`ic recover\` to finish it`, {
        imageFormat: driver.name,
      });
    }
    await runWave(io, wave, plan.formats, moved, options.log, sequence, counters, options, total, references);
  }
  // Everything past the packed end is unreferenced now, the intent record included (and counted 0 first).
  if (surveyed.counts) await clearCut(io, surveyed.counts, surveyed.clusterSize, plan.packedEnd, options.log, sequence, counters);
  await io.truncate(alignUp(plan.packedEnd, surveyed.clusterSize));
  await io.flush();
  counters.flushes++;
  const fileSizeAfter = await io.size();
  return {
    done: true,
    unitsMoved: counters.moved,
    bytesMoved: counters.bytes,
    bytesPlanned,
    packedSize: plan.packedEnd,
    fileSizeBefore,
    fileSizeAfter,
    holesLeft: 0,
    referencedEnd: plan.packedEnd,
    waves: plan.waves.length,
    flushes: counters.flushes,
    reason: total === 0 ? 'no holes to fill' : `filled the holes left by the old metadata (${total} units moved in ${plan.waves.length} wave(s))`,
  };
}
