import { alignUp, IcError, readInto, type BlockIO } from '../sdk/index.js';
import type { Relocation } from './planner.js';

/** Size of one read or write when data moves: large sequential I/O, bounded memory. */
export const COPY_CHUNK = 8 * 1024 * 1024;

export interface CopyRun {
  from: number;
  to: number;
  length: number;
}

/**
 * Copies host ranges to other host ranges of the same file, merging runs that continue each other on both sides
 * into large reads and writes. Destinations never overlap a source of the same call (the callers guarantee it).
 */
export async function copyRuns(io: BlockIO, runs: readonly CopyRun[], onBytes: (bytes: number) => void): Promise<void> {
  const sorted = [...runs].sort((a, b) => a.to - b.to);
  // One buffer for the whole call (each chunk is written before the next is read).
  let buffer: Uint8Array | undefined;
  for (let i = 0; i < sorted.length; ) {
    const first = sorted[i]!;
    let length = first.length;
    let j = i + 1;
    while (j < sorted.length && length < COPY_CHUNK) {
      const next = sorted[j]!;
      if (next.to !== first.to + length || next.from !== first.from + length) break;
      length += next.length;
      j++;
    }
    for (let done = 0; done < length; ) {
      const take = Math.min(COPY_CHUNK, length - done);
      if (!buffer || buffer.length < take) buffer = new Uint8Array(take);
      const chunk = buffer.subarray(0, take);
      await io.write(first.to + done, await readInto(io, first.from + done, chunk));
      done += take;
      onBytes(take);
    }
    i = j;
  }
}

/**
 * Copies relocated clusters as the plan produces them (guest order): destinations of consecutive relocations are
 * usually consecutive, so their bytes are gathered into one buffer of up to COPY_CHUNK and written at once; a
 * run of source host bytes is read at once. Zero-filled parts cost no read.
 */
export class RelocationCopier {
  private buffer: Uint8Array | undefined;
  private bufferStart = 0;
  private bufferLength = 0;
  /** Host reads waiting to fill the buffer: [buffer offset, source host offset, length]. */
  private reads: [number, number, number][] = [];
  bytesCopied = 0;

  constructor(
    private readonly io: BlockIO,
    private readonly clusterSize: number,
    private readonly onBytes: (bytes: number) => void = () => undefined,
  ) {}

  async add(relocation: Relocation): Promise<void> {
    const reserved = alignUp(relocation.length, this.clusterSize);
    // A long relocation is copied in chunks; each chunk is one destination piece.
    for (let done = 0; done < reserved; ) {
      const take = Math.min(COPY_CHUNK, reserved - done);
      // Scratch space first when the final place is written at the commit (Relocation.copyTo).
      const destination = (relocation.copyTo ?? relocation.hostOffset) + done;
      if (this.bufferLength > 0 && (destination !== this.bufferStart + this.bufferLength || this.bufferLength + take > COPY_CHUNK)) await this.flush();
      if (this.bufferLength === 0) {
        this.bufferStart = destination;
        this.buffer = new Uint8Array(COPY_CHUNK);
      }
      this.gather(relocation, done, Math.min(take, Math.max(0, relocation.length - done)), this.bufferLength);
      this.bufferLength += take;
      done += take;
    }
  }

  /** Queues the reads for guest bytes [skip, skip+length) of the relocation into the buffer at `at`. */
  private gather(relocation: Relocation, skip: number, length: number, at: number): void {
    if (length <= 0) return;
    const source = relocation.source;
    const read = (bufferAt: number, host: number, count: number) => {
      const last = this.reads[this.reads.length - 1];
      if (last && last[0] + last[2] === bufferAt && last[1] + last[2] === host) last[2] += count;
      else this.reads.push([bufferAt, host, count]);
    };
    switch (source.kind) {
      case 'zero':
        return;
      case 'host':
        read(at, source.hostOffset + skip, length);
        return;
      case 'pieces':
        for (const piece of source.pieces) {
          const from = Math.max(piece.guestOffset, relocation.guestOffset + skip);
          const to = Math.min(piece.guestOffset + piece.length, relocation.guestOffset + skip + length);
          if (to <= from || piece.hostOffset === undefined) continue;
          read(at + (from - relocation.guestOffset - skip), piece.hostOffset + (from - piece.guestOffset), to - from);
        }
    }
  }

  async flush(): Promise<void> {
    if (this.bufferLength === 0) return;
    const buffer = this.buffer!;
    for (const [bufferAt, host, count] of this.reads) {
      const bytes = await this.io.read(host, count);
      if (bytes.length !== count) throw new IcError('IO', `${this.io.name}: short read while copying a relocated cluster`);
      buffer.set(bytes, bufferAt);
    }
    await this.io.write(this.bufferStart, buffer.subarray(0, this.bufferLength));
    this.bytesCopied += this.bufferLength;
    this.onBytes(this.bufferLength);
    this.reads = [];
    this.bufferLength = 0;
    this.buffer = undefined;
  }
}
