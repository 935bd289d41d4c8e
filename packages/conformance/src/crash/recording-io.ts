import { checkRange, type BlockIO, type ByteRange, type MemoryIO } from '@ic/core';
import { SparseBytes } from './sparse.js';

/** One mutating call seen by a RecordingIO, in issue order. */
export type RecordedOp =
  | {
      kind: 'write';
      offset: number;
      /** A private copy of the bytes written. */
      data: Uint8Array;
      /** File size just before the write: a write ending past it extends the file. */
      sizeBefore: number;
    }
  | { kind: 'truncate'; size: number; sizeBefore: number }
  | { kind: 'flush' };

/** What a RecordingIO saw: the bytes it started from and every write, truncate and flush after that. */
export interface Recording {
  /** The store before the first operation (everything in it is durable). */
  base: SparseBytes;
  ops: RecordedOp[];
}

/**
 * A BlockIO that behaves like a normal in-memory file (reads see earlier writes, like a page cache) and
 * records every write (a hole punch as a write of zeros), truncate and flush in issue order, so that the crash states of the operation can be
 * enumerated afterwards (reliability.md §2.2, the "crash file" of SQLite's test6.c).
 *
 * The operation under test runs against a private copy of the starting image; the original is not touched.
 */
export class RecordingIO implements BlockIO {
  readonly ops: RecordedOp[] = [];
  readonly writable = true;
  /** A private in-memory copy: nothing else can reach it. */
  readonly exclusive = true;

  private constructor(
    readonly base: SparseBytes,
    private readonly live: MemoryIO,
  ) {}

  get name(): string {
    return this.live.name;
  }

  /** Starts recording on a copy of `start`. */
  static async wrap(start: BlockIO | SparseBytes, name = 'recording'): Promise<RecordingIO> {
    const base = start instanceof SparseBytes ? start : await SparseBytes.fromIO(start);
    return new RecordingIO(base, await base.toMemoryIO(name));
  }

  recording(): Recording {
    return { base: this.base, ops: [...this.ops] };
  }

  /** The store as the operation left it (every recorded operation applied). */
  get current(): MemoryIO {
    return this.live;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.live.read(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(offset, data.length, 'write');
    const sizeBefore = await this.live.size();
    this.ops.push({ kind: 'write', offset, data: data.slice(), sizeBefore });
    await this.live.write(offset, data);
  }

  size(): Promise<number> {
    return this.live.size();
  }

  async truncate(size: number): Promise<void> {
    checkRange(size, 0, 'truncate');
    const sizeBefore = await this.live.size();
    this.ops.push({ kind: 'truncate', size, sizeBefore });
    await this.live.truncate(size);
  }

  async flush(): Promise<void> {
    this.ops.push({ kind: 'flush' });
  }

  async close(): Promise<void> {}

  dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    return this.live.dataRanges(offset, length);
  }

  /**
   * A hole punch as a reader sees it: zeros over the part of the range inside the file, the size kept. Recorded
   * as a write of those zeros, so that a crash loses, tears or reorders it exactly like a write (a file system
   * may persist part of a punch, in blocks, and nothing orders it before the next flush).
   */
  async punchHole(offset: number, length: number): Promise<boolean> {
    checkRange(offset, length, 'hole punch');
    const end = Math.min(offset + length, await this.live.size());
    if (end > offset) await this.write(offset, new Uint8Array(end - offset));
    return true;
  }
}

/** A view of a store that refuses writes: drivers must never write while opening or reading. */
export class ReadOnlyView implements BlockIO {
  readonly writable = false;
  constructor(private readonly inner: BlockIO) {}
  get name(): string {
    return this.inner.name;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }
  async write(offset: number): Promise<void> {
    // A plain Error on purpose: a driver writing during open/read/check is a bug, not a typed refusal.
    throw new Error(`${this.inner.name}: a driver tried to write at ${offset} through a read-only open`);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  async truncate(): Promise<void> {
    throw new Error(`${this.inner.name}: a driver tried to truncate through a read-only open`);
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}
  dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    if (this.inner.dataRanges) return this.inner.dataRanges(offset, length);
    return Promise.resolve([{ offset, length }]);
  }
}

/**
 * Swallows every flush: simulates an engine that forgets its durability barriers. Used to show that the
 * crash campaign catches such an engine (its states are then one big epoch where anything may be lost).
 */
export class DroppedFlushesIO implements BlockIO {
  constructor(private readonly inner: BlockIO) {}
  get name(): string {
    return this.inner.name;
  }
  get writable(): boolean {
    return this.inner.writable;
  }
  get exclusive(): boolean | undefined {
    return this.inner.exclusive;
  }
  read(offset: number, length: number): Promise<Uint8Array> {
    return this.inner.read(offset, length);
  }
  write(offset: number, data: Uint8Array): Promise<void> {
    return this.inner.write(offset, data);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }
  async flush(): Promise<void> {}
  close(): Promise<void> {
    return this.inner.close();
  }
  dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    if (this.inner.dataRanges) return this.inner.dataRanges(offset, length);
    return Promise.resolve([{ offset, length }]);
  }
}
