import { alignUp, bytesEqual, hasCapability, IcError, isAllZero, isIcError, itemBatches, type BlockIO, type Driver, type Image, type OpenOptions } from '../sdk/index.js';
import { COPY_CHUNK } from './copy.js';
import { applyDeferred, DeferredOverlay, DeferredWrites, deferredCapacity } from './deferred.js';
import { encodeRecordStart, identityDigest, inspectInterrupted, logOffsetOf, recordBlock, transitionalSector, writeNextSlot, type FoundIntent, type IntentRecord } from './intent.js';
import { DefragPlanner, guestClusters, largestUnit, listUnits, opened, performWave, placeInOrder, PointerLocator, Session, spareFor, surveyed, throwIfAborted, type Move, type UnitTable } from './mover.js';
import { coveredSpare } from './references.js';
import type { Survey } from './pack.js';
import { ReadView } from './view.js';

/**
 * In-place conversion to a format whose file is the guest's bytes and nothing else (capability identityTarget:
 * raw). Guest byte g must end at file byte g, so the data units are permuted into guest order; no second copy of
 * the data is made. Three steps, each leaving the image valid as the source format or in a marked state that
 * `recover` finishes:
 *
 * 1. moves (the mover: mover.ts's planner and waves, its intent record past the end): every data unit whose guest
 *    cluster g is free of the source's own fixed structures goes to host cluster g; the tables, and the data of
 *    the guest clusters the header region and fixed ranges occupy ("reserved" clusters), go to a tail zone past
 *    the disk's end (and past the current units, where cycles of moves go through spare space). A kill re-applies
 *    a torn switch and packs the image (clean, source format); running the command again starts over.
 * 2. zero-fill: clusters below the disk's end that nothing references any more (old places of moved units, old
 *    tables) become file-system holes where the store can punch them, else are written with zeros (holes already
 *    there are skipped). Nothing references them: the source format is unchanged.
 * 3. commit (intent.ts's transitional commit with deferred writes, a second record block past the first): slot B
 *    holds the source's sector 0, the raw sector 0 (guest bytes 0..511) and, in the log area, the deferred writes
 *    that fill the reserved clusters below the disk's end (copies from the tail zone, or zeros). Then the
 *    transitional marker in sector 0, the deferred writes, the raw sector 0, and the file is cut to the virtual
 *    size, which drops the tail zone and both records. `recover` finishes a commit whose marker is down (the
 *    copies read from the tail zone, which nothing else writes) and undoes one whose marker is not (back to the
 *    source with the mover's record at the end, which the next step of the same recovery packs).
 *
 * Extra space during the run: the mover's spare space and record (see mover.ts), the tail zone (the tables and
 * the reserved clusters' data: a few clusters plus the metadata), and the commit's record block (the deferred
 * writes: 32 bytes per reserved cluster). Before the commit the file is as long as the disk plus those at most.
 */

export interface IdentityOptions {
  dryRun?: boolean;
  /** Spare space past the tail zone that cycles of moves go through (mover.ts's default). */
  spareBytes?: number;
  /** Write through a store whose locks are not held (see ConvertInPlaceRequest.allowUnlocked). */
  allowUnlocked?: boolean;
  openOptions?: OpenOptions;
  signal?: AbortSignal;
  onProgress?: (phase: 'move' | 'zero' | 'commit', done: number, total: number) => void;
}

export interface IdentityReport {
  sourceFormat: string;
  targetFormat: string;
  dryRun: boolean;
  virtualSize: number;
  clusterSize: number;
  /** Data units the guest maps (each one cluster for the formats the mover knows). */
  dataUnits: number;
  /** Units not at their goal before the run (data off its guest offset, tables below the tail zone). */
  unitsOutOfPlace: number;
  /** Unit moves (a dry run: the moves the plan takes). */
  unitsMoved: number;
  bytesMoved: number;
  waves: number;
  /** Clusters below the disk's end made to read as zeros before the commit (file holes skipped). */
  clustersZeroed: number;
  /** Clusters made file-system holes (BlockIO.punchHole): old places of moved units, and the zero-fill's where it could. */
  clustersPunched: number;
  /** Clusters the source's header and fixed structures occupy below the disk's end: the commit fills them. */
  reservedClusters: number;
  /** Of those, clusters filled with guest data copied from the tail zone (the rest become zeros). */
  reservedData: number;
  fileSizeBefore: number;
  fileSizeAfter: number;
  /** The most bytes past max(old file size, virtual size) the run used (tail zone, spare space, records). */
  extraBytes: number;
  flushes: number;
}

interface Layout {
  goal: Float64Array;
  goalEnd: number;
  /** Clusters below the disk's end that hold the source's header or fixed ranges. */
  reserved: Uint8Array;
  /** For each reserved cluster below the disk's end: the unit holding its guest data, or -1. */
  reservedUnit: Int32Array;
  dataUnits: number;
  /** The unit mapping guest cluster 0, or -1. */
  firstUnit: number;
}

function refuse(source: Driver, target: Driver, reason: string): IcError {
  return new IcError('UNSUPPORTED', `cannot convert ${source.name} to ${target.name} in place: ${reason}`, { format: source.name });
}

/**
 * Goals: data of guest cluster g at host g unless g is reserved; then, from max(N, header) on (clear of fixed
 * ranges), the tables in the order of their pointers, the reserved clusters' data in guest order, and units the
 * map does not reach (past the disk's end) in host order.
 */
async function identityGoal(image: Image, s: Survey, units: UnitTable, virtualSize: number): Promise<Layout> {
  const C = s.clusterSize;
  const N = Math.ceil(virtualSize / C);
  const guestOf = await guestClusters(image, C);
  const reserved = new Uint8Array(N);
  reserved.fill(1, 0, Math.min(N, s.headerClusters));
  for (const [start, end] of s.fixed) if (start < N) reserved.fill(1, start, Math.min(end, N));
  const reservedUnit = new Int32Array(N).fill(-1);
  const goal = new Float64Array(units.count).fill(-1);
  const tail: number[] = [];
  const key = new Float64Array(units.count);
  let dataUnits = 0;
  let firstUnit = -1;
  for (let u = 0; u < units.count; u++) {
    const g = units.isData[u] ? guestOf.get(units.pos[u]!) : undefined;
    if (g !== undefined && g < N) {
      dataUnits++;
      if (units.clusters[u] !== 1) throw new IcError('UNSUPPORTED', 'a data unit of more than one cluster cannot be placed at its guest offset', { format: image.format });
      if (g === 0) firstUnit = u;
      if (!reserved[g]) {
        goal[u] = g;
        continue;
      }
      reservedUnit[g] = u;
      key[u] = g;
    } else if (!units.isData[u]) key[u] = -1e15 + units.pointer[u]!;
    else key[u] = 1e15 + units.pos[u]!;
    tail.push(u);
  }
  tail.sort((a, b) => key[a]! - key[b]!);
  const cursor = placeInOrder(tail, units, s, Math.max(N, s.headerClusters), goal);
  return { goal, goalEnd: Math.max(cursor, s.fixedEnd, N), reserved, reservedUnit, dataUnits, firstUnit };
}

/** Runs [start, end) of clusters below `limit` that hold nothing (not reserved, no unit) and may hold bytes. */
async function staleRuns(io: BlockIO, layout: Layout, units: UnitTable, limit: number, C: number): Promise<[number, number][]> {
  const busy = new Uint8Array(limit);
  busy.set(layout.reserved.subarray(0, limit));
  for (let u = 0; u < units.count; u++) {
    const p = units.pos[u]!;
    if (p < limit) busy.fill(1, p, Math.min(limit, p + units.clusters[u]!));
  }
  const runs: [number, number][] = [];
  for (let c = 0; c < limit; ) {
    if (busy[c]) {
      c++;
      continue;
    }
    let end = c + 1;
    while (end < limit && !busy[end]) end++;
    runs.push([c, end]);
    c = end;
  }
  if (!io.dataRanges) return runs;
  // Holes of the file read as zeros already: only the parts that may hold data are written.
  const out: [number, number][] = [];
  for (const [start, end] of runs) {
    for (const range of await io.dataRanges(start * C, (end - start) * C)) {
      const a = Math.floor(range.offset / C);
      const b = Math.ceil((range.offset + range.length) / C);
      if (b > a) out.push([Math.max(a, start), Math.min(b, end)]);
    }
  }
  return out;
}

/** The most bytes one wave copies: every copy lies beside its original until the wave's switch (extra disk space). */
export const IDENTITY_WAVE_BYTES = 64 * 1024 * 1024;

/** The planner's next wave, cut to IDENTITY_WAVE_BYTES (at least one move): any part of a wave is a wave. */
function nextWave(planner: DefragPlanner, units: UnitTable, C: number): Move[] {
  const wave = planner.next(Number.POSITIVE_INFINITY);
  let bytes = 0;
  let take = 0;
  while (take < wave.length && (take === 0 || bytes + units.clusters[wave[take]!.unit]! * C <= IDENTITY_WAVE_BYTES)) bytes += units.clusters[wave[take++]!.unit]! * C;
  return wave.slice(0, take);
}

/**
 * After a wave, the old places of its units that nothing took (the switch is durable: nothing references them)
 * become file-system holes where the store can punch them, so the copies do not add up on disk. Returns the
 * clusters punched.
 */
async function punchVacated(io: BlockIO, planner: DefragPlanner, units: UnitTable, wave: readonly Move[], from: readonly number[], C: number): Promise<number> {
  if (!io.punchHole) return 0;
  const free: number[] = [];
  for (let i = 0; i < wave.length; i++) {
    const end = from[i]! + units.clusters[wave[i]!.unit]!;
    for (let c = from[i]!; c < end; c++) if (planner.occ[c] === -1) free.push(c);
  }
  free.sort((a, b) => a - b);
  // Runs of neighbouring clusters go in one call.
  let punched = 0;
  for (let i = 0; i < free.length; ) {
    let j = i + 1;
    while (j < free.length && free[j] === free[j - 1]! + 1) j++;
    if (!(await io.punchHole(free[i]! * C, (j - i) * C))) return punched;
    punched += j - i;
    i = j;
  }
  return punched;
}

/**
 * Where the prospective image (the file as the commit leaves it) first differs from the source's guest bytes, or
 * undefined. Data extents are compared byte for byte; elsewhere the prospect must read zeros, which only the
 * parts of the file that may hold data need reading for (file holes read as zeros).
 */
async function firstDifference(source: Image, file: BlockIO, prospect: BlockIO, virtualSize: number): Promise<number | undefined> {
  const compare = async (at: number, length: number, expected: ((at: number, length: number) => Promise<Uint8Array>) | undefined): Promise<number | undefined> => {
    for (let done = 0; done < length; done += COPY_CHUNK) {
      const take = Math.min(COPY_CHUNK, length - done);
      const actual = await prospect.read(at + done, take);
      const wanted = expected ? await expected(at + done, take) : undefined;
      if (wanted ? !bytesEqual(actual, wanted) : !isAllZero(actual)) {
        let i = 0;
        while (wanted ? actual[i] === wanted[i] : actual[i] === 0) i++;
        return at + done + i;
      }
    }
    return undefined;
  };
  const head = await compare(0, Math.min(512, virtualSize), (at, length) => source.read(at, length));
  if (head !== undefined) return head;
  for await (const batch of itemBatches(source.map())) {
    for (const extent of batch) {
      if (extent.kind === 'data') {
        const found = await compare(extent.guestOffset, extent.length, (at, length) => source.read(at, length));
        if (found !== undefined) return found;
        continue;
      }
      const ranges = file.dataRanges ? await file.dataRanges(extent.guestOffset, extent.length) : [{ offset: extent.guestOffset, length: extent.length }];
      for (const range of ranges) {
        const from = Math.max(range.offset, extent.guestOffset);
        const to = Math.min(range.offset + range.length, extent.guestOffset + extent.length);
        const found = to > from ? await compare(from, to - from, undefined) : undefined;
        if (found !== undefined) return found;
      }
    }
  }
  return undefined;
}

/** Converts the image in `io` to `target` (a driver with capability identityTarget) in place; see the top. */
export async function convertToIdentity(io: BlockIO, source: Driver, target: Driver, options: IdentityOptions = {}): Promise<IdentityReport> {
  if (!hasCapability(target, 'identityTarget')) throw refuse(source, target, `the ${target.name} driver is not an identity target`);
  if (!options.dryRun) {
    if (!io.writable) throw new IcError('INVALID', `${io.name} is open read-only`);
    if (io.exclusive !== true && !options.allowUnlocked) {
      throw new IcError('LOCKED', `${io.name}: refusing to rewrite an image without holding QEMU's locks on it (another process could be using it)`, { path: io.name });
    }
  }
  if ((await inspectInterrupted(io)) !== 'none') {
    throw new IcError('NEEDS_RECOVERY', `${io.name}: an earlier operation was interrupted; run \`ic recover ${io.name}\` first`, { path: io.name });
  }
  const fileSizeBefore = await io.size();
  const openOptions = options.openOptions ?? {};
  const what = `convert to ${target.name} in place`;
  const { s, units, layout, virtualSize } = await opened(io, source, fileSizeBefore, openOptions, async (image) => {
    const info = image.info();
    if (info.backing) throw refuse(source, target, `the image has a backing file ('${info.backing.name}'), which a ${target.name} image cannot reference; merge it first (qemu-img convert, or qemu-img rebase -b '')`);
    const s = await surveyed(source, image, what);
    const units = await listUnits(image, s);
    return { s, units, layout: await identityGoal(image, s, units, info.virtualSize), virtualSize: info.virtualSize };
  });
  const C = s.clusterSize;
  const N = Math.ceil(virtualSize / C);
  const imageEndCluster = Math.max(Math.ceil(fileSizeBefore / C), s.endCluster);
  const reach = Math.max(imageEndCluster, layout.goalEnd);
  const wanted = spareFor(options, units, C);
  const spare = coveredSpare(s.counts, C, reach, wanted, Math.min(wanted, 2 * largestUnit(units)), what);
  const spareEnd = reach + spare;
  const planner = new DefragPlanner(units, layout.goal, layout.goalEnd, spareEnd, s.fixed, s.headerClusters);
  const outOfPlace = planner.pending.length;
  let reservedClusters = 0;
  let reservedData = 0;
  for (let c = 0; c < N; c++) {
    if (!layout.reserved[c]) continue;
    reservedClusters++;
    if (layout.reservedUnit[c]! >= 0) reservedData++;
  }
  const zeroLimit = Math.min(N, imageEndCluster);
  const base = { sourceFormat: source.name, targetFormat: target.name, virtualSize, clusterSize: C, dataUnits: layout.dataUnits, unitsOutOfPlace: outOfPlace, reservedClusters, reservedData, fileSizeBefore };

  if (options.dryRun) {
    let moved = 0;
    let movedClusters = 0;
    let waves = 0;
    let highest = reach;
    for (let wave = nextWave(planner, units, C); wave.length > 0; wave = nextWave(planner, units, C)) {
      planner.apply(wave);
      moved += wave.length;
      waves++;
      for (const m of wave) {
        movedClusters += units.clusters[m.unit]!;
        highest = Math.max(highest, m.to + units.clusters[m.unit]!);
      }
    }
    let zeroed = 0;
    for (const [a, b] of await staleRuns(io, layout, units, zeroLimit, C)) zeroed += b - a;
    const extraBytes = Math.max(0, highest * C - Math.max(fileSizeBefore, virtualSize));
    return { ...base, dryRun: true, unitsMoved: moved, bytesMoved: movedClusters * C, waves, clustersZeroed: zeroed, clustersPunched: 0, fileSizeAfter: virtualSize, extraBytes, flushes: 0 };
  }

  // From the first write on, a failure leaves a record that `recover` acts on: the error says which way it goes.
  let switching = false;
  try {
    // 1. moves.
    let moved = 0;
    let punched = 0;
    let bytes = 0;
    let waves = 0;
    let flushes = 0;
    let highest = fileSizeBefore;
    if (outOfPlace > 0) {
      const session = await Session.begin(io, source, imageEndCluster * C, spare * C, C, reach * C, s.counts);
      const locator = new PointerLocator(units, C);
      for (let wave = nextWave(planner, units, C); wave.length > 0; wave = nextWave(planner, units, C)) {
        throwIfAborted(options.signal, io.name, `${moved} of the moves`);
        const from = wave.map((m) => units.pos[m.unit]!);
        bytes += await performWave(session, units, locator, C, wave);
        planner.apply(wave);
        punched += await punchVacated(io, planner, units, wave, from, C);
        moved += wave.length;
        waves++;
        options.onProgress?.('move', moved, outOfPlace);
      }
      flushes += session.counters.flushes;
      highest = session.blockOffset + session.blockLength;
    }
    for (let u = 0; u < units.count; u++) {
      if (units.pos[u] !== layout.goal[u]) throw new IcError('INTERNAL', `${io.name}: unit ${u} did not reach its goal (at cluster ${units.pos[u]}, goal ${layout.goal[u]})`);
    }

    // 2. zero-fill what nothing references below the disk's end.
    const stale = await staleRuns(io, layout, units, zeroLimit, C);
    let zeroed = 0;
    const zeros = new Uint8Array(Math.min(COPY_CHUNK, Math.max(C, 1)));
    for (const [a, b] of stale) {
      // A file-system hole where the store can make one (no disk space), else zeros written.
      if (io.punchHole && (await io.punchHole(a * C, (b - a) * C))) {
        punched += b - a;
        zeroed += b - a;
        continue;
      }
      for (let at = a * C; at < b * C; ) {
        const take = Math.min(zeros.length, b * C - at);
        await io.write(at, zeros.subarray(0, take));
        at += take;
      }
      zeroed += b - a;
      options.onProgress?.('zero', zeroed, zeroed);
    }
    if (stale.length > 0) {
      await io.flush();
      flushes++;
    }
    throwIfAborted(options.signal, io.name, 'the moves (the image is the source format still)');

    // 3. the commit: the reserved clusters' guest content as deferred writes, then the raw sector 0.
    const deferred = new DeferredWrites(deferredCapacity(reservedClusters + 1, 0));
    for (let c = 0; c < N; c++) {
      if (!layout.reserved[c]) continue;
      const start = Math.max(c * C, 512);
      const end = Math.min((c + 1) * C, virtualSize);
      if (end <= start) continue;
      const u = layout.reservedUnit[c]!;
      if (u >= 0) deferred.copy(start, units.pos[u]! * C + (start - c * C), end - start);
      else deferred.zero(start, end - start);
    }
    const oldHead = await io.read(0, 512);
    const newHead = layout.firstUnit >= 0 ? await io.read(units.pos[layout.firstUnit]! * C, 512) : new Uint8Array(512);
    if (bytesEqual(oldHead, newHead)) {
      throw refuse(source, target, `the guest's first sector holds exactly the image's own first sector, so the two sides of the switch could not be told apart`);
    }
    const fileSize = await io.size();
    const block = recordBlock(alignUp(Math.max(fileSize, N * C), C), 512, Math.max(512, deferred.encodedLength), C);
    const overlay = new DeferredOverlay(io, deferred.ops());
    // Verify before anything is switched: the file as the commit leaves it reads the source's guest bytes.
    const mismatch = await opened(io, source, fileSize, openOptions, (image) => firstDifference(image, io, new ReadView(io, virtualSize, newHead, 0, overlay), virtualSize));
    if (mismatch !== undefined) throw new IcError('INTERNAL', `${io.name}: the ${target.name} image would differ from the guest at byte ${mismatch}; nothing was switched`);
    throwIfAborted(options.signal, io.name, 'the moves (the image is the source format still)');
    options.onProgress?.('commit', 0, 1);
    const record: IntentRecord = {
      state: 'growing',
      identityDigest: await identityDigest(io),
      fileSizeBefore: fileSize,
      targetFileSize: 0,
      headerRegionSize: 512,
      sourceFormat: source.name,
      targetFormat: target.name,
      pack: 'never',
      packBudget: 0,
      headOffset: 0,
      deferred: false,
      oldHead,
      newHead: oldHead,
    };
    const start = encodeRecordStart(block, record);
    await io.write(start.offset, start.bytes);
    await io.flush();
    const found: FoundIntent = { record, block, slot: 0, sequence: 1 };
    const hasDeferred = deferred.count > 0;
    if (hasDeferred) await io.write(logOffsetOf(block), deferred.encode());
    await writeNextSlot(io, found, { ...record, state: 'committing', targetFileSize: virtualSize, deferred: hasDeferred, newHead });
    await io.flush();
    switching = true;
    if (hasDeferred) {
      // From the marker on, the source is gone: recovery finishes the commit.
      await io.write(0, transitionalSector(block.offset));
      await io.flush();
      await applyDeferred(io, deferred.ops());
      await io.flush();
    }
    await io.write(0, newHead);
    await io.flush();
    await io.truncate(virtualSize);
    await io.flush();
    flushes += hasDeferred ? 6 : 4;
    highest = Math.max(highest, block.offset + block.length);
    options.onProgress?.('commit', 1, 1);
    return {
      ...base,
      dryRun: false,
      unitsMoved: moved,
      bytesMoved: bytes,
      waves,
      clustersZeroed: zeroed,
      clustersPunched: punched,
      fileSizeAfter: await io.size(),
      extraBytes: Math.max(0, highest - Math.max(fileSizeBefore, virtualSize)),
      flushes,
    };
  } catch (error) {
    if (!isIcError(error) || error.code === 'INTERRUPTED') throw error;
    const next = switching
      ? `the commit to ${target.name} had begun: \`ic recover ${io.name}\` finishes it`
      : `the image is still ${source.name}, its data intact: \`ic recover ${io.name}\` tidies up what was moved, then run the conversion again`;
    throw new IcError(error.code, `${error.message}; ${next}`, { path: io.name, cause: error, ...(switching ? { imageFormat: target.name } : {}) });
  }
}
