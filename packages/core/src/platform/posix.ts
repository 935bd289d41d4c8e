import { createRequire } from 'node:module';

/**
 * System calls Node does not expose (lseek with SEEK_DATA/SEEK_HOLE, fcntl OFD locks), reached through the
 * optional `koffi` FFI package. Everything here degrades to "not available" (null) when koffi cannot load
 * or the platform is not Linux; callers then say so instead of pretending.
 */
export interface Posix {
  /** lseek(fd, offset, SEEK_DATA): next data offset at or after `offset`; -1 when there is none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE): next hole at or after `offset` (EOF counts as a hole). */
  seekHole(fd: number, offset: number): number;
  /** F_OFD_SETLK: takes (or with type 'unlock' releases) an open-file-description lock; false when it conflicts. */
  ofdSetLock(fd: number, type: 'read' | 'write' | 'unlock', start: number, length: number): boolean;
  /** F_OFD_GETLK: the type of a conflicting lock on the range, or 'none'. */
  ofdTestLock(fd: number, type: 'read' | 'write', start: number, length: number): 'none' | 'read' | 'write';
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const ENXIO = 6;

let loaded: Posix | null | undefined;
let loadError = '';

interface Flock {
  l_type: number;
  l_whence: number;
  l_start: number;
  l_len: number;
  l_pid: number;
}

function load(): Posix | null {
  if (process.platform !== 'linux') {
    loadError = `not supported on ${process.platform}`;
    return null;
  }
  try {
    const require = createRequire(import.meta.url);
    const koffi = require('koffi');
    const libc = koffi.load('libc.so.6');
    const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as (fd: number, offset: number, whence: number) => number | bigint;
    koffi.struct('ic_flock', { l_type: 'short', l_whence: 'short', l_start: 'int64_t', l_len: 'int64_t', l_pid: 'int' });
    const fcntl = libc.func('int fcntl(int fd, int cmd, _Inout_ ic_flock *lock)') as (fd: number, cmd: number, lock: Flock) => number;
    const seek = (fd: number, offset: number, whence: number): number => {
      const result = Number(lseek(fd, offset, whence));
      if (result >= 0) return result;
      const errno = koffi.errno() as number;
      if (errno === ENXIO) return -1;
      throw new Error(`lseek failed (errno ${errno})`);
    };
    const lockType = { read: F_RDLCK, write: F_WRLCK, unlock: F_UNLCK } as const;
    return {
      seekData: (fd, offset) => seek(fd, offset, SEEK_DATA),
      seekHole: (fd, offset) => seek(fd, offset, SEEK_HOLE),
      ofdSetLock(fd, type, start, length) {
        const lock: Flock = { l_type: lockType[type], l_whence: 0, l_start: start, l_len: length, l_pid: 0 };
        if (fcntl(fd, F_OFD_SETLK, lock) === 0) return true;
        const errno = koffi.errno() as number;
        if (errno === 11 || errno === 13) return false; // EAGAIN / EACCES: held by someone else
        throw new Error(`fcntl(F_OFD_SETLK) failed (errno ${errno})`);
      },
      ofdTestLock(fd, type, start, length) {
        const lock: Flock = { l_type: lockType[type], l_whence: 0, l_start: start, l_len: length, l_pid: 0 };
        if (fcntl(fd, F_OFD_GETLK, lock) !== 0) throw new Error(`fcntl(F_OFD_GETLK) failed (errno ${koffi.errno()})`);
        return lock.l_type === F_UNLCK ? 'none' : lock.l_type === F_WRLCK ? 'write' : 'read';
      },
    };
  } catch (error) {
    loadError = error instanceof Error ? error.message : String(error);
    return null;
  }
}

/** The native helpers, or null with `posixUnavailableReason()` saying why. */
export function posix(): Posix | null {
  if (loaded === undefined) loaded = load();
  return loaded;
}

export function posixUnavailableReason(): string {
  posix();
  return loadError;
}
