import { IcError, type BlockIO } from '../sdk/index.js';

/**
 * A read-only view of a store as a shorter file, optionally with other bytes at its start: the image as it
 * will be once the file is cut (verify, packing), or as a recovery step would leave it (checked before it is
 * taken). Reads past `size` are zeros, like a file's.
 */
export class ReadView implements BlockIO {
  readonly writable = false;

  constructor(
    private readonly inner: BlockIO,
    private readonly length: number,
    private readonly head: Uint8Array = new Uint8Array(0),
  ) {}

  get name(): string {
    return this.inner.name;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(offset + length, this.length);
    const out = end > offset ? await this.inner.read(offset, end - offset) : new Uint8Array(0);
    const result = out.length === length ? out : new Uint8Array(length);
    if (result !== out) result.set(out);
    if (offset < this.head.length) result.set(this.head.subarray(offset, Math.min(this.head.length, offset + length)), 0);
    return result;
  }

  async write(): Promise<void> {
    throw new IcError('IO', `${this.name}: read-only view`);
  }

  async size(): Promise<number> {
    return this.length;
  }

  async truncate(): Promise<void> {
    throw new IcError('IO', `${this.name}: read-only view`);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
