import { IcError, readInto, type BlockIO } from '../sdk/index.js';

/**
 * A read-only view of a store as a shorter file, optionally with other bytes in its header region (at
 * `headOffset`) and the writes a commit defers: the image as it will be once the file is cut and the commit done
 * (verify, packing), or as a recovery step would leave it (checked before it is taken). Reads past `size` are
 * zeros, like a file's.
 */
export class ReadView implements BlockIO {
  readonly writable = false;

  constructor(
    private readonly inner: BlockIO,
    private readonly length: number,
    private readonly head: Uint8Array = new Uint8Array(0),
    private readonly headOffset = 0,
    private readonly overlay?: { apply(offset: number, out: Uint8Array): Promise<void> },
  ) {}

  get name(): string {
    return this.inner.name;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(offset + length, this.length);
    const out = end > offset ? await this.inner.read(offset, end - offset) : new Uint8Array(0);
    const result = out.length === length ? out : new Uint8Array(length);
    if (result !== out) result.set(out);
    return this.patch(offset, result);
  }

  async readInto(offset: number, into: Uint8Array): Promise<void> {
    const end = Math.min(offset + into.length, this.length);
    const inside = Math.max(0, end - offset);
    if (inside > 0) await readInto(this.inner, offset, into.subarray(0, inside));
    into.fill(0, inside);
    await this.patch(offset, into);
  }

  /** The overlay's and the head's bytes over `result`, read at `offset`. */
  private async patch(offset: number, result: Uint8Array): Promise<Uint8Array> {
    const length = result.length;
    await this.overlay?.apply(offset, result);
    const headEnd = this.headOffset + this.head.length;
    if (offset < headEnd && offset + length > this.headOffset) {
      const from = Math.max(offset, this.headOffset);
      result.set(this.head.subarray(from - this.headOffset, Math.min(headEnd, offset + length) - this.headOffset), from - offset);
    }
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
