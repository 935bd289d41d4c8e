import { createRequire } from 'node:module';

/**
 * System calls Node does not expose (lseek with SEEK_DATA/SEEK_HOLE, fcntl OFD locks), reached through the
 * optional `koffi` FFI package, loaded on first use (not at import: `ic info` on a machine without koffi must
 * not pay for, or fail on, a module it may not need). Everything here degrades to "not available" (null) when
 * koffi cannot load or the platform is not Linux; callers then say so instead of pretending.
 */
export interface Posix {
  /** lseek(fd, offset, SEEK_DATA): next data offset at or after `offset`; -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE): next hole at or after `offset` (EOF counts as a hole). */
  seekHole(fd: number, offset: number): number;
  /**
   * F_OFD_SETLK: takes (or with type 'unlock' releases) an open-file-description lock; false when another
   * holder conflicts (EAGAIN/EACCES). Any other failure throws a PosixError carrying errno.
   */
  ofdSetLock(fd: number, type: 'read' | 'write' | 'unlock', start: number, length: number): boolean;
  /** F_OFD_GETLK: the type of a conflicting lock on the range, or 'none'. Throws a PosixError on failure. */
  ofdTestLock(fd: number, type: 'read' | 'write', start: number, length: number): 'none' | 'read' | 'write';
  /**
   * fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length): true when done, false when the file
   * system cannot (EOPNOTSUPP, ENOSYS). Any other failure throws a PosixError carrying errno.
   */
  punchHole?(fd: number, offset: number, length: number): boolean;
}

/** A failed system call, with the errno the kernel gave. */
export class PosixError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call} failed (${errnoName(errno)})`);
    this.name = 'PosixError';
  }
}

/** errno values whose meaning for OFD locks is "this file system (or kernel) cannot do it", not "held". */
const LOCKS_UNSUPPORTED_ERRNO: Readonly<Record<number, string>> = { 22: 'EINVAL', 37: 'ENOLCK', 38: 'ENOSYS', 95: 'EOPNOTSUPP' };

/** True when a lock call failed because the file system or kernel has no OFD locks (not because it is held). */
export function locksUnsupportedErrno(errno: number): boolean {
  return errno in LOCKS_UNSUPPORTED_ERRNO;
}

function errnoName(errno: number): string {
  return LOCKS_UNSUPPORTED_ERRNO[errno] ?? (errno === 9 ? 'EBADF' : errno === 11 ? 'EAGAIN' : errno === 13 ? 'EACCES' : `errno ${errno}`);
}

/**
 * Error messages of optional native modules run over several lines ("Cannot find module 'koffi'\nRequire
 * stack:\n- ..."); ic shows one line, always.
 */
export function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return (text.split('\n').find((line) => line.trim() !== '') ?? text).trim();
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const ENXIO = 6;
const EAGAIN = 11;
const EACCES = 13;
const ENOSYS = 38;
const EOPNOTSUPP = 95;
const FALLOC_FL_KEEP_SIZE = 1;
const FALLOC_FL_PUNCH_HOLE = 2;

interface Flock {
  l_type: number;
  l_whence: number;
  l_start: number;
  l_len: number;
  l_pid: number;
}

/** How koffi is loaded; replaceable by tests (setKoffiLoader) and disabled by IC_TEST_NO_KOFFI=1. */
type KoffiLoader = () => unknown;

/**
 * IC_TEST_NO_KOFFI=1 makes the loader ask for a module that does not exist, so the real "Cannot find
 * module ... Require stack: ..." error of a machine without koffi goes through the real code path. Test hook
 * for the executable (like IC_TEST_KILL_AFTER_WRITES); never set it otherwise.
 */
const defaultLoader: KoffiLoader = () => {
  const require = createRequire(import.meta.url);
  return require(process.env.IC_TEST_NO_KOFFI === '1' ? 'koffi-not-installed (IC_TEST_NO_KOFFI)' : 'koffi');
};

let loader: KoffiLoader = defaultLoader;
let loaded: Posix | null | undefined;
let loadError = '';

/** Test hook: load koffi with `next` instead (a function that throws simulates a machine without it). */
export function setKoffiLoader(next: KoffiLoader | undefined): void {
  loader = next ?? defaultLoader;
  loaded = undefined;
  loadError = '';
}

/** Test hook: use this implementation (or none, with `reason`) instead of koffi's; undefined restores koffi. */
export function setPosixForTests(next: Posix | null | undefined, reason = 'disabled by a test'): void {
  if (next === undefined) {
    setKoffiLoader(undefined);
    return;
  }
  loaded = next;
  loadError = next === null ? reason : '';
}

interface Koffi {
  load(name: string): { func(signature: string): (...args: unknown[]) => unknown };
  struct(name: string, fields: Record<string, string>): unknown;
  errno(): number;
}

let structDefined = false;

function load(): Posix | null {
  if (process.platform !== 'linux') {
    loadError = `not supported on ${process.platform}`;
    return null;
  }
  try {
    const koffi = loader() as Koffi;
    const libc = koffi.load('libc.so.6');
    const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as (fd: number, offset: number, whence: number) => number | bigint;
    // koffi refuses to define a struct name twice (a test may reload).
    if (!structDefined) koffi.struct('ic_flock', { l_type: 'short', l_whence: 'short', l_start: 'int64_t', l_len: 'int64_t', l_pid: 'int' });
    structDefined = true;
    const fcntl = libc.func('int fcntl(int fd, int cmd, _Inout_ ic_flock *lock)') as (fd: number, cmd: number, lock: Flock) => number;
    const seek = (fd: number, offset: number, whence: number): number => {
      const result = Number(lseek(fd, offset, whence));
      if (result >= 0) return result;
      const errno = koffi.errno();
      if (errno === ENXIO) return -1;
      throw new PosixError('lseek', errno);
    };
    const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as (fd: number, mode: number, offset: number, length: number) => number;
    const lockType = { read: F_RDLCK, write: F_WRLCK, unlock: F_UNLCK } as const;
    return {
      seekData: (fd, offset) => seek(fd, offset, SEEK_DATA),
      seekHole: (fd, offset) => seek(fd, offset, SEEK_HOLE),
      ofdSetLock(fd, type, start, length) {
        const lock: Flock = { l_type: lockType[type], l_whence: 0, l_start: start, l_len: length, l_pid: 0 };
        if (fcntl(fd, F_OFD_SETLK, lock) === 0) return true;
        const errno = koffi.errno();
        if (errno === EAGAIN || errno === EACCES) return false; // held by someone else
        throw new PosixError('fcntl(F_OFD_SETLK)', errno);
      },
      punchHole(fd, offset, length) {
        if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) === 0) return true;
        const errno = koffi.errno();
        if (errno === EOPNOTSUPP || errno === ENOSYS) return false;
        throw new PosixError('fallocate(PUNCH_HOLE)', errno);
      },
      ofdTestLock(fd, type, start, length) {
        const lock: Flock = { l_type: lockType[type], l_whence: 0, l_start: start, l_len: length, l_pid: 0 };
        if (fcntl(fd, F_OFD_GETLK, lock) !== 0) throw new PosixError('fcntl(F_OFD_GETLK)', koffi.errno());
        return lock.l_type === F_UNLCK ? 'none' : lock.l_type === F_WRLCK ? 'write' : 'read';
      },
    };
  } catch (error) {
    loadError = `koffi could not be loaded: ${oneLine(error)}`;
    return null;
  }
}

/** The native helpers, or null with `posixUnavailableReason()` saying why (one line). */
export function posix(): Posix | null {
  if (loaded === undefined) loaded = load();
  return loaded;
}

export function posixUnavailableReason(): string {
  posix();
  return loadError;
}
