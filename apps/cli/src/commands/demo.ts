import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CountingIO, IcError, convertInPlace, isIcError, hasCapability, writeImage, type Driver } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { EXIT, errorLine, reportError, type Context } from '../context.js';
import { openImage } from '../images.js';
import { sizeToString } from '@ic/qemu-output';

const MiB = 1024 * 1024;

/**
 * Opens (or creates) one of the demo's own files, with QEMU's locks where they can be taken. Nobody else knows
 * these files, so where locks are unavailable (no koffi, a file system without OFD locks) the demo goes on
 * without them instead of asking for --no-lock.
 */
async function openOwn(path: string, create: boolean): Promise<FileIO> {
  const attempt = (lock: boolean) => (create ? FileIO.create(path, { lock }) : FileIO.open(path, { writable: true, lock }));
  try {
    return await attempt(true);
  } catch (error) {
    if (isIcError(error) && error.code === 'UNSUPPORTED' && error.step === 'lock') return attempt(false);
    throw error;
  }
}

/** The sample disk: 256 MiB virtual, 40 MiB of data in runs, some at unaligned offsets, one ending at the very end. */
export const DEMO_VIRTUAL_SIZE = 256 * MiB;
export const DEMO_RUNS: readonly { guestOffset: number; length: number }[] = [
  { guestOffset: 0, length: 4 * MiB }, // the first guest clusters (sector 0 of the guest disk)
  { guestOffset: 6 * MiB + 512, length: 3 * MiB }, // sector-aligned only
  { guestOffset: 15 * MiB + 12345, length: 2 * MiB }, // odd offset
  { guestOffset: 30 * MiB, length: 5 * MiB },
  { guestOffset: 48 * MiB + 3 * 65536, length: 3 * MiB },
  { guestOffset: 63 * MiB, length: 2 * MiB }, // crosses 64 MiB
  { guestOffset: 100 * MiB + 4096, length: 4 * MiB },
  { guestOffset: 128 * MiB, length: 6 * MiB },
  { guestOffset: 180 * MiB + 777, length: 1 * MiB },
  { guestOffset: 200 * MiB, length: 4 * MiB },
  { guestOffset: 231 * MiB, length: 5 * MiB },
  { guestOffset: DEMO_VIRTUAL_SIZE - 1 * MiB, length: 1 * MiB }, // the very end of the disk
];

/**
 * The byte the sample holds at guest offset g: each 8-byte guest word reads "ic", its word index (32-bit
 * little-endian) and two check bytes, so misplaced data shows up in a hex dump and in the hash.
 */
export function patternByte(guestOffset: number): number {
  const word = Math.floor(guestOffset / 8);
  switch (guestOffset % 8) {
    case 0:
      return 0x69; // 'i'
    case 1:
      return 0x63; // 'c'
    case 6:
      return 0xd1 ^ (word & 0xff);
    case 7:
      return 0x5e;
    default:
      return (word >>> ((guestOffset % 8) - 2) * 8) & 0xff;
  }
}

function patterned(guestOffset: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = patternByte(guestOffset + i);
  return bytes;
}

/** The expected guest content of [start, start + length): zeros, and the pattern inside the runs. */
function expectedChunk(start: number, length: number): Uint8Array {
  const chunk = new Uint8Array(length);
  for (const run of DEMO_RUNS) {
    const from = Math.max(start, run.guestOffset);
    const to = Math.min(start + length, run.guestOffset + run.length);
    if (from < to) chunk.set(patterned(from, to - from), from - start);
  }
  return chunk;
}

const HASH_CHUNK = 4 * MiB;

async function contentHash(read: (offset: number, length: number) => Promise<Uint8Array> | Uint8Array, size: number): Promise<string> {
  const hash = createHash('sha256');
  for (let offset = 0; offset < size; offset += HASH_CHUNK) hash.update(await read(offset, Math.min(HASH_CHUNK, size - offset)));
  return hash.digest('hex');
}

interface QemuVerdicts {
  check: string;
  compare: string;
  ok: boolean;
  leaks: boolean;
}

function qemuImgAvailable(): boolean {
  const result = spawnSync('qemu-img', ['--version'], { encoding: 'utf8' });
  return !result.error && result.status === 0;
}

/** qemu-img's own opinion of a result: `check` (0 clean) and `compare` against the expected raw content. */
function qemuVerdicts(image: string, format: string, expectedRaw: string): QemuVerdicts {
  const check = spawnSync('qemu-img', ['check', '-f', format, image], { encoding: 'utf8' });
  const compare = spawnSync('qemu-img', ['compare', '-f', format, '-F', 'raw', image, expectedRaw], { encoding: 'utf8' });
  const checkText = ({ 0: 'clean', 2: 'CORRUPT', 3: 'leaks' } as Record<number, string>)[check.status ?? -1] ?? `FAILED (exit ${check.status})`;
  const compareText = ({ 0: 'identical', 1: 'DIFFERENT' } as Record<number, string>)[compare.status ?? -1] ?? `FAILED (exit ${compare.status})`;
  // Leaked clusters waste space but cannot change what the guest reads: shown, noted, not a failure.
  return { check: checkText, compare: compareText, ok: (check.status === 0 || check.status === 3) && compare.status === 0, leaks: check.status === 3 };
}

interface Row {
  step: string;
  from: string;
  to: string;
  ms: string;
  written: string;
  fileSize: string;
  kept: string;
  relocated: string;
  verified: string;
  qemuCheck: string;
  qemuCompare: string;
}

const COLUMNS: readonly [keyof Row, string, number][] = [
  ['step', 'step', 5],
  ['from', 'from', 8],
  ['to', 'to', 8],
  ['ms', 'time ms', 9],
  ['written', 'written', 12],
  ['fileSize', 'file size', 12],
  ['kept', 'kept', 7],
  ['relocated', 'relocated', 10],
  ['verified', 'verified', 10],
  ['qemuCheck', 'qemu-img check', 16],
  ['qemuCompare', 'qemu-img compare', 0],
];

function tableLine(cells: Record<keyof Row, string>): string {
  return `${COLUMNS.map(([key, , width]) => (width > 0 ? cells[key].padEnd(width) : cells[key])).join('').trimEnd()}\n`;
}

export interface DemoOptions {
  dir?: string;
  keep: boolean;
}

/**
 * `ic demo`: builds the sample with the first in-place-capable driver, converts it in place through every
 * other one in registry order and back to the first, and after each step reopens the file by probing and
 * compares the whole guest content with the expected pattern (plus qemu-img check/compare when installed).
 */
export async function demoCommand(context: Context, options: DemoOptions): Promise<number> {
  const cycle = context.registry
    .list()
    .filter((d) => hasCapability(d, 'read') && hasCapability(d, 'inPlaceSource') && hasCapability(d, 'inPlaceTarget') && d.inPlace !== undefined);
  const first = cycle[0];
  if (!first) throw new IcError('UNSUPPORTED', 'no installed driver can be both an in-place source and target; the demo needs one');
  const steps: Driver[] = [...cycle.slice(1), first];

  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'ic-demo-')));
  if (options.dir) await mkdir(dir, { recursive: true });
  const imagePath = join(dir, 'sample.img');
  const expectedPath = join(dir, 'expected.raw');
  const withQemu = qemuImgAvailable();
  const dataBytes = DEMO_RUNS.reduce((sum, run) => sum + run.length, 0);

  context.out(
    `ic demo: a ${sizeToString(DEMO_VIRTUAL_SIZE)} disk with ${sizeToString(dataBytes)} of patterned data in ${DEMO_RUNS.length} runs ` +
      `(some unaligned, one at the very end)\n` +
      `converted in place: ${[first, ...steps].map((d) => d.name).join(' -> ')}\n` +
      `working file: ${imagePath}\n\n`,
  );

  let allGood = true;
  let errorReported = false;
  const leakySteps: string[] = [];
  try {
    const expectedHash = await contentHash(expectedChunk, DEMO_VIRTUAL_SIZE);
    if (withQemu) {
      const raw = await openOwn(expectedPath, true);
      try {
        for (const run of DEMO_RUNS) await raw.write(run.guestOffset, patterned(run.guestOffset, run.length));
        await raw.truncate(DEMO_VIRTUAL_SIZE);
      } finally {
        await raw.close();
      }
    }
    context.out(tableLine(Object.fromEntries(COLUMNS.map(([key, title]) => [key, title])) as unknown as Row));

    /** Reopens by probing, checks the format and the whole content; fills the verification cells. */
    const verify = async (expected: Driver, row: Row): Promise<boolean> => {
      const opened = await openImage(context, imagePath);
      let ok: boolean;
      try {
        const hash = await contentHash((offset, length) => opened.image.read(offset, length), opened.image.info().virtualSize);
        const sameFormat = opened.driver === expected;
        ok = sameFormat && hash === expectedHash && opened.image.info().virtualSize === DEMO_VIRTUAL_SIZE;
        row.verified = ok ? 'yes' : sameFormat ? 'NO (data)' : `NO (${opened.driver.name})`;
      } finally {
        await opened.close();
      }
      row.fileSize = sizeToString((await stat(imagePath)).size);
      if (withQemu) {
        const verdicts = qemuVerdicts(imagePath, expected.name, expectedPath);
        row.qemuCheck = verdicts.check;
        row.qemuCompare = verdicts.compare;
        if (verdicts.leaks) leakySteps.push(row.step);
        ok &&= verdicts.ok;
      }
      return ok;
    };

    const blank = (step: number, from: string, to: string): Row => ({
      step: String(step),
      from,
      to,
      ms: '',
      written: '',
      fileSize: '',
      kept: '-',
      relocated: '-',
      verified: '',
      qemuCheck: withQemu ? '' : '-',
      qemuCompare: withQemu ? '' : '-',
    });

    // Step 0: build the sample.
    const createRow = blank(0, '(new)', first.name);
    const started = performance.now();
    const created = new CountingIO(await openOwn(imagePath, true));
    try {
      await writeImage(created, first, {
        virtualSize: DEMO_VIRTUAL_SIZE,
        data: DEMO_RUNS.map((run) => ({ guestOffset: run.guestOffset, bytes: patterned(run.guestOffset, run.length) })),
      });
    } finally {
      await created.close();
    }
    createRow.ms = String(Math.round(performance.now() - started));
    createRow.written = sizeToString(created.stats.bytesWritten);
    allGood = (await verify(first, createRow)) && allGood;
    context.out(tableLine(createRow));

    let current = first;
    for (const [index, target] of steps.entries()) {
      const row = blank(index + 1, current.name, target.name);
      const io = await openOwn(imagePath, false);
      try {
        const report = await convertInPlace({ io, source: current, target, allowUnlocked: !io.exclusive });
        row.ms = String(report.durationMs);
        row.written = sizeToString(report.io.bytesWritten);
        row.kept = String(report.clustersKept);
        row.relocated = String(report.clustersRelocated);
      } catch (error) {
        row.verified = 'FAILED';
        context.out(tableLine(row));
        allGood = false;
        reportError(context, error);
        errorReported = true;
        break;
      } finally {
        await io.close().catch(() => undefined);
      }
      allGood = (await verify(target, row)) && allGood;
      context.out(tableLine(row));
      current = target;
    }
    if (!withQemu) context.out('\nqemu-img not found: skipped the external check\n');
    if (leakySteps.length > 0) {
      context.out(`\nnote: qemu-img check found leaked clusters after step ${leakySteps.join(', ')}: space the old metadata used, harmless to data\n`);
    }
    context.out(allGood ? `\nevery step verified: the guest content survived ${steps.length} in-place conversions\n` : '\nverification FAILED\n');
  } finally {
    if (!options.keep) {
      await rm(imagePath, { force: true });
      await rm(expectedPath, { force: true });
      if (!options.dir) await rm(dir, { recursive: true, force: true });
    } else {
      context.out(`kept: ${imagePath}${withQemu ? ` and ${expectedPath}` : ''}\n`);
    }
  }
  if (!allGood && !errorReported) context.err(errorLine('demo: at least one step was not verified', 'DEMO_FAILED'));
  return allGood ? EXIT.OK : EXIT.FAILURE;
}

