/**
 * @ic/core/node — the Node-only part of ic: local files (FileIO) with QEMU-compatible locks, and the libc
 * calls behind them (lseek SEEK_DATA/SEEK_HOLE, fcntl OFD locks) through the optional koffi package.
 * Nothing else in @ic/core imports a Node module.
 */
export {
  FileIO,
  QEMU_LOCKS,
  QEMU_PERMISSIONS,
  systemError,
  type FileOpenOptions,
  type LockState,
  type QemuLockRequest,
  type QemuPermission,
} from './file-io.js';
export { PosixError, oneLine, posix, posixUnavailableReason, setKoffiLoader, setPosixForTests, type Posix } from './posix.js';
