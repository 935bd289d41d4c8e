/**
 * Typed wrappers around qemu-img and qemu-io 7.2, the oracle every ic driver is judged
 * by: fixtures made by the format's own tools at test time, `qemu-img check` and `qemu-img compare` after a
 * conversion. Node only (child processes). A missing qemu-img is a failure, never a skip: requireQemu().
 */
import { spawnSync } from 'node:child_process';
import type { QemuMapEntry } from '@ic/core';

export type { QemuMapEntry };

/** Result of running one qemu tool. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(command: string, args: readonly string[], options: { cwd?: string } = {}): RunResult {
  const result = spawnSync(command, args, { encoding: 'utf8', cwd: options.cwd, maxBuffer: 256 * 1024 * 1024 });
  if (result.error) throw result.error;
  return { code: result.status ?? -1, stdout: result.stdout, stderr: result.stderr };
}

let available: boolean | undefined;

/** True when qemu-img and qemu-io are on PATH. */
export function qemuAvailable(): boolean {
  if (available === undefined) {
    try {
      available = run('qemu-img', ['--version']).code === 0 && run('qemu-io', ['--version']).code === 0;
    } catch {
      available = false;
    }
  }
  return available;
}

/**
 * The oracle is not optional: a missing qemu-img fails the suite (install qemu-utils before the tests run;
 * tooling/scripts/bootstrap.sh does in this repository).
 */
export function requireQemu(): void {
  if (!qemuAvailable()) {
    throw new Error('qemu-img/qemu-io not found: install qemu-utils (apt-get install qemu-utils); the oracle tests need them');
  }
}

let formats: ReadonlySet<string> | undefined;

/** The format names qemu-img lists under "Supported formats" (empty when qemu-img is missing). */
export function qemuFormats(): ReadonlySet<string> {
  if (!formats) {
    const help = qemuAvailable() ? run('qemu-img', ['--help']).stdout : '';
    const line = help.split('\n').find((text) => text.startsWith('Supported formats:')) ?? '';
    formats = new Set(line.replace('Supported formats:', '').trim().split(/\s+/).filter(Boolean));
  }
  return formats;
}

/** Whether qemu-img and qemu-io can open images of this format (a driver named after qemu's format name). */
export function qemuKnowsFormat(format: string): boolean {
  return qemuFormats().has(format);
}

function ok(command: string, args: readonly string[], cwd?: string): string {
  const result = run(command, args, cwd === undefined ? {} : { cwd });
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.code}): ${result.stderr.trim()}`);
  return result.stdout;
}

/** `qemu-img create -f FMT [-o OPTS] [-b BACKING -F BFMT] FILE SIZE` */
export function qemuCreate(
  file: string,
  format: string,
  size: number | string,
  options: { o?: string; backing?: string; backingFormat?: string; cwd?: string } = {},
): void {
  const args = ['create', '-q', '-f', format];
  if (options.o) args.push('-o', options.o);
  if (options.backing) args.push('-b', options.backing, '-F', options.backingFormat ?? 'raw');
  args.push(file, String(size));
  ok('qemu-img', args, options.cwd);
}

/** Runs qemu-io commands (e.g. "write -P 0xab 0 64k", "write -z 1M 64k", "discard 0 64k") on a file. */
export function qemuIo(file: string, format: string, commands: readonly string[], cwd?: string): string {
  const args = ['-f', format];
  for (const command of commands) args.push('-c', command);
  args.push(file);
  const out = ok('qemu-io', args, cwd);
  if (/error|failed/i.test(out)) throw new Error(`qemu-io ${commands.join('; ')}: ${out.trim()}`);
  return out;
}

export interface QemuInfo {
  'virtual-size': number;
  filename: string;
  'cluster-size'?: number;
  format: string;
  'actual-size'?: number;
  'dirty-flag'?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  'format-specific'?: { type: string; data: Record<string, unknown> };
}

export function qemuInfo(file: string, format: string): QemuInfo {
  return JSON.parse(ok('qemu-img', ['info', '-f', format, '--output=json', file])) as QemuInfo;
}

export function qemuMap(file: string, format: string): QemuMapEntry[] {
  return JSON.parse(ok('qemu-img', ['map', '-f', format, '--output=json', file])) as QemuMapEntry[];
}

export interface QemuCheck {
  code: number;
  json: Record<string, unknown> | undefined;
  text: string;
}

/** `qemu-img check` (exit 0 clean, 2 corruption, 3 leaks only, 1 could not check). */
export function qemuCheck(file: string, format: string): QemuCheck {
  const json = run('qemu-img', ['check', '-f', format, '--output=json', file]);
  const text = run('qemu-img', ['check', '-f', format, file]);
  let parsed: Record<string, unknown> | undefined;
  try {
    parsed = JSON.parse(json.stdout) as Record<string, unknown>;
  } catch {
    parsed = undefined;
  }
  return { code: text.code, json: parsed, text: text.stdout + text.stderr };
}

/** `qemu-img compare` with explicit formats: 0 identical, 1 different, 2 error. */
export function qemuCompare(a: string, formatA: string, b: string, formatB: string): RunResult {
  return run('qemu-img', ['compare', '-f', formatA, '-F', formatB, a, b]);
}

/** `qemu-img convert` (used to make reference copies and for benchmarks). */
export function qemuConvert(from: string, formatFrom: string, to: string, formatTo: string, o?: string): void {
  const args = ['convert', '-f', formatFrom, '-O', formatTo];
  if (o) args.push('-o', o);
  args.push(from, to);
  ok('qemu-img', args);
}
