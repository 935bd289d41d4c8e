import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves when the child has exited (at once if it already has), or after `timeoutMs`. */
export function exited(child: ChildProcess, timeoutMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * The OFD lock bytes someone holds on `file`, from /proc/locks (diagnostics only: same PID namespace, which is
 * the case for processes a test starts). Each lock as [start, end].
 */
export function lockedRanges(file: string): [number, number][] {
  const inode = statSync(file).ino;
  const ranges: [number, number][] = [];
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const match = line.match(/OFDLCK\s+ADVISORY\s+\w+\s+-?\d+\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s+(\d+)\s+(\d+|EOF)/);
    if (match && Number(match[1]) === inode) ranges.push([Number(match[2]), match[3] === 'EOF' ? Infinity : Number(match[3])]);
  }
  return ranges;
}

/** Waits (polling, up to `timeoutMs`) until `holds()` is true; throws with `describe()` otherwise. */
export async function waitFor(holds: () => boolean, describe: () => string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!holds()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${describe()}`);
    await sleep(25);
  }
}

export interface QemuNbd {
  child: ChildProcess;
  /** qemu-nbd's stderr so far. */
  stderr(): string;
  stop(): Promise<void>;
}

/**
 * Serves `image` with qemu-nbd on a unix socket (writable unless `readOnly`) and resolves once qemu-nbd holds
 * its QEMU lock bytes (seen in /proc/locks), so a test never races its start. Fails at once, with qemu-nbd's
 * own message, if it exits first; waits up to `timeoutMs` (generous: a loaded machine may be slow).
 */
export async function serveWithQemuNbd(
  image: string,
  format: string,
  socket: string,
  options: { readOnly?: boolean; timeoutMs?: number } = {},
): Promise<QemuNbd> {
  const args = ['-k', socket, '-f', format, ...(options.readOnly ? ['-r'] : []), image];
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const server: QemuNbd = {
    child,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited(child);
    },
  };
  try {
    await waitFor(
      () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`qemu-nbd ${args.join(' ')} exited (${child.exitCode ?? child.signalCode}): ${stderr.trim()}`);
        // Every opener holds byte 100 (consistent read) or, read-only, at least one of the 2xx bytes.
        return lockedRanges(image).length > 0;
      },
      () => `qemu-nbd ${args.join(' ')} did not lock ${image} (stderr: ${stderr.trim() || 'empty'})`,
      options.timeoutMs,
    );
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}
