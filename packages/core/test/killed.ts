import { IcError, type BlockIO, type MemoryIO } from '../src/index.js';

/** Stops (like a killed process) after `limit` writes: every completed write stays, nothing after it happens. */
export class KilledAfter implements BlockIO {
  writes = 0;
  constructor(
    readonly inner: MemoryIO,
    readonly limit: number,
  ) {}
  get name() {
    return this.inner.name;
  }
  get writable() {
    return true;
  }
  get exclusive() {
    return true;
  }
  get identity() {
    return (this.inner as BlockIO).identity?.bind(this.inner);
  }
  read(offset: number, length: number) {
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array) {
    if (this.writes++ >= this.limit) throw new IcError('IO', 'killed');
    return this.inner.write(offset, data);
  }
  size() {
    return this.inner.size();
  }
  async truncate(size: number) {
    if (this.writes++ >= this.limit) throw new IcError('IO', 'killed');
    return this.inner.truncate(size);
  }
  flush() {
    return this.inner.flush();
  }
  close() {
    return this.inner.close();
  }
}
