import { constants } from 'node:os';
import { IcError } from '@ic/core';
import { printable } from './context.js';

/** What SIGUSR1 reports: the command, its file, the phase it is in and the work done in that phase. */
export interface Activity {
  command: string;
  file: string;
  phase: string;
  /** Work done and total in this phase (bytes or items); total 0: no measure. */
  done: number;
  total: number;
}

/** The one line SIGUSR1 prints on stderr (qemu-img prints its progress on SIGUSR1 too). */
export function activityLine(activity: Activity): string {
  const where = activity.file === '' ? activity.command : `${activity.command} '${activity.file}'`;
  const measure =
    activity.total > 0 ? ` ${activity.done}/${activity.total} (${Math.min(100, Math.floor((activity.done * 100) / activity.total))}%)` : '';
  return `ic: progress: ${printable(where)}: ${activity.phase}${measure}\n`;
}

/** The exit status of a command stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM). */
export function signalExitStatus(name: NodeJS.Signals): number {
  return 128 + (constants.signals[name] ?? 0);
}

/**
 * How a writing command is stopped. While one runs (`during`), SIGINT and SIGTERM no longer kill ic: they
 * abort the AbortSignal the command passes to the engine, which stops at its next safe point and says in what
 * state it leaves the image; the command then ends with 128 + the signal's number. Outside writing commands
 * the signals keep their default (a read is simply killed). A caller's own AbortSignal stops it the same way.
 */
export class Interrupts {
  private readonly controller = new AbortController();
  private receivedSignal: NodeJS.Signals | undefined;

  constructor(
    private readonly handleSignals: boolean,
    private readonly notice: (text: string) => void,
    external?: AbortSignal,
  ) {
    if (external?.aborted) this.controller.abort(external.reason);
    else external?.addEventListener('abort', () => this.controller.abort(external.reason), { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** The signal that stopped the command, if one did. */
  get received(): NodeJS.Signals | undefined {
    return this.receivedSignal;
  }

  /** What stopped it, for messages: "SIGINT", or "a request to stop" for a caller's AbortSignal. */
  get cause(): string {
    return this.receivedSignal ?? 'a request to stop';
  }

  get stopped(): boolean {
    return this.controller.signal.aborted;
  }

  /** Exit status once stopped: 128 + signal number, or 1 when the caller's AbortSignal stopped it. */
  exitStatus(): number {
    return this.receivedSignal ? signalExitStatus(this.receivedSignal) : 1;
  }

  /** Runs a writing command's work with SIGINT/SIGTERM turned into a stop at the next safe point. */
  async during<T>(work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (!this.handleSignals) return work(this.signal);
    const onSignal = (name: NodeJS.Signals) => {
      if (this.receivedSignal) {
        this.notice(`ic: ${name} again: still stopping at the next safe point (kill -9 is safe too; then run ic recover)\n`);
        return;
      }
      this.receivedSignal = name;
      this.notice(`ic: ${name}: stopping at the next safe point\n`);
      this.controller.abort(new IcError('INTERRUPTED', `interrupted by ${name}`));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      return await work(this.signal);
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  }

  /**
   * At a command's own safe point (before its first write): if it was asked to stop, stop now, saying what
   * state the image is in (`what`: "before anything was written; the image is unchanged"). The engine checks
   * the same signal at its own safe points.
   */
  throwIfStopped(file: string, what: string): void {
    if (this.stopped) throw new IcError('INTERRUPTED', `${file}: interrupted by ${this.cause} ${what}`, { path: file });
  }
}
