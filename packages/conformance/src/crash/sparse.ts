import { MemoryIO, type BlockIO } from '@ic/core';

/** Chunk size of the frozen images below; the same as MemoryIO's so that copies move whole chunks. */
export const CHUNK = MemoryIO.CHUNK;

/**
 * An immutable sparse byte image: a length plus the 64 KiB chunks that hold non-zero bytes. Crash states
 * are built from one of these (the durable part of the file) by copying it into a fresh MemoryIO and then
 * applying the pending operations the state keeps. Chunks are shared between images, never mutated.
 */
export class SparseBytes {
  private constructor(
    readonly length: number,
    private readonly chunks: ReadonlyMap<number, Uint8Array>,
  ) {}

  static empty(): SparseBytes {
    return new SparseBytes(0, new Map());
  }

  /** Copies the current content of a store. Uses dataRanges when the store has it, so sparse stores stay cheap. */
  static async fromIO(io: BlockIO): Promise<SparseBytes> {
    const length = await io.size();
    const chunks = new Map<number, Uint8Array>();
    const ranges = io.dataRanges ? await io.dataRanges(0, length) : [{ offset: 0, length }];
    const wanted = new Set<number>();
    for (const range of ranges) {
      for (let index = Math.floor(range.offset / CHUNK); index * CHUNK < range.offset + range.length; index++) wanted.add(index);
    }
    for (const index of [...wanted].sort((a, b) => a - b)) {
      const start = index * CHUNK;
      const bytes = await io.read(start, Math.min(CHUNK, length - start));
      if (!allZero(bytes)) chunks.set(index, padChunk(bytes));
    }
    return new SparseBytes(length, chunks);
  }

  get chunkCount(): number {
    return this.chunks.size;
  }

  /** The chunks that hold data, in order, as (file offset, bytes) with the last one cut at the length. */
  *dataChunks(): Generator<[number, Uint8Array]> {
    for (const index of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const start = index * CHUNK;
      if (start >= this.length) continue;
      yield [start, this.chunks.get(index)!.subarray(0, Math.min(CHUNK, this.length - start))];
    }
  }

  /** Bytes [offset, offset+length), zeros past the end. */
  read(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    const end = Math.min(offset + length, this.length);
    for (let at = offset; at < end; ) {
      const index = Math.floor(at / CHUNK);
      const within = at - index * CHUNK;
      const take = Math.min(CHUNK - within, end - at);
      const chunk = this.chunks.get(index);
      if (chunk) out.set(chunk.subarray(within, within + take), at - offset);
      at += take;
    }
    return out;
  }

  /** A new image with `ops` applied in order (writes and truncates, the way a file would take them). */
  apply(ops: Iterable<{ kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; size: number }>): SparseBytes {
    const chunks = new Map(this.chunks);
    const owned = new Set<number>();
    let length = this.length;
    const writable = (index: number): Uint8Array => {
      let chunk = chunks.get(index);
      if (!chunk) {
        chunk = new Uint8Array(CHUNK);
        chunks.set(index, chunk);
        owned.add(index);
      } else if (!owned.has(index)) {
        chunk = chunk.slice();
        chunks.set(index, chunk);
        owned.add(index);
      }
      return chunk;
    };
    for (const op of ops) {
      if (op.kind === 'write') {
        for (let done = 0; done < op.data.length; ) {
          const at = op.offset + done;
          const index = Math.floor(at / CHUNK);
          const within = at - index * CHUNK;
          const take = Math.min(CHUNK - within, op.data.length - done);
          writable(index).set(op.data.subarray(done, done + take), within);
          done += take;
        }
        length = Math.max(length, op.offset + op.data.length);
      } else {
        if (op.size < length) {
          for (const index of [...chunks.keys()]) {
            const start = index * CHUNK;
            if (start >= op.size) chunks.delete(index);
            else if (start + CHUNK > op.size) writable(index).fill(0, op.size - start);
          }
        }
        length = op.size;
      }
    }
    return new SparseBytes(length, chunks);
  }

  /** A fresh, independent MemoryIO holding these bytes (only non-zero chunks are copied). */
  async toMemoryIO(name: string): Promise<MemoryIO> {
    const io = new MemoryIO(new Uint8Array(0), name);
    for (const index of [...this.chunks.keys()].sort((a, b) => a - b)) {
      const start = index * CHUNK;
      if (start >= this.length) continue;
      const chunk = this.chunks.get(index)!;
      await io.write(start, chunk.subarray(0, Math.min(CHUNK, this.length - start)));
    }
    await io.truncate(this.length);
    return io;
  }

  /** Whether two images hold the same bytes. */
  equals(other: SparseBytes): boolean {
    if (this.length !== other.length) return false;
    const indexes = new Set([...this.chunks.keys(), ...other.chunks.keys()]);
    for (const index of indexes) {
      const a = this.chunks.get(index);
      const b = other.chunks.get(index);
      if (a === b) continue;
      if (!a) {
        if (!allZero(b!)) return false;
      } else if (!b) {
        if (!allZero(a)) return false;
      } else if (!sameBytes(a, b)) return false;
    }
    return true;
  }
}

function padChunk(bytes: Uint8Array): Uint8Array {
  if (bytes.length === CHUNK) return bytes;
  const chunk = new Uint8Array(CHUNK);
  chunk.set(bytes);
  return chunk;
}

/** Byte equality, four bytes at a time where alignment allows (BigInt lanes would be slower in V8). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const words = a.length >>> 2;
    const x = new Int32Array(a.buffer, a.byteOffset, words);
    const y = new Int32Array(b.buffer, b.byteOffset, words);
    for (let w = 0; w < words; w++) if (x[w] !== y[w]) return false;
    i = words * 4;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** True when every byte is zero, four bytes at a time where alignment allows. */
export function allZero(bytes: Uint8Array): boolean {
  let i = 0;
  if (bytes.byteOffset % 4 === 0) {
    const words = bytes.length >>> 2;
    const x = new Int32Array(bytes.buffer, bytes.byteOffset, words);
    for (let w = 0; w < words; w++) if (x[w] !== 0) return false;
    i = words * 4;
  }
  for (; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
