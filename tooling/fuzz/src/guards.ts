import { checkRange, IcError, MemoryIO, type BlockIO, type ByteRange } from '@ic/core';

/**
 * Instruments for a fuzz run. A guard that trips records a violation and throws a GuardTripped (a plain Error,
 * never an IcError), so that the operation stops before the damage (a 4 GiB buffer, a write) is done.
 */
export class GuardTripped extends Error {
  override name = 'GuardTripped';
}

export type ViolationKind =
  /** An IcError with code INTERNAL: ic blamed itself. */
  | 'internal'
  /** Something other than an IcError escaped (TypeError, RangeError, "Array buffer allocation failed"...). */
  | 'exception'
  /** One read longer than the file (plus a margin): a length taken from the image, unchecked. */
  | 'oversized-read'
  /** One buffer bigger than the input (plus a margin). */
  | 'oversized-allocation'
  /** ArrayBuffer memory grew by more than the budget during one mutant. */
  | 'memory'
  /** A write, truncate or flush through the read-only store. */
  | 'write'
  /** The store's bytes differ after the run. */
  | 'modified'
  /** map() broke its contract: gaps, overlaps, empty or unsafe extents, not covering the virtual size. */
  | 'map-invariant'
  /** info() reported an impossible value. */
  | 'info-invariant'
  /** The mutant did not finish within the per-mutant timeout (the worker was killed). */
  | 'timeout'
  /** The worker died (out of memory, native crash). */
  | 'crash';

export interface Violation {
  kind: ViolationKind;
  /** The operation that was running (open, map, convert:qed...). */
  operation: string;
  message: string;
}

/** Where guards report; the harness sets `operation` as it goes. */
export class ViolationLog {
  operation = 'setup';
  readonly violations: Violation[] = [];
  add(kind: ViolationKind, message: string, operation = this.operation): void {
    if (this.violations.length < 32) this.violations.push({ kind, operation, message: message.slice(0, 400) });
  }
  trip(kind: ViolationKind, message: string): never {
    this.add(kind, message);
    throw new GuardTripped(`${kind}: ${message}`);
  }
}

/** Slack allowed past the end of the file for one read (a last cluster or table that ends past EOF). */
export const READ_MARGIN = 2 * 1024 * 1024;

/**
 * A read-only in-memory file that checks every call: no read longer than the file plus READ_MARGIN, no write,
 * truncate or flush. Counts what was read.
 */
export class GuardedIO implements BlockIO {
  readonly writable = false;
  readonly exclusive = true;
  bytesRead = 0;
  reads = 0;

  private readonly length: number;

  /** `store` holds `bytes` and is read-only (MemoryIO with writable: false). */
  constructor(
    private readonly store: MemoryIO,
    private readonly bytes: Uint8Array,
    readonly name: string,
    private readonly log: ViolationLog,
  ) {
    this.length = bytes.length;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(offset, length, 'read');
    if (length > this.length + READ_MARGIN) {
      this.log.trip('oversized-read', `read of ${length} bytes at ${offset} from ${this.name} (${this.length} bytes)`);
    }
    this.reads++;
    this.bytesRead += length;
    return this.store.read(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.log.trip('write', `write of ${data.length} bytes at ${offset} to ${this.name}`);
  }

  async truncate(size: number): Promise<void> {
    this.log.trip('write', `truncate of ${this.name} to ${size}`);
  }

  async flush(): Promise<void> {
    this.log.trip('write', `flush of ${this.name}`);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async close(): Promise<void> {}

  /** Like MemoryIO's (4 KiB blocks of zeros are holes), computed once per file and clipped. */
  async dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    checkRange(offset, length, 'data query');
    const end = Math.min(offset + length, this.length);
    const out: ByteRange[] = [];
    for (const range of dataRangesOf(this.bytes)) {
      const from = Math.max(offset, range.offset);
      const to = Math.min(end, range.offset + range.length);
      if (to > from) out.push({ offset: from, length: to - from });
    }
    return out;
  }
}

const HOLE_BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(HOLE_BLOCK);
const dataRangeCache = new WeakMap<Uint8Array, ByteRange[]>();

/** The non-zero 4 KiB blocks of `bytes`, merged into ranges. */
function dataRangesOf(bytes: Uint8Array): ByteRange[] {
  let ranges = dataRangeCache.get(bytes);
  if (ranges) return ranges;
  ranges = [];
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  for (let at = 0; at < bytes.length; at += HOLE_BLOCK) {
    const to = Math.min(at + HOLE_BLOCK, bytes.length);
    if (buffer.compare(ZERO_BLOCK, 0, to - at, at, to) === 0) continue;
    const last = ranges[ranges.length - 1];
    if (last && last.offset + last.length === at) last.length += to - at;
    else ranges.push({ offset: at, length: to - at });
  }
  dataRangeCache.set(bytes, ranges);
  return ranges;
}

/** A read-only MemoryIO holding `bytes`. */
export function readOnlyStore(bytes: Uint8Array, name: string): MemoryIO {
  return new MemoryIO(bytes, name, { writable: false });
}

/** True when `store` still holds exactly `original`. */
export function storeUnchanged(store: MemoryIO, original: Uint8Array): boolean {
  const now = store.snapshot();
  return now.length === original.length && Buffer.from(now.buffer, now.byteOffset, now.length).equals(Buffer.from(original.buffer, original.byteOffset, original.length));
}

/** Stores of files that are the same from mutant to mutant (unmutated companions), made once. */
const sharedStores = new WeakMap<Uint8Array, MemoryIO>();

/** Opens the companion files of a seed by name, read-only and guarded; anything else is NOT_FOUND. */
export function companionOpener(companions: Record<string, Uint8Array>, log: ViolationLog): (name: string) => Promise<BlockIO> {
  return async (name: string) => {
    const base = name.slice(name.lastIndexOf('/') + 1);
    const bytes = companions[name] ?? companions[base];
    if (!bytes) throw new IcError('NOT_FOUND', `${name}: no such file`, { path: name });
    let store = sharedStores.get(bytes);
    if (!store) sharedStores.set(bytes, (store = readOnlyStore(bytes, base)));
    return new GuardedIO(store, bytes, base, log);
  };
}

type TypedArrayConstructor =
  | Uint8ArrayConstructor
  | Int8ArrayConstructor
  | Uint16ArrayConstructor
  | Int16ArrayConstructor
  | Uint32ArrayConstructor
  | Int32ArrayConstructor
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | BigUint64ArrayConstructor
  | BigInt64ArrayConstructor
  | ArrayBufferConstructor;

const GUARDED = ['Uint8Array', 'Int8Array', 'Uint16Array', 'Int16Array', 'Uint32Array', 'Int32Array', 'Float32Array', 'Float64Array', 'BigUint64Array', 'BigInt64Array', 'ArrayBuffer'] as const;

export interface AllocationGuard {
  /** The largest single allocation allowed now (bytes); set per mutant. */
  limit: number;
  log: ViolationLog | undefined;
  uninstall(): void;
}

/**
 * Replaces the global typed-array and ArrayBuffer constructors with subclasses that refuse (and report) an
 * allocation by length above `limit` bytes, before it happens. instanceof keeps working both ways. Only for a
 * fuzz worker, or around one call in a test.
 */
export function installAllocationGuard(): AllocationGuard {
  const globals = globalThis as unknown as Record<string, TypedArrayConstructor>;
  const originals = new Map<string, TypedArrayConstructor>();
  const guard: AllocationGuard = {
    limit: Number.MAX_SAFE_INTEGER,
    log: undefined,
    uninstall: () => {
      for (const [name, original] of originals) globals[name] = original;
    },
  };
  for (const name of GUARDED) {
    const Original = globals[name]!;
    originals.set(name, Original);
    const bytesPer = name === 'ArrayBuffer' ? 1 : (Original as Uint8ArrayConstructor).BYTES_PER_ELEMENT;
    const Guarded = class extends (Original as unknown as new (...args: unknown[]) => object) {
      constructor(...args: unknown[]) {
        const length = args[0];
        if (typeof length === 'number' && length * bytesPer > guard.limit && guard.log) {
          guard.log.trip('oversized-allocation', `new ${name}(${length}) (${length * bytesPer} bytes; limit ${guard.limit})`);
        }
        super(...args);
      }
      static override [Symbol.hasInstance](value: unknown): boolean {
        return value instanceof (Original as unknown as new () => object);
      }
    };
    Object.defineProperty(Guarded, 'name', { value: name });
    globals[name] = Guarded as unknown as TypedArrayConstructor;
  }
  return guard;
}
