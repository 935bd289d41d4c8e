import type { BlockIO, ByteRange } from '@ic/core';

/**
 * Test hook for the crash tests of the real executable: with IC_TEST_KILL_AFTER_WRITES=N in the environment,
 * the process kills itself with SIGKILL right after its N-th write or truncate of the image completes, the
 * way a power cut or `kill -9` would stop it between two system calls. Without the variable nothing changes.
 */
export function withKillSwitch<T extends BlockIO>(io: T): T {
  const limit = Number(process.env.IC_TEST_KILL_AFTER_WRITES);
  if (!Number.isSafeInteger(limit) || limit <= 0) return io;
  let count = 0;
  const tick = () => {
    if (++count >= limit) process.kill(process.pid, 'SIGKILL');
  };
  return new Proxy(io, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (property === 'write') {
        return async (offset: number, data: Uint8Array) => {
          await target.write(offset, data);
          tick();
        };
      }
      if (property === 'truncate') {
        return async (size: number) => {
          await target.truncate(size);
          tick();
        };
      }
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  }) as T & { dataRanges?: (offset: number, length: number) => Promise<ByteRange[]> };
}
