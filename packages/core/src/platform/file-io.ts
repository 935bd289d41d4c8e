import { constants, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { IcError, type ErrorCode } from '../sdk/index.js';
import { checkRange, MAX_IO_LENGTH, type BlockIO, type ByteRange } from '../sdk/index.js';
import { PosixError, locksUnsupportedErrno, posix, posixUnavailableReason, type Posix } from './posix.js';

/**
 * QEMU's image locking (block/file-posix.c): a process that uses permission i holds an OFD read lock on byte
 * 100+i, and one that refuses to share permission i holds one on byte 200+i. Before taking its bytes an opener
 * tests byte 200+i for every permission it uses (does anyone refuse to share it?) and byte 100+i for every
 * permission it does not share (does anyone use it?). Permissions: 0 consistent read, 1 write,
 * 2 write-unchanged, 3 resize (4 graph-mod in QEMU <= 6.1).
 */
const QEMU_PERMISSION_BYTES = 100;
const QEMU_SHARED_BYTES = 200;
/** QEMU <= 6.1 may still lock byte 104/204 (the removed graph-mod permission); an exclusive opener tests them. */
const QEMU_LEGACY_PERMISSION = 4;
/** libvirt's virtlockd takes byte 0 ("Libvirt takes byte 0", file-posix.c); an exclusive opener tests it. */
const LIBVIRT_BYTE = 0;

export const QEMU_PERMISSIONS = ['consistent read', 'write', 'write unchanged', 'resize'] as const;
/** One of QEMU's block permissions, named as QEMU's lock errors name them ('Failed to get "write" lock'). */
export type QemuPermission = (typeof QEMU_PERMISSIONS)[number];

/** Which QEMU permissions an open uses, and which it lets other processes use meanwhile. */
export interface QemuLockRequest {
  readonly use: readonly QemuPermission[];
  readonly share: readonly QemuPermission[];
}

/** The lock requests ic makes; each mirrors what qemu-img does for the same job (strace of qemu-img 7.2). */
export const QEMU_LOCKS = {
  /** A writer that shares nothing: every permission used, none shared (bytes 100-103 and 200-203). */
  exclusive: { use: QEMU_PERMISSIONS, share: [] },
  /** `qemu-img info`: uses nothing, does not share write or resize (holds 201 and 203, tests 101 and 103). */
  info: { use: [], share: ['consistent read', 'write unchanged'] },
  /** `qemu-img map`/`check` and a backing file being read: consistent read used (100, 201, 203; tests 200, 101, 103). */
  read: { use: ['consistent read'], share: ['consistent read', 'write unchanged'] },
  /** `qemu-img map -U`/`check -U`: consistent read used, everything shared (holds 100, tests 200). */
  forceShareRead: { use: ['consistent read'], share: QEMU_PERMISSIONS },
} as const satisfies Record<string, QemuLockRequest>;

/** How a FileIO stands with respect to QEMU's locks. */
export type LockState = { held: true } | { held: false; reason: string };

export interface FileOpenOptions {
  writable?: boolean;
  /**
   * QEMU's lock bytes. Default: `true` for a writable open (QEMU_LOCKS.exclusive), `false` otherwise.
   * `true` on a read-only open means QEMU_LOCKS.read; a QemuLockRequest names exactly what to hold.
   * A writable open whose locks cannot be taken (no koffi, not Linux, a file system without OFD locks) is
   * refused (UNSUPPORTED, step "lock") unless `lock: false` says to write without them. A read-only open
   * whose locks cannot be taken goes on without them, as QEMU's locking=auto does.
   */
  lock?: boolean | QemuLockRequest;
}

function codeForSystemError(error: unknown): ErrorCode {
  const code = (error as { code?: string } | null)?.code;
  if (code === 'ENOENT' || code === 'ENOTDIR') return 'NOT_FOUND';
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') return 'NO_SPACE';
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS' || code === 'EISDIR' || code === 'ENXIO' || code === 'ELOOP') return 'INVALID';
  return 'IO';
}

export function systemError(error: unknown, path: string, step: string): IcError {
  const detail = (error as { code?: string; message?: string } | null)?.code ?? String(error);
  return new IcError(codeForSystemError(error), `${path}: ${step} failed (${detail})`, { path, step, cause: error });
}

/** What kind of non-regular file this is, for the refusal message. */
function kindOf(stats: Stats): string {
  if (stats.isDirectory()) return 'a directory';
  if (stats.isFIFO()) return 'a FIFO';
  if (stats.isSocket()) return 'a socket';
  if (stats.isCharacterDevice()) return 'a character device';
  if (stats.isBlockDevice()) return 'a block device';
  return 'a special file';
}

function notRegular(path: string, stats: Stats): IcError {
  return new IcError('INVALID', `${path}: is ${kindOf(stats)}, not a regular file; ic opens only regular files`, { path, step: 'open' });
}

/**
 * Opens a regular file without ever blocking and without touching anything else: the path is looked at first
 * (a FIFO, socket, device or directory is refused before it is opened, so no open of a FIFO waits for a
 * writer and no device is opened), then opened with O_NONBLOCK | O_NOCTTY, and the opened file is checked to
 * be that same regular file (the path may have been swapped in between).
 */
async function openRegular(path: string, flags: number, mode?: number): Promise<FileHandle> {
  let before: Stats | undefined;
  try {
    before = await stat(path);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ENOENT' || (flags & constants.O_CREAT) === 0) throw systemError(error, path, 'open');
  }
  if (before && !before.isFile()) throw notRegular(path, before);
  let handle: FileHandle;
  try {
    handle = await open(path, flags | constants.O_NONBLOCK | constants.O_NOCTTY, mode);
  } catch (error) {
    throw systemError(error, path, 'open');
  }
  try {
    const after = await handle.stat();
    if (!after.isFile()) throw notRegular(path, after);
    if (before && (after.dev !== before.dev || after.ino !== before.ino)) {
      throw new IcError('IO', `${path}: the file was replaced while it was being opened; try again`, { path, step: 'open' });
    }
  } catch (error) {
    await handle.close().catch(() => undefined);
    throw error instanceof IcError ? error : systemError(error, path, 'stat');
  }
  return handle;
}

function normaliseRequest(lock: FileOpenOptions['lock'], writable: boolean): QemuLockRequest | undefined {
  if (lock === undefined) return writable ? QEMU_LOCKS.exclusive : undefined;
  if (lock === false) return undefined;
  if (lock === true) return writable ? QEMU_LOCKS.exclusive : QEMU_LOCKS.read;
  return lock;
}

/**
 * A BlockIO on a local file. After a failed flush every later call fails: Linux may have dropped the
 * dirty pages, so a second flush that "succeeds" would be a lie (reliability.md R6).
 */
export class FileIO implements BlockIO {
  private failed: IcError | undefined;
  private lockState: LockState = { held: false, reason: 'not requested' };
  private heldRequest: QemuLockRequest | undefined;
  private closed = false;

  private constructor(
    private readonly handle: FileHandle,
    readonly name: string,
    readonly writable: boolean,
  ) {}

  /**
   * Opens a regular file (anything else is refused, without blocking: see openRegular). A writable open takes
   * QEMU's lock bytes by default (see FileOpenOptions.lock): it refuses, with LOCKED, a file that QEMU or
   * another ic holds, then holds the bytes itself until close, so that QEMU, qemu-img and other ic processes
   * refuse the file meanwhile.
   */
  static async open(path: string, options: FileOpenOptions = {}): Promise<FileIO> {
    const writable = options.writable ?? false;
    const handle = await openRegular(path, writable ? constants.O_RDWR : constants.O_RDONLY);
    const file = new FileIO(handle, path, writable);
    await file.lockOrClose(normaliseRequest(options.lock, writable));
    return file;
  }

  /**
   * Creates a file for writing, or empties an existing one, the way qemu-img create does: opened without
   * truncation, refused (untouched) when it is not a regular file or another process holds it, locked, and only
   * then truncated to zero. `lock` as for open (default: QEMU_LOCKS.exclusive).
   */
  static async create(path: string, options: { lock?: boolean } = {}): Promise<FileIO> {
    const handle = await openRegular(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    const file = new FileIO(handle, path, true);
    await file.lockOrClose(normaliseRequest(options.lock, true));
    try {
      await handle.truncate(0);
    } catch (error) {
      await file.close().catch(() => undefined);
      throw systemError(error, path, 'truncate');
    }
    return file;
  }

  private async lockOrClose(request: QemuLockRequest | undefined): Promise<void> {
    if (!request) return;
    try {
      this.takeQemuLocks(request);
    } catch (error) {
      await this.close().catch(() => undefined);
      throw error;
    }
  }

  get lock(): LockState {
    return this.lockState;
  }

  /**
   * True while this process holds QEMU's lock bytes for every permission and shares none (no QEMU, qemu-img
   * or other ic can open the file meanwhile); false for an unlocked, shared-locked or closed file.
   */
  get exclusive(): boolean {
    const request = this.heldRequest;
    return !this.closed && this.lockState.held && request !== undefined && request.share.length === 0 && request.use.length === QEMU_PERMISSIONS.length;
  }

  /** The bytes a request tests for other holders, each with what a holder there means. */
  private static conflictBytes(request: QemuLockRequest): { byte: number; holder: string }[] {
    const bytes: { byte: number; holder: string }[] = [];
    QEMU_PERMISSIONS.forEach((permission, i) => {
      if (request.use.includes(permission)) bytes.push({ byte: QEMU_SHARED_BYTES + i, holder: `does not share "${permission}"` });
      if (!request.share.includes(permission)) bytes.push({ byte: QEMU_PERMISSION_BYTES + i, holder: `holds the "${permission}" lock` });
    });
    if (request.share.length === 0) {
      bytes.push({ byte: QEMU_PERMISSION_BYTES + QEMU_LEGACY_PERMISSION, holder: 'holds the "graph-mod" lock (QEMU <= 6.1)' });
      bytes.push({ byte: QEMU_SHARED_BYTES + QEMU_LEGACY_PERMISSION, holder: 'does not share "graph-mod" (QEMU <= 6.1)' });
      bytes.push({ byte: LIBVIRT_BYTE, holder: 'holds the libvirt lock' });
    }
    return bytes;
  }

  /** The bytes a request holds: 100+i for each permission used, 200+i for each not shared. */
  private static heldBytes(request: QemuLockRequest): number[] {
    const bytes: number[] = [];
    QEMU_PERMISSIONS.forEach((permission, i) => {
      if (request.use.includes(permission)) bytes.push(QEMU_PERMISSION_BYTES + i);
    });
    QEMU_PERMISSIONS.forEach((permission, i) => {
      if (!request.share.includes(permission)) bytes.push(QEMU_SHARED_BYTES + i);
    });
    return bytes;
  }

  private otherHolder(native: Posix, request: QemuLockRequest): string | undefined {
    const fd = this.handle.fd;
    for (const { byte, holder } of FileIO.conflictBytes(request)) {
      if (native.ofdTestLock(fd, 'write', byte, 1) !== 'none') return `${holder}, byte ${byte}`;
    }
    return undefined;
  }

  private unavailable(reason: string): IcError | undefined {
    this.lockState = { held: false, reason: `QEMU-compatible locks are unavailable: ${reason}` };
    if (!this.writable) return undefined; // a reader goes on without, as QEMU's locking=auto does
    return new IcError(
      'UNSUPPORTED',
      `${this.name}: QEMU's image locks cannot be taken (${reason}), so a virtual machine or qemu-img could be using the file unseen; refusing to open it for writing without them`,
      { path: this.name, step: 'lock' },
    );
  }

  private takeQemuLocks(request: QemuLockRequest): void {
    const native = posix();
    if (!native) {
      const error = this.unavailable(posixUnavailableReason());
      if (error) throw error;
      return;
    }
    const fd = this.handle.fd;
    const held = FileIO.heldBytes(request);
    const release = () => {
      for (const byte of held) {
        try {
          native.ofdSetLock(fd, 'unlock', byte, 1);
        } catch {
          // closing the file releases them anyway
        }
      }
    };
    const refuse = (where: string) =>
      new IcError('LOCKED', `${this.name}: another process (QEMU or ic) is using the image (it ${where}); stop it and try again`, { path: this.name, step: 'lock' });
    try {
      const before = this.otherHolder(native, request);
      if (before) throw refuse(before);
      for (const byte of held) {
        if (!native.ofdSetLock(fd, 'read', byte, 1)) {
          release();
          throw refuse(`holds byte ${byte}`);
        }
      }
      // Someone may have taken theirs between the test and ours: look again now that ours are visible to them.
      const after = this.otherHolder(native, request);
      if (after) {
        release();
        throw refuse(after);
      }
    } catch (error) {
      if (error instanceof PosixError && locksUnsupportedErrno(error.errno)) {
        release();
        const refusal = this.unavailable(`the file system does not support OFD locks: ${error.message}`);
        if (refusal) throw refusal;
        return;
      }
      if (error instanceof PosixError) throw new IcError('IO', `${this.name}: taking QEMU's image locks failed: ${error.message}`, { path: this.name, step: 'lock', cause: error });
      throw error;
    }
    this.heldRequest = request;
    this.lockState = { held: true };
  }

  private guard(): void {
    if (this.failed) throw this.failed;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = new Uint8Array(length);
    await this.readAt(offset, out, true);
    return out;
  }

  readInto(offset: number, into: Uint8Array): Promise<void> {
    return this.readAt(offset, into, false);
  }

  /** `fresh`: `out` holds zeros already (read()), so a read that meets the end of the file leaves the rest. */
  private async readAt(offset: number, out: Uint8Array, fresh: boolean): Promise<void> {
    this.guard();
    const length = out.length;
    checkRange(offset, length, 'read');
    let done = 0;
    try {
      while (done < length) {
        const chunk = Math.min(length - done, MAX_IO_LENGTH);
        const { bytesRead } = await this.handle.read(out, done, chunk, offset + done);
        if (bytesRead === 0) break; // past EOF: the rest reads as zeros
        done += bytesRead;
      }
    } catch (error) {
      throw systemError(error, this.name, `read at ${offset}`);
    }
    if (!fresh && done < length) out.fill(0, done);
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

  /** Closes the file; its QEMU lock bytes go with it (OFD locks live as long as the open file description). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.lockState.held) this.lockState = { held: false, reason: 'closed' };
    this.heldRequest = undefined;
    await this.handle.close();
  }

  async identity(): Promise<string> {
    this.guard();
    const stat = await this.handle.stat({ bigint: true });
    return `file:${stat.dev}:${stat.ino}:${stat.birthtimeNs}`;
  }

  /** A file-system hole over the range (fallocate PUNCH_HOLE, the size kept); false without koffi or where the file system has none. */
  async punchHole(offset: number, length: number): Promise<boolean> {
    this.guard();
    checkRange(offset, length, 'hole punch');
    if (!this.writable) throw new IcError('IO', `${this.name} is open read-only`, { path: this.name });
    const native = posix();
    if (!native?.punchHole || length === 0) return false;
    try {
      return native.punchHole(this.handle.fd, offset, length);
    } catch (error) {
      throw systemError(error, this.name, `hole punch at ${offset}`);
    }
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
