import { IcError } from './errors.js';

/**
 * The only way a driver touches bytes. Offsets and lengths are plain numbers and must be safe integers;
 * anything past 2^53 is refused, never wrapped.
 */
export interface BlockIO {
  /** A name for messages (the file path, or a label for in-memory stores). */
  readonly name: string;
  readonly writable: boolean;
  /**
   * Optional: true while no other process can open this store (an in-memory store; a file whose QEMU lock
   * bytes this process holds). The engine writes only through exclusive stores unless its caller opts out
   * explicitly (ConvertInPlaceRequest.allowUnlocked).
   */
  readonly exclusive?: boolean;
  /** Exactly `length` bytes; the part past the end of the file reads as zeros. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: read() into a buffer the caller owns and reuses (`into.length` bytes; past the end of the file
   * zeros). Hot loops that read table after table go through readInto() below, so a walk of a 1 TiB image's
   * tables allocates one buffer instead of one per table (garbage the collector frees late, kept in the RSS).
   */
  readInto?(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  size(): Promise<number>;
  truncate(size: number): Promise<void>;
  /** Durability barrier (fdatasync). A failed flush is final: the caller must abort, never retry and go on. */
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Optional: the parts of [offset, offset+length) that may hold data, in order; the rest are holes that read
   * as zeros. Absent when the store cannot tell (then every byte counts as data).
   */
  dataRanges?(offset: number, length: number): Promise<ByteRange[]>;
  /**
   * Optional: makes [offset, offset+length) read as zeros and gives its space back (a file-system hole; the size
   * stays). False when the store cannot (nothing changed: the caller writes zeros instead). Durable after flush().
   */
  punchHole?(offset: number, length: number): Promise<boolean>;
  /**
   * Optional: a string naming this very file and no copy of it (device, inode, birth time). Intent records
   * are bound to it, so a record forged by a guest inside its own disk, or found in a copied file, is refused.
   */
  identity?(): Promise<string>;
}

/**
 * Reads `into.length` bytes at `offset` into `into` and returns it: through the store's readInto when it has one,
 * else a read() copied in.
 */
export async function readInto(io: BlockIO, offset: number, into: Uint8Array): Promise<Uint8Array> {
  if (io.readInto) await io.readInto(offset, into);
  else into.set(await io.read(offset, into.length));
  return into;
}

export interface ByteRange {
  offset: number;
  length: number;
}

/** Largest length ic reads or writes in one call; bigger transfers are split by the caller. */
export const MAX_IO_LENGTH = 64 * 1024 * 1024;

export function checkRange(offset: number, length: number, what = 'I/O'): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0 || !Number.isSafeInteger(offset + length)) {
    throw new IcError('OUT_OF_BOUNDS', `${what} range ${offset}+${length} is not addressable`);
  }
}
