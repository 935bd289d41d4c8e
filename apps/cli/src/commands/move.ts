import { statSync } from 'node:fs';
import { compactImage, defragImage, fragmentationLine, recover, type CompactReport, type DefragReport, type Driver } from '@ic/core';
import type { FileIO } from '@ic/core/node';
import { sizeToString } from '@ic/qemu-output';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, UsageError, errorLine, printable, type Context } from '../context.js';
import { namedDriver, openFile, probeDriver } from '../images.js';

/** `ic defrag`: the budget was spent before every unit reached its place; run it again to go on. */
export const DEFRAG_BUDGET_SPENT = 4;

function bytes(value: number): string {
  return value < 1024 ? `${value} bytes` : `${value} bytes (${sizeToString(value)})`;
}

/** Bytes the file occupies on disk (du), or its size where the file system does not say. */
function diskSize(filename: string): number {
  const stat = statSync(filename);
  return typeof stat.blocks === 'number' ? stat.blocks * 512 : stat.size;
}

interface Opened {
  io: FileIO;
  driver: Driver;
  /** What an earlier interrupted operation's recovery did, if anything. */
  recovered: string | undefined;
}

/** Opens the image for a mover command: recovers an interrupted operation first (unless dry), probes the format. */
async function openForMove(context: Context, filename: string, format: string | undefined, dryRun: boolean, signal: AbortSignal | undefined, work: (opened: Opened) => Promise<number>): Promise<number> {
  const named = namedDriver(context, format);
  context.activity.phase = 'open';
  const io = withKillSwitch(await openFile(context, filename, dryRun ? 'read' : 'write'));
  try {
    if (signal) context.interrupts.throwIfStopped(filename, 'before anything was written; the image is unchanged');
    let recovered: string | undefined;
    if (!dryRun) {
      context.activity.phase = 'recover';
      const recovery = await recover(io, { drivers: context.registry });
      if (recovery.action !== 'none') {
        recovered = recovery.detail;
        context.err(`ic: ${printable(filename)}: ${recovery.detail}\n`);
      }
    }
    context.activity.phase = 'probe';
    const driver = named ?? (await probeDriver(context, io, dryRun ? 'read' : 'write'));
    return await work({ io, driver, recovered });
  } finally {
    await io.close().catch(() => undefined);
  }
}

export interface DefragCommandOptions {
  format?: string;
  maxMoves?: string;
  time?: string;
  dryRun: boolean;
  output: 'human' | 'json';
}

function positive(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${name} takes a positive whole number, not '${value}'`);
  return n;
}

export function defragSummary(filename: string, report: DefragReport): string {
  const lines: string[] = [];
  const row = (label: string, text: string) => lines.push(`  ${`${label}:`.padEnd(15)} ${text}\n`);
  if (report.dryRun) {
    lines.push(`Plan for defragmenting '${filename}' (dry run: nothing was written)\n`);
    row('fragmentation', fragmentationLine(report.before));
    row('out of place', `${report.unitsOutOfPlace} units`);
    row('moves', `${report.movesPlanned} (some units go through spare space past the end)`);
    row('extra space', `${bytes(report.extraBytes)} at most past the end of the file, plus the record block`);
    return lines.join('');
  }
  lines.push(`Defragmented '${filename}'${report.done ? '' : ' (partly: the budget was spent; run ic defrag again to go on)'}\n`);
  row('moved', `${report.unitsMoved} units, ${bytes(report.bytesMoved)}, in ${report.waves} waves (${report.flushes} flushes)`);
  row('before', fragmentationLine(report.before));
  row('after', fragmentationLine(report.after));
  row('file size', `${bytes(report.fileSizeBefore)} -> ${bytes(report.fileSizeAfter)}`);
  row('extra space', `${bytes(report.extraBytes)} past the old end at most (spare space and the record block)`);
  return lines.join('');
}

/** `ic defrag IMAGE`: moves the data so host order follows guest order (exit 0 done, 4 budget spent). */
export async function defragCommand(context: Context, filename: string, options: DefragCommandOptions): Promise<number> {
  const maxMoves = positive('--max-moves', options.maxMoves);
  const seconds = positive('--time', options.time);
  const body = (signal: AbortSignal | undefined) =>
    openForMove(context, filename, options.format, options.dryRun, signal, async ({ io, driver }) => {
      context.activity.phase = 'defrag';
      const report = await defragImage(io, driver, {
        dryRun: options.dryRun,
        ...(maxMoves !== undefined ? { maxMoves } : {}),
        ...(seconds !== undefined ? { maxMilliseconds: seconds * 1000 } : {}),
        ...(signal ? { signal } : {}),
        openOptions: { untrusted: context.untrusted },
        onProgress: (done, total) => Object.assign(context.activity, { done, total }),
      });
      context.out(options.output === 'json' ? `${JSON.stringify(report, null, 4)}\n` : defragSummary(filename, report));
      if (signal?.aborted) {
        context.err(errorLine(`${filename}: ${context.interrupts.cause} arrived: defrag stopped after ${report.unitsMoved} moves; the image is valid and clean; run ic defrag again to go on`, 'INTERRUPTED'));
        return context.interrupts.exitStatus();
      }
      return report.done || report.dryRun ? EXIT.OK : DEFRAG_BUDGET_SPENT;
    });
  return options.dryRun ? body(undefined) : context.interrupts.during(body);
}

export interface CompactCommandOptions {
  format?: string;
  zeroScan: boolean;
  dryRun: boolean;
  output: 'human' | 'json';
}

export function compactSummary(filename: string, report: CompactReport, diskBefore: number, diskAfter: number | undefined): string {
  const lines: string[] = [];
  const row = (label: string, text: string) => lines.push(`  ${`${label}:`.padEnd(15)} ${text}\n`);
  lines.push(report.dryRun ? `Plan for compacting '${filename}' (dry run: nothing was written)\n` : `Compacted '${filename}'\n`);
  if (report.zeroUnits > 0 || report.unallocated > 0) {
    const become = report.dryRun ? 'to become' : 'became';
    row('zero scan', `${report.zeroUnits} all-zero clusters: ${report.unallocated} ${become} unallocated, ${report.zeroed} ${become} zero entries, ${report.kept} kept (the format cannot mark them)`);
  }
  if (report.pack) row('packing', report.pack.done ? `${report.pack.unitsMoved} units moved into holes, ${bytes(report.pack.bytesMoved)}` : `not packed: ${report.pack.reason}`);
  row('file size', `${bytes(report.fileSizeBefore)} -> ${bytes(report.fileSizeAfter)}${report.dryRun ? ' (planned)' : ''}`);
  if (diskAfter !== undefined) row('disk size', `${bytes(diskBefore)} -> ${bytes(diskAfter)}`);
  else row('disk size', bytes(diskBefore));
  return lines.join('');
}

/** `ic compact IMAGE`: gives back the space nothing references (and, with --zero-scan, clusters that read as zeros). */
export async function compactCommand(context: Context, filename: string, options: CompactCommandOptions): Promise<number> {
  const body = (signal: AbortSignal | undefined) =>
    openForMove(context, filename, options.format, options.dryRun, signal, async ({ io, driver }) => {
      const diskBefore = diskSize(filename);
      context.activity.phase = 'compact';
      const report = await compactImage(io, driver, {
        zeroScan: options.zeroScan,
        dryRun: options.dryRun,
        ...(signal ? { signal } : {}),
        openOptions: { untrusted: context.untrusted },
        onProgress: (phase, done, total) => Object.assign(context.activity, { phase, done, total }),
      });
      await io.flush();
      const diskAfter = options.dryRun ? undefined : diskSize(filename);
      context.out(options.output === 'json' ? `${JSON.stringify({ ...report, diskSizeBefore: diskBefore, diskSizeAfter: diskAfter }, null, 4)}\n` : compactSummary(filename, report, diskBefore, diskAfter));
      return EXIT.OK;
    });
  return options.dryRun ? body(undefined) : context.interrupts.during(body);
}
