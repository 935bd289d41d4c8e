import { ByteView, bytesEqual, crc32c, IcError, type BlockIO } from '../sdk/index.js';
import { COPY_CHUNK } from './copy.js';

/**
 * Writes of a conversion that may only happen once the source is gone: they land on bytes the source still
 * references (its metadata, or the old place of a cluster that moved), so they wait until the transitional marker
 * makes the file neither format, and are applied before the new header. Placements need them: a packed target's
 * block slot may hold a source table, a prefixed target's block header may lie on the source's metadata. Every
 * write is idempotent (a copy reads from scratch space nothing else writes), so recovery applies them all again.
 *
 * In the log area of the record block (little-endian):
 *    0 magic "ICDEFERD" | 8 u32 crc32c of bytes 12..end | 12 u32 op count | 16 u32 sector count | 20 u32 0
 *   24 ops: u8 kind (1 copy, 2 write, 3 zero) | u8[7] 0 | u64 destination | u64 source | u64 length
 *      (copy: source is a host offset; write: the index of the first of length/512 consecutive pool sectors)
 *   then the sector pool: 512 bytes each.
 */
const MAGIC = 'ICDEFERD';
const HEADER = 24;
const OP_SIZE = 32;
const SECTOR = 512;
/** Distinct sector contents deferred writes may carry (block headers are nearly all alike). */
export const MAX_POOL_SECTORS = 8192;

export type DeferredOp =
  | { kind: 'copy'; to: number; from: number; length: number }
  | { kind: 'write'; to: number; data: Uint8Array }
  | { kind: 'zero'; to: number; length: number };

const KINDS = ['copy', 'write', 'zero'] as const;

const encoder = new TextEncoder();

/** Deferred writes as they are collected: typed rows and a pool of distinct sectors. */
export class DeferredWrites {
  private rows = new Float64Array(4 * 256);
  count = 0;
  private readonly pool: Uint8Array[] = [];
  private readonly poolIndex = new Map<number, number[]>();

  constructor(readonly capacity: number) {}

  get sectors(): number {
    return this.pool.length;
  }

  /** Bytes the encoded list takes. */
  get encodedLength(): number {
    return encodedLength(this.count, this.pool.length);
  }

  copy(to: number, from: number, length: number): void {
    const last = this.count - 1;
    const r = this.rows;
    if (last >= 0 && r[4 * last] === 1 && r[4 * last + 1]! + r[4 * last + 3]! === to && r[4 * last + 2]! + r[4 * last + 3]! === from) {
      r[4 * last + 3]! += length;
      return;
    }
    this.push(1, to, from, length);
  }

  zero(to: number, length: number): void {
    this.push(3, to, 0, length);
  }

  /** A write of whole aligned sectors; their contents go to the pool once each. */
  write(to: number, data: Uint8Array): void {
    if (to % SECTOR !== 0 || data.length % SECTOR !== 0 || data.length === 0) {
      throw new IcError('UNSUPPORTED', `a write of ${data.length} bytes at ${to} must wait for the commit, and such writes must be whole 512-byte sectors`);
    }
    const indexes: number[] = [];
    for (let at = 0; at < data.length; at += SECTOR) indexes.push(this.intern(data.subarray(at, at + SECTOR)));
    if (indexes.every((index, i) => index === indexes[0]! + i)) this.push(2, to, indexes[0]!, data.length);
    else indexes.forEach((index, i) => this.push(2, to + i * SECTOR, index, SECTOR));
  }

  /** Index of `sector` in the pool (added when new). */
  private intern(sector: Uint8Array): number {
    const key = crc32c(sector);
    const candidates = this.poolIndex.get(key) ?? [];
    for (const index of candidates) if (bytesEqual(this.pool[index]!, sector)) return index;
    if (this.pool.length >= MAX_POOL_SECTORS) {
      throw new IcError('LIMIT', `more than ${MAX_POOL_SECTORS} distinct sectors must wait for the commit`);
    }
    this.pool.push(sector.slice());
    this.poolIndex.set(key, [...candidates, this.pool.length - 1]);
    return this.pool.length - 1;
  }

  private push(kind: number, to: number, from: number, length: number): void {
    if (this.count * 4 === this.rows.length) {
      const grown = new Float64Array(this.rows.length * 2);
      grown.set(this.rows);
      this.rows = grown;
    }
    this.rows.set([kind, to, from, length], 4 * this.count);
    this.count++;
    if (encodedLength(this.count, this.pool.length) > this.capacity) {
      throw new IcError('INTERNAL', `deferred writes outgrew the ${this.capacity} bytes reserved for them`);
    }
  }

  *ops(): Generator<DeferredOp> {
    for (let i = 0; i < this.count; i++) yield this.op(i);
  }

  private op(i: number): DeferredOp {
    const [kind, to, from, length] = this.rows.subarray(4 * i, 4 * i + 4) as unknown as [number, number, number, number];
    if (kind === 1) return { kind: 'copy', to, from, length };
    if (kind === 3) return { kind: 'zero', to, length };
    const data = new Uint8Array(length);
    for (let at = 0; at < length; at += SECTOR) data.set(this.pool[from + at / SECTOR]!, at);
    return { kind: 'write', to, data };
  }

  encode(): Uint8Array {
    const view = ByteView.alloc(alignSector(this.encodedLength));
    view.bytes.set(encoder.encode(MAGIC), 0);
    view.setU32le(12, this.count);
    view.setU32le(16, this.pool.length);
    for (let i = 0; i < this.count; i++) {
      const at = HEADER + i * OP_SIZE;
      view.setU8(at, this.rows[4 * i]!);
      view.setU64le(at + 8, this.rows[4 * i + 1]!);
      view.setU64le(at + 16, this.rows[4 * i + 2]!);
      view.setU64le(at + 24, this.rows[4 * i + 3]!);
    }
    const poolAt = HEADER + this.count * OP_SIZE;
    this.pool.forEach((sector, i) => view.bytes.set(sector, poolAt + i * SECTOR));
    view.setU32le(8, crc32c(view.bytes.subarray(12, this.encodedLength)));
    return view.bytes;
  }
}

function encodedLength(ops: number, sectors: number): number {
  return HEADER + ops * OP_SIZE + sectors * SECTOR;
}

function alignSector(length: number): number {
  return Math.ceil(length / SECTOR) * SECTOR;
}

/** Bytes to reserve for at most `ops` deferred writes carrying at most `sectors` distinct sectors. */
export function deferredCapacity(ops: number, sectors: number): number {
  return ops === 0 ? 0 : alignSector(encodedLength(ops, Math.min(sectors, MAX_POOL_SECTORS)));
}

/** The deferred writes stored at `offset` (a log area of `capacity` bytes), or undefined (none, or damaged). */
export async function readDeferred(io: BlockIO, offset: number, capacity: number): Promise<DeferredOp[] | undefined> {
  if (capacity < HEADER) return undefined;
  const head = new ByteView(await io.read(offset, HEADER));
  if (head.text(0, 8) !== MAGIC) return undefined;
  const count = head.u32le(12);
  const sectors = head.u32le(16);
  if (sectors > MAX_POOL_SECTORS || encodedLength(count, sectors) > capacity) return undefined;
  const bytes = await io.read(offset, encodedLength(count, sectors));
  const view = new ByteView(bytes);
  if (view.u32le(8) !== crc32c(bytes.subarray(12))) return undefined;
  const poolAt = HEADER + count * OP_SIZE;
  const ops: DeferredOp[] = [];
  for (let i = 0; i < count; i++) {
    const at = HEADER + i * OP_SIZE;
    const kind = KINDS[view.u8(at) - 1];
    const to = view.u64le(at + 8);
    const from = view.u64le(at + 16);
    const length = view.u64le(at + 24);
    if (!kind || !Number.isSafeInteger(to + length)) return undefined;
    if (kind === 'copy') ops.push({ kind, to, from, length });
    else if (kind === 'zero') ops.push({ kind, to, length });
    else {
      if (length % SECTOR !== 0 || from + length / SECTOR > sectors) return undefined;
      ops.push({ kind, to, data: bytes.slice(poolAt + from * SECTOR, poolAt + from * SECTOR + length) });
    }
  }
  return ops;
}

/** Applies deferred writes (not flushed). Copies read from scratch space, which nothing else writes. */
export async function applyDeferred(io: BlockIO, ops: Iterable<DeferredOp>): Promise<void> {
  let zeros: Uint8Array | undefined;
  for (const op of ops) {
    if (op.kind === 'write') {
      await io.write(op.to, op.data);
      continue;
    }
    for (let done = 0; done < op.length; ) {
      const take = Math.min(COPY_CHUNK, op.length - done);
      if (op.kind === 'copy') await io.write(op.to + done, await io.read(op.from + done, take));
      else {
        zeros = zeros && zeros.length >= take ? zeros : new Uint8Array(take);
        await io.write(op.to + done, zeros.subarray(0, take));
      }
      done += take;
    }
  }
}

/** The ops a read of [offset, offset+length) sees, for ReadView overlays: sorted by destination. */
export class DeferredOverlay {
  private readonly ops: DeferredOp[];

  constructor(
    private readonly io: BlockIO,
    ops: Iterable<DeferredOp>,
  ) {
    this.ops = [...ops].sort((a, b) => a.to - b.to);
  }

  /** Patches `out` (the bytes read at `offset`) with what the deferred writes put there. */
  async apply(offset: number, out: Uint8Array): Promise<void> {
    const end = offset + out.length;
    // Destinations do not overlap each other: the first op ending past `offset` is found by binary search.
    let low = 0;
    let high = this.ops.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (opEnd(this.ops[middle]!) <= offset) low = middle + 1;
      else high = middle;
    }
    for (let i = low; i < this.ops.length && this.ops[i]!.to < end; i++) {
      const op = this.ops[i]!;
      const from = Math.max(offset, op.to);
      const to = Math.min(end, opEnd(op));
      if (to <= from) continue;
      if (op.kind === 'zero') out.fill(0, from - offset, to - offset);
      else if (op.kind === 'write') out.set(op.data.subarray(from - op.to, to - op.to), from - offset);
      else out.set(await this.io.read(op.from + (from - op.to), to - from), from - offset);
    }
  }
}

function opEnd(op: DeferredOp): number {
  return op.to + (op.kind === 'write' ? op.data.length : op.length);
}
