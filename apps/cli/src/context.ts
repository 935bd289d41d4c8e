import { getSystemErrorMap } from 'node:util';
import { isIcError, type Registry } from '@ic/core';
import type { Activity, Interrupts } from './signals.js';

/** Where the CLI writes. Tests pass string collectors; the real entry passes process.stdout/stderr. */
export interface Writer {
  write(text: string): unknown;
}

export interface CliStreams {
  stdout: Writer;
  stderr: Writer;
  /** stderr is a terminal: progress is drawn as a bar redrawn in place instead of plain lines. */
  isTTY?: boolean;
}

/** Exit statuses (qemu-img's where it has the command). */
export const EXIT = {
  OK: 0,
  /** Any failure: an IcError, an I/O error, a bug. `ic check`: the check itself could not be completed. */
  FAILURE: 1,
  /** Usage error: unknown command or option, missing argument, bad option value, unknown format name. */
  USAGE: 2,
  /** `ic check`: corruptions were found. */
  CHECK_CORRUPT: 2,
  /** `ic check`: leaked clusters only. */
  CHECK_LEAKS: 3,
  /** `ic check`: the format has no consistency check (qemu-img answers 63 too). */
  CHECK_UNSUPPORTED: 63,
} as const;

/** A mistake in the command line; exit status 2, printed as `ic: <message> [USAGE]`. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Everything a command needs, built once per main() call. */
export interface Context {
  registry: Registry;
  /** Drivers the registry refused, one line each (shown by `ic formats`). */
  registryProblems: readonly string[];
  /** Where each registered driver came from ('bundled' or a module's path) and what it replaced. */
  driverSources: ReadonlyMap<string, { source: string; replaced?: string }>;
  out(text: string): void;
  err(text: string): void;
  isTTY: boolean;
  /** --untrusted: refuse images that reference other files, never open a backing file. */
  untrusted: boolean;
  /**
   * QEMU's lock bytes are taken (the default). --no-lock turns them off: reads then take and check none, and
   * writes go ahead without them (with a warning), telling the engine so (allowUnlocked).
   */
  lock: boolean;
  /** -U/--force-share (read commands): read an image another process uses, as qemu-img -U does. */
  forceShare: boolean;
  /** --debug: stack traces for errors. */
  debug: boolean;
  /** How writing commands are stopped (SIGINT/SIGTERM, or the caller's AbortSignal) at a safe point. */
  interrupts: Interrupts;
  /** What the command is doing now; SIGUSR1 prints it. */
  activity: Activity;
}

/**
 * Text that came from an image (a backing name, a descriptor field) may hold control characters; an error
 * line must stay one line and must not drive the terminal, so they are shown as \xNN.
 */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** The one-line form of every error ic reports: `ic: <message> [<CODE>]`. */
export function errorLine(message: string, code: string): string {
  return `ic: ${printable(message)} [${code}]\n`;
}

/** Runs argument resolution: an IcError raised here (unknown format, bad -o, bad size) is a usage error. */
export function usage<T>(resolve: () => T): T {
  try {
    return resolve();
  } catch (error) {
    if (isIcError(error)) throw new UsageError(error.message);
    throw error;
  }
}

/** Prints an error as one line on stderr (plus the stack with --debug) and returns the exit status. */
export function reportError(context: Pick<Context, 'err' | 'debug'>, error: unknown): number {
  if (error instanceof UsageError) {
    context.err(errorLine(error.message, 'USAGE'));
    return EXIT.USAGE;
  }
  if (isIcError(error)) {
    context.err(errorLine(withErrnoText(interruptedMessage(error) ?? error.message), error.code));
    if (context.debug) context.err(`${stackOf(error)}\n`);
    return EXIT.FAILURE;
  }
  const message = error instanceof Error ? error.message : String(error);
  context.err(errorLine(`internal error: ${message}${context.debug ? '' : ' (run with --debug for the stack trace)'}`, 'INTERNAL'));
  if (context.debug) context.err(`${stackOf(error)}\n`);
  return EXIT.FAILURE;
}

/**
 * An INTERRUPTED error stopped past the commit point (it carries imageFormat): the message says which format
 * the image is in now, that its data is intact, and what to run. Undefined for any other error.
 */
export function interruptedMessage(error: unknown): string | undefined {
  if (!isIcError(error) || error.code !== 'INTERRUPTED' || error.imageFormat === undefined) return undefined;
  const file = error.path ?? 'IMAGE';
  return `${error.message}; the image is now ${error.imageFormat} and its data is intact; run 'ic recover ${file}' to finish (safe to run at any time)`;
}

let errnoText: Map<string, string> | undefined;

/** "x: open failed (ENOENT)" -> "x: open failed (ENOENT: no such file or directory)". */
function withErrnoText(message: string): string {
  return message.replace(/\((E[A-Z0-9]+)\)/g, (whole, name: string) => {
    errnoText ??= new Map([...getSystemErrorMap().values()].map(([errno, text]) => [errno, text]));
    const text = errnoText.get(name);
    return text ? `(${name}: ${text})` : whole;
  });
}

function stackOf(error: unknown): string {
  let text = error instanceof Error ? (error.stack ?? error.message) : String(error);
  let cause = error instanceof Error ? error.cause : undefined;
  for (let depth = 0; cause !== undefined && depth < 5; depth++) {
    text += `\ncaused by: ${cause instanceof Error ? (cause.stack ?? cause.message) : String(cause)}`;
    cause = cause instanceof Error ? cause.cause : undefined;
  }
  return text;
}
