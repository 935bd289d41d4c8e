import type { ConversionPhase, ProgressEvent } from '@ic/core';
import type { Context } from './context.js';

export interface Progress {
  onProgress: ((event: ProgressEvent) => void) | undefined;
  /** Completes the last phase and ends the bar's line. */
  finish(): void;
}

const BAR_WIDTH = 30;
const MILESTONES = [0, 25, 50, 75, 100];

/**
 * Progress on stderr (-p): on a terminal one bar redrawn in place with \r; otherwise plain lines such as
 * "plan 100%" at each quarter of a phase. Without -p nothing at all.
 */
export function createProgress(context: Context, enabled: boolean): Progress {
  if (!enabled) return { onProgress: undefined, finish() {} };
  let phase: ConversionPhase | undefined;
  let printed = new Set<number>();
  let lastBar = '';

  const percentOf = (event: ProgressEvent) => (event.total > 0 ? Math.min(100, Math.floor((event.done * 100) / event.total)) : 0);

  const endPhase = () => {
    if (phase === undefined) return;
    if (context.isTTY) draw(phase, 100);
    else if (!printed.has(100)) context.err(`${phase} 100%\n`);
  };

  const draw = (name: string, percent: number) => {
    const filled = Math.round((percent * BAR_WIDTH) / 100);
    const bar = `\r${name.padEnd(9)} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${String(percent).padStart(3)}%`;
    if (bar !== lastBar) context.err(bar);
    lastBar = bar;
  };

  return {
    onProgress(event) {
      if (event.phase !== phase) {
        endPhase();
        phase = event.phase;
        printed = new Set();
      }
      const percent = percentOf(event);
      if (context.isTTY) {
        draw(event.phase, percent);
        return;
      }
      for (const milestone of MILESTONES) {
        if (percent >= milestone && !printed.has(milestone)) {
          printed.add(milestone);
          if (milestone === percent || milestone === Math.max(...MILESTONES.filter((m) => m <= percent))) context.err(`${event.phase} ${milestone}%\n`);
        }
      }
    },
    finish() {
      endPhase();
      if (context.isTTY && lastBar !== '') context.err('\n');
      phase = undefined;
    },
  };
}
