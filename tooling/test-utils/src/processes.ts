import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';

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

/** The state letter of a process from /proc/PID/stat ('R', 'S', 'T' stopped, 'Z', ...), or undefined once gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/**
 * Waits until the child is stopped (SIGSTOP, e.g. by ic's IC_TEST_STOP_AFTER_WRITES hook): resolves true, or
 * false when it exited instead. Generous default timeout for a loaded machine.
 */
export async function stoppedOrExited(child: ChildProcess, timeoutMs = 60_000): Promise<boolean> {
  let stopped = false;
  await waitFor(
    () => {
      if (child.exitCode !== null || child.signalCode !== null) return true;
      const state = child.pid === undefined ? undefined : processState(child.pid);
      stopped = state === 'T' || state === 't';
      return stopped || state === undefined || state === 'Z';
    },
    () => `process ${child.pid} neither stopped nor exited`,
    timeoutMs,
  );
  return stopped;
}

/** Listening TCP sockets (IPv4 and IPv6) as "local-address inode" strings, from /proc/net/tcp and tcp6. */
export function listeningTcpSockets(): Set<string> {
  const out = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[3] === '0A') out.add(`${fields[1]} ${fields[9]}`); // state 0A = LISTEN; field 9 = inode
    }
  }
  return out;
}

/** The socket inodes a process has open (from its /proc/PID/fd links), to tell which listeners are its own. */
export function socketInodes(pid: number): Set<string> {
  const out = new Set<string>();
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
        const match = target.match(/^socket:\[(\d+)\]$/);
        if (match) out.add(match[1]!);
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // gone
  }
  return out;
}
