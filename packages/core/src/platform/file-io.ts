import { open, type FileHandle } from 'node:fs/promises';
import { IcError, type ErrorCode } from '../sdk/index.js';
import { checkRange, MAX_IO_LENGTH, type BlockIO, type ByteRange } from '../sdk/index.js';
import { posix, posixUnavailableReason } from './posix.js';

/**
 * QEMU's image locking (block/file-posix.c): a process that uses permission i holds an OFD read lock on byte
 * 100+i, and one that refuses to share permission i holds one on byte 200+i. Permissions: 0 consistent read,
 * 1 write, 2 write-unchanged, 3 resize (4 graph-mod in QEMU <= 6.1).
 */
const QEMU_PERMISSION_BYTES = 100;
const QEMU_SHARED_BYTES = 200;
const QEMU_LOCK_COUNT = 5;
const HELD_COUNT = 4;

/** How a FileIO stands with respect to QEMU's locks. */
export type LockState = { held: true } | { held: false; reason: string };

function codeForSystemError(error: unknown): ErrorCode {
  const code = (error as { code?: string } | null)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return 'NOT_FOUND';
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') return 'NO_SPACE';
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS' || code === 'EISDIR') return 'INVALID';
  return 'IO';
}

export function systemError(error: unknown, path: string, step: string): IcError {
  const detail = (error as { code?: string; message?: string } | null)?.code ?? String(error);
  return new IcError(codeForSystemError(error), `${path}: ${step} failed (${detail})`, { path, step, cause: error });
}

/**
 * A BlockIO on a local file. After a failed flush every later call fails: Linux may have dropped the
 * dirty pages, so a second flush that "succeeds" would be a lie (reliability.md R6).
 */
export class FileIO implements BlockIO {
  private failed: IcError | undefined;
  private lockState: LockState = { held: false, reason: 'not requested' };

  private constructor(
    private readonly handle: FileHandle,
    readonly name: string,
    readonly writable: boolean,
  ) {}

  /**
   * Opens a file. With `lock: true` (use it whenever the file will be modified) it refuses, with LOCKED, a
   * file that QEMU or another ic holds, and then holds QEMU's lock bytes itself until close, so that QEMU,
   * qemu-img and other ic processes refuse the file meanwhile. Where the locks cannot be taken (no koffi, not
   * Linux) the file still opens and `lock` says why, so the caller can tell the user.
   */
  static async open(path: string, options: { writable?: boolean; lock?: boolean } = {}): Promise<FileIO> {
    const writable = options.writable ?? false;
    let file: FileIO;
    try {
      const handle = await open(path, writable ? 'r+' : 'r');
      const stat = await handle.stat();
      if (!stat.isFile()) {
        await handle.close();
        throw new IcError('INVALID', `${path}: not a regular file`, { path });
      }
      file = new FileIO(handle, path, writable);
    } catch (error) {
      if (error instanceof IcError) throw error;
      throw systemError(error, path, 'open');
    }
    if (options.lock) {
      try {
        file.takeQemuLocks();
      } catch (error) {
        await file.handle.close();
        throw error;
      }
    }
    return file;
  }

  get lock(): LockState {
    return this.lockState;
  }

  /** True while this process holds QEMU's lock bytes on the file (see BlockIO.exclusive). */
  get exclusive(): boolean {
    return this.lockState.held;
  }

  private otherHolder(native: NonNullable<ReturnType<typeof posix>>): string | undefined {
    const fd = this.handle.fd;
    for (let i = 0; i < QEMU_LOCK_COUNT; i++) {
      if (native.ofdTestLock(fd, 'write', QEMU_PERMISSION_BYTES + i, 1) !== 'none') return `byte ${QEMU_PERMISSION_BYTES + i}`;
      if (native.ofdTestLock(fd, 'write', QEMU_SHARED_BYTES + i, 1) !== 'none') return `byte ${QEMU_SHARED_BYTES + i}`;
    }
    return undefined;
  }

  private takeQemuLocks(): void {
    const native = posix();
    if (!native) {
      this.lockState = { held: false, reason: `QEMU-compatible locks are unavailable: ${posixUnavailableReason()}` };
      return;
    }
    const fd = this.handle.fd;
    const refuse = (where: string) =>
      new IcError('LOCKED', `${this.name}: another process (QEMU or ic) is using the image (lock on ${where}); stop it and try again`, { path: this.name });
    const before = this.otherHolder(native);
    if (before) throw refuse(before);
    // Read locks on both ranges: we use consistent-read/write/write-unchanged/resize and share none of them.
    const granted =
      native.ofdSetLock(fd, 'read', QEMU_PERMISSION_BYTES, HELD_COUNT) && native.ofdSetLock(fd, 'read', QEMU_SHARED_BYTES, HELD_COUNT);
    // Someone may have taken theirs between the test and ours: look again now that ours are visible to them.
    const after = granted ? this.otherHolder(native) : 'the lock bytes';
    if (after) {
      native.ofdSetLock(fd, 'unlock', QEMU_PERMISSION_BYTES, HELD_COUNT);
      native.ofdSetLock(fd, 'unlock', QEMU_SHARED_BYTES, HELD_COUNT);
      throw refuse(after);
    }
    this.lockState = { held: true };
  }

  /** Creates (or truncates to zero) a file for writing. */
  static async create(path: string): Promise<FileIO> {
    try {
      return new FileIO(await open(path, 'w+'), path, true);
    } catch (error) {
      throw systemError(error, path, 'create');
    }
  }

  private guard(): void {
    if (this.failed) throw this.failed;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.guard();
    checkRange(offset, length, 'read');
    const out = new Uint8Array(length);
    let done = 0;
    try {
      while (done < length) {
        const chunk = Math.min(length - done, MAX_IO_LENGTH);
        const { bytesRead } = await this.handle.read(out, done, chunk, offset + done);
        if (bytesRead === 0) break; // past EOF: the rest stays zero
        done += bytesRead;
      }
    } catch (error) {
      throw systemError(error, this.name, `read at ${offset}`);
    }
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.guard();
    checkRange(offset, data.length, 'write');
    if (!this.writable) throw new IcError('IO', `${this.name} is open read-only`, { path: this.name });
    let done = 0;
    try {
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, Math.min(data.length - done, MAX_IO_LENGTH), offset + done);
        done += bytesWritten;
      }
    } catch (error) {
      throw systemError(error, this.name, `write at ${offset}`);
    }
  }

  async size(): Promise<number> {
    this.guard();
    try {
      return (await this.handle.stat()).size;
    } catch (error) {
      throw systemError(error, this.name, 'stat');
    }
  }

  async truncate(size: number): Promise<void> {
    this.guard();
    checkRange(size, 0, 'truncate');
    try {
      await this.handle.truncate(size);
    } catch (error) {
      throw systemError(error, this.name, 'truncate');
    }
  }

  async flush(): Promise<void> {
    this.guard();
    try {
      await this.handle.datasync();
    } catch (error) {
      this.failed = systemError(error, this.name, 'flush');
      throw this.failed;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  async identity(): Promise<string> {
    this.guard();
    const stat = await this.handle.stat({ bigint: true });
    return `file:${stat.dev}:${stat.ino}:${stat.birthtimeNs}`;
  }

  /** Where the file system has data, from lseek(SEEK_DATA/SEEK_HOLE); everything counts as data without it. */
  async dataRanges(offset: number, length: number): Promise<ByteRange[]> {
    this.guard();
    checkRange(offset, length, 'data query');
    const native = posix();
    const end = Math.min(offset + length, await this.size());
    if (!native) return end > offset ? [{ offset, length: end - offset }] : [];
    const ranges: ByteRange[] = [];
    try {
      let at = offset;
      while (at < end) {
        const data = native.seekData(this.handle.fd, at);
        if (data < 0 || data >= end) break;
        const hole = Math.min(native.seekHole(this.handle.fd, data), end);
        ranges.push({ offset: data, length: hole - data });
        at = hole;
      }
    } catch (error) {
      throw systemError(error, this.name, 'data/hole query');
    }
    return ranges;
  }
}
