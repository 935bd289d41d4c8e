import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The real executable, `node apps/cli/bin/ic.js` (build it first: pnpm turbo run build). */
export const IC_BIN = fileURLToPath(new URL('../../../apps/cli/bin/ic.js', import.meta.url));

/** Throws unless the CLI has been built (tests through the real executable need dist/). */
export function requireBuiltIc(): void {
  if (!existsSync(fileURLToPath(new URL('../../../apps/cli/dist/cli.js', import.meta.url)))) throw new Error('build ic first (pnpm turbo run build)');
}

export interface IcRun {
  /** Exit status; null when the process died from a signal (see `signal`). */
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when it was still running after `timeoutMs` and was killed: something blocked. */
  timedOut: boolean;
}

/**
 * Runs the real `ic` with `args`. `env` entries are added to (undefined: removed from) this process's
 * environment. A run still going after `timeoutMs` (default 60 s, generous on a loaded machine) is killed and
 * reported as timedOut, so a command that blocks fails the test instead of hanging it.
 */
export function icCli(args: readonly string[], options: { env?: Record<string, string | undefined>; cwd?: string; timeoutMs?: number } = {}): IcRun {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const [name, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  const result = spawnSync(process.execPath, [IC_BIN, ...args], {
    encoding: 'utf8',
    env,
    cwd: options.cwd,
    timeout: options.timeoutMs ?? 60_000,
    killSignal: 'SIGKILL',
    maxBuffer: 256 * 1024 * 1024,
  });
  const timedOut = (result.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT';
  if (result.error && !timedOut) throw result.error;
  return { status: result.status, signal: result.signal, stdout: result.stdout ?? '', stderr: result.stderr ?? '', timedOut };
}

/** The error line format: exactly one line, `ic: <message> [<CODE>]`. */
export const IC_ERROR_LINE = /^ic: [^\n]+ \[[A-Z_]+\]\n$/;
