import { checkRange, IcError, readInto, type BlockIO, type ByteRange } from '../sdk/index.js';

/**
 * A sparse byte store in memory, in 64 KiB chunks: chunks never written take no memory, so images with a
 * large virtual size cost only what they hold. Used by tests, the matrix and the built-in sample.
 */
export class MemoryIO implements BlockIO {
  static readonly CHUNK = 65536;
  readonly writable: boolean;
  /** Nothing outside this process can reach an in-memory store. */
  readonly exclusive = true;
  private readonly chunks = new Map<number, Uint8Array>();
  private length = 0;

  constructor(
    initial: Uint8Array = new Uint8Array(0),
    readonly name = 'memory',
    options: { writable?: boolean } = {},
  ) {
    this.store(0, initial);
    this.writable = options.writable ?? true;
  }

  /** A copy of the current contents (for small stores). */
  snapshot(): Uint8Array {
    const out = new Uint8Array(this.length);
    for (const [index, chunk] of this.chunks) {
      const at = index * MemoryIO.CHUNK;
      if (at < this.length) out.set(chunk.subarray(0, Math.min(chunk.length, this.length - at)), at);
    }
    return out;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    checkRange(offset, length, 'read');
    const out = new Uint8Array(length);
    const end = Math.min(offset + length, this.length);
    for (let at = offset; at < end; ) {
      const index = Math.floor(at / MemoryIO.CHUNK);
      const within = at - index * MemoryIO.CHUNK;
      const take = Math.min(MemoryIO.CHUNK - within, end - at);
      const chunk = this.chunks.get(index);
      if (chunk) out.set(chunk.subarray(within, within + take), at - offset);
      at += take;
    }
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(offset, data.length, 'write');
    if (!this.writable) throw new IcError('IO', `${this.name} is read-only`);
    this.store(offset, data);
  }

  private store(offset: number, data: Uint8Array): void {
    for (let done = 0; done < data.length; ) {
      const at = offset + done;
      const index = Math.floor(at / MemoryIO.CHUNK);
      const within = at - index * MemoryIO.CHUNK;
      const take = Math.min(MemoryIO.CHUNK - within, data.length - done);
      let chunk = this.chunks.get(index);
      if (!chunk) this.chunks.set(index, (chunk = new Uint8Array(MemoryIO.CHUNK)));
      chunk.set(data.subarray(done, done + take), within);
      done += take;
    }
    this.length = Math.max(this.length, offset + data.length);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async truncate(size: number): Promise<void> {
    checkRange(size, 0, 'truncate');
    if (!this.writable) throw new IcError('IO', `${this.name} is read-only`);
    if (size < this.length) {
      for (const index of [...this.chunks.keys()]) {
        const start = index * MemoryIO.CHUNK;
        if (start >= size) this.chunks.delete(index);
        else if (start + MemoryIO.CHUNK > size) this.chunks.get(index)!.fill(0, size - start);
      }
    }
    this.length = size;
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  /** Like a sparse file system: 4 KiB blocks never written, or holding only zeros, are holes. */
  async dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    checkRange(offset, length, 'data query');
    const block = 4096;
    const end = Math.min(offset + length, this.length);
    const ranges: ByteRange[] = [];
    const indexes = [...this.chunks.keys()].sort((a, b) => a - b);
    for (const index of indexes) {
      const chunkStart = index * MemoryIO.CHUNK;
      const chunk = this.chunks.get(index)!;
      for (let at = Math.max(chunkStart, offset - (offset % block)); at < Math.min(chunkStart + MemoryIO.CHUNK, end); at += block) {
        const from = Math.max(at, offset);
        const to = Math.min(at + block, end);
        if (chunk.subarray(from - chunkStart, to - chunkStart).every((b) => b === 0)) continue;
        const last = ranges[ranges.length - 1];
        if (last && last.offset + last.length === from) last.length += to - from;
        else ranges.push({ offset: from, length: to - from });
      }
    }
    return ranges;
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
  readonly dataRanges?: (offset: number, length: number) => Promise<ByteRange[]>;
  readonly identity?: () => Promise<string>;
  readonly punchHole?: (offset: number, length: number) => Promise<boolean>;
  constructor(readonly inner: BlockIO) {
    // Optional capabilities pass through unchanged.
    if (inner.dataRanges) this.dataRanges = inner.dataRanges.bind(inner);
    if (inner.identity) this.identity = inner.identity.bind(inner);
    if (inner.punchHole) this.punchHole = inner.punchHole.bind(inner);
  }
  get name(): string {
    return this.inner.name;
  }
  get writable(): boolean {
    return this.inner.writable;
  }
  get exclusive(): boolean | undefined {
    return this.inner.exclusive;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.stats.reads++;
    this.stats.bytesRead += length;
    return this.inner.read(offset, length);
  }
  async readInto(offset: number, into: Uint8Array): Promise<void> {
    this.stats.reads++;
    this.stats.bytesRead += into.length;
    await readInto(this.inner, offset, into);
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
