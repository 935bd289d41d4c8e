import { IcError, type BlockIO, type ByteRange } from '@ic/core';

/**
 * Test hooks for the real executable. With IC_TEST_KILL_AFTER_WRITES=N in the environment the process kills
 * itself with SIGKILL right after its N-th write or truncate of the image completes, the way `kill -9` (or a
 * crash) stops it between two system calls. IC_TEST_STOP_AFTER_WRITES=N stops it (SIGSTOP) there instead, so
 * a test can look at the image while ic holds it (or send it a signal), then let it go on with SIGCONT; a list
 * (N,M,...) stops it after each of those writes. IC_TEST_NO_SPACE_FROM_WRITE=N makes the N-th write and every
 * later one fail with ENOSPC (NO_SPACE), as on a file system that has just filled up (truncates, which only
 * shrink or extend sparsely, still succeed). Without them nothing changes.
 */
export function withKillSwitch<T extends BlockIO>(io: T): T {
  const valid = (n: number) => Number.isSafeInteger(n) && n > 0;
  const killAt = Number(process.env.IC_TEST_KILL_AFTER_WRITES);
  const stopAt = (process.env.IC_TEST_STOP_AFTER_WRITES ?? '').split(',').map(Number).filter(valid);
  const fullAt = Number(process.env.IC_TEST_NO_SPACE_FROM_WRITE);
  if (!valid(killAt) && stopAt.length === 0 && !valid(fullAt)) return io;
  let count = 0;
  let writes = 0;
  const tick = () => {
    count++;
    if (stopAt.includes(count)) process.kill(process.pid, 'SIGSTOP');
    if (count >= killAt) process.kill(process.pid, 'SIGKILL');
  };
  return new Proxy(io, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (property === 'write') {
        return async (offset: number, data: Uint8Array) => {
          if (++writes >= fullAt) throw new IcError('NO_SPACE', `${target.name}: write failed (ENOSPC)`, { path: target.name, step: 'write' });
          await target.write(offset, data);
          tick();
        };
      }
      if (property === 'punchHole' && typeof value === 'function') {
        return async (offset: number, length: number) => {
          const done = await (value as (offset: number, length: number) => Promise<boolean>).call(target, offset, length);
          tick();
          return done;
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
  }) as T & { dataRanges?: (offset: number, length: number) => Promise<ByteRange[]>; punchHole?: (offset: number, length: number) => Promise<boolean> };
}
