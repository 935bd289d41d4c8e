// Running one measured command: wall time, peak RSS, exit status, stdout/stderr kept in files (a map of a
// million extents is hundreds of MB; a pipe would also pace the program), a timeout that kills the whole
// command, and the page-cache hygiene around it.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readSync, rmSync, statfsSync, statSync } from 'node:fs';

const GNU_TIME = '/usr/bin/time';
const hasGnuTime = existsSync(GNU_TIME) && spawnSync(GNU_TIME, ['-f', '%M', 'true'], { encoding: 'utf8' }).status === 0;
const hasTimeout = spawnSync('timeout', ['--version'], { encoding: 'utf8' }).status === 0;

export const rssMethod = hasGnuTime ? 'GNU time (ru_maxrss of the command)' : 'VmHWM of /proc/PID/status, polled every 20 ms';

function firstLine(path, limit = 4096) {
  if (!existsSync(path)) return '';
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.alloc(limit);
    const n = readSync(fd, buffer, 0, limit, 0);
    return buffer.subarray(0, n).toString('utf8').split('\n').find((line) => line.trim()) ?? '';
  } finally {
    closeSync(fd);
  }
}

function readHwm(pid) {
  try {
    const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/**
 * Runs `command args` with stdout to `out` and stderr to `err`, killed after `timeoutSec`.
 * Returns { ms, status, signal, timedOut, maxRssKiB, stderrFirst }; never throws for the command's failure.
 */
export function measured(command, args, { out, err, timeoutSec, env }) {
  const rssFile = `${err}.rss`;
  rmSync(rssFile, { force: true });
  const outFd = openSync(out, 'w');
  const errFd = openSync(err, 'w');
  let argv = [command, ...args];
  if (hasTimeout) argv = ['timeout', '-k', '10', String(timeoutSec), ...argv];
  if (hasGnuTime) argv = [GNU_TIME, '-f', 'ICBENCH %M', '-o', rssFile, ...argv];
  return new Promise((resolve) => {
    const started = process.hrtime.bigint();
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', outFd, errFd], env: env ? { ...process.env, ...env } : process.env, detached: true });
    let hwm = 0;
    let killedByUs = false;
    const poll = hasGnuTime ? null : setInterval(() => (hwm = Math.max(hwm, readHwm(child.pid))), 20);
    const guard = setTimeout(() => {
      killedByUs = true;
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {}
    }, (timeoutSec + 30) * 1000);
    child.on('error', (error) => {
      clearTimeout(guard);
      if (poll) clearInterval(poll);
      closeSync(outFd);
      closeSync(errFd);
      resolve({ ms: 0, status: null, signal: null, timedOut: false, maxRssKiB: 0, stderrFirst: `spawn failed: ${error.message}` });
    });
    child.on('exit', (code, signal) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      clearTimeout(guard);
      if (poll) clearInterval(poll);
      closeSync(outFd);
      closeSync(errFd);
      let status = code;
      let maxRssKiB = hwm;
      let termSignal = signal;
      if (hasGnuTime && existsSync(rssFile)) {
        const text = readFileSync(rssFile, 'utf8');
        const rss = /ICBENCH (\d+)/.exec(text);
        if (rss) maxRssKiB = Number(rss[1]);
        const bySignal = /terminated by signal (\d+)/.exec(text);
        if (bySignal) termSignal = Number(bySignal[1]);
        rmSync(rssFile, { force: true });
      }
      // timeout(1) exits 124 when it stopped the command, 137 when it had to SIGKILL it
      const timedOut = killedByUs || (hasTimeout && (status === 124 || status === 137));
      resolve({ ms, status, signal: termSignal, timedOut, maxRssKiB, stderrFirst: firstLine(err) });
    });
  });
}

/** Runs a command to completion, throwing with its first stderr line if it fails (set-up steps, not measured). */
export function must(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...options });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status ?? result.signal}): ${(result.stderr || result.stdout || '').trim().split('\n')[0]}`);
  return result;
}

const taskset = ['/usr/bin/taskset', '/bin/taskset'].find((path) => existsSync(path));

/**
 * A timed step that is not itself measured (copy, sync -d, check, compare), without RSS. `pin` runs it on one
 * CPU: qemu-img hands each request to a worker thread, and on a small VM the cross-CPU wake-ups dominate
 * (qemu-img compare of a 4 GiB sparse image: 23 s on two CPUs, 3.3 s pinned). Never used for a measured command.
 */
export function timed(command, args, { timeoutSec = 0, pin = false } = {}) {
  const argv = pin && taskset ? [taskset, '-c', '0', command, ...args] : [command, ...args];
  const started = process.hrtime.bigint();
  const result = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', maxBuffer: 64 << 20, timeout: timeoutSec * 1000 || undefined, killSignal: 'SIGKILL' });
  const timedOut = result.error?.code === 'ETIMEDOUT';
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, status: result.status, timedOut, stdout: result.stdout, stderrFirst: timedOut ? `timed out after ${timeoutSec} s` : (result.stderr || '').trim().split('\n')[0] };
}

let evictWorks = null;
/**
 * Writes back everything dirty, then drops the file's pages from the page cache (posix_fadvise DONTNEED
 * through `dd iflag=nocache count=0`), so the next command reads it from the disk. Only the image files are
 * dropped: node, qemu-img and their libraries stay cached, as they would be for a user.
 */
export function coldCache(...paths) {
  spawnSync('sync', []);
  for (const path of paths) {
    const result = spawnSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
    if (evictWorks === null) evictWorks = result.status === 0;
  }
  return evictWorks !== false;
}
export const cacheMode = () => (evictWorks === false ? 'warm (could not drop the images from the page cache; sync only)' : 'cold: each image file dropped from the page cache (fadvise DONTNEED) after sync, before every timed command');

export const allocatedBytes = (path) => statSync(path).blocks * 512;
export function freeBytes(dir) {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

/** A copy that is as sparse as the source: reflink where the file system can, else SEEK_DATA/SEEK_HOLE. */
export function copySparse(from, to) {
  rmSync(to, { force: true });
  return timed('cp', ['--reflink=auto', '--sparse=always', from, to]);
}
