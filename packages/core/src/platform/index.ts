/**
 * @ic/core/node — the Node-only part of ic: local files (FileIO) with QEMU-compatible locks, and the libc
 * calls behind them (lseek SEEK_DATA/SEEK_HOLE, fcntl OFD locks) through the optional koffi package.
 * Nothing else in @ic/core imports a Node module.
 */
export { FileIO, systemError, type LockState } from './file-io.js';
export { posix, posixUnavailableReason, type Posix } from './posix.js';
