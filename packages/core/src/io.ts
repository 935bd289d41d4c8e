import { IcError } from './errors.js';

/**
 * The only way a driver touches bytes. Offsets and lengths are plain numbers and must be safe integers;
 * anything past 2^53 is refused, never wrapped.
 */
export interface BlockIO {
  /** A name for messages (the file path, or a label for in-memory stores). */
  readonly name: string;
  readonly writable: boolean;
  /** Exactly `length` bytes; the part past the end of the file reads as zeros. */
  read(offset: number, length: number): Promise<Uint8Array>;
  write(offset: number, data: Uint8Array): Promise<void>;
  size(): Promise<number>;
  truncate(size: number): Promise<void>;
  /** Durability barrier (fdatasync). A failed flush is final: the caller must abort, never retry and go on. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Largest length ic reads or writes in one call; bigger transfers are split by the caller. */
export const MAX_IO_LENGTH = 64 * 1024 * 1024;

export function checkRange(offset: number, length: number, what = 'I/O'): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length)) {
    throw new IcError('OUT_OF_BOUNDS', `${what} range ${offset}+${length} is not addressable`);
  }
}

/** A byte store in memory; used by tests, the matrix and the built-in sample. */
export class MemoryIO implements BlockIO {
  readonly writable: boolean;
  private bytes: Uint8Array;
  private length: number;

  constructor(
    initial: Uint8Array = new Uint8Array(0),
    readonly name = 'memory',
    options: { writable?: boolean } = {},
  ) {
    this.bytes = new Uint8Array(Math.max(initial.length, 4096));
    this.bytes.set(initial);
    this.length = initial.length;
    this.writable = options.writable ?? true;
  }

  /** A copy of the current contents. */
  snapshot(): Uint8Array {
    return this.bytes.slice(0, this.length);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(offset, length, 'read');
    const out = new Uint8Array(length);
    if (offset < this.length) out.set(this.bytes.subarray(offset, Math.min(this.length, offset + length)));
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(offset, data.length, 'write');
    if (!this.writable) throw new IcError('IO', `${this.name} is read-only`);
    this.ensureCapacity(offset + data.length);
    this.bytes.set(data, offset);
    this.length = Math.max(this.length, offset + data.length);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async truncate(size: number): Promise<void> {
    checkRange(size, 0, 'truncate');
    if (!this.writable) throw new IcError('IO', `${this.name} is read-only`);
    this.ensureCapacity(size);
    if (size < this.length) this.bytes.fill(0, size, this.length);
    this.length = size;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  private ensureCapacity(needed: number): void {
    if (needed <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(needed, this.bytes.length * 2));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }
}

/** Counters kept by CountingIO: what an operation cost. */
export interface IoStats {
  bytesRead: number;
  bytesWritten: number;
  reads: number;
  writes: number;
  flushes: number;
}

/** Wraps a BlockIO and counts what passes through it. */
export class CountingIO implements BlockIO {
  readonly stats: IoStats = { bytesRead: 0, bytesWritten: 0, reads: 0, writes: 0, flushes: 0 };
  constructor(readonly inner: BlockIO) {}
  get name(): string {
    return this.inner.name;
  }
  get writable(): boolean {
    return this.inner.writable;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.stats.reads++;
    this.stats.bytesRead += length;
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.stats.writes++;
    this.stats.bytesWritten += data.length;
    return this.inner.write(offset, data);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }
  async flush(): Promise<void> {
    this.stats.flushes++;
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
