/**
 * A file system that fills up during a conversion: the real executable with IC_TEST_NO_SPACE_FROM_WRITE=N fails
 * its N-th write and every later one with ENOSPC, for every N until the conversion completes. Judged by bytes
 * and by qemu-img:
 *  - failed before the commit: the file is byte-identical to what it was, right after the failing command (a
 *    raw source is cut back to its exact old size), and `ic recover` finds nothing to do; or, when even the
 *    rollback's writes fail (a transitional marker to take back), the message says to run `ic recover`, which
 *    gives the old file back byte-identical;
 *  - failed writing the header itself: `ic recover` gives back the old file byte-identical or the new image;
 *  - failed after the commit: the message and the JSON say the file is now the new format with its data
 *    intact; `ic recover` finishes it, then qemu-img check is clean (no leaks) and compare identical.
 * The same for the mover (`ic defrag`, `ic convert-inplace IMAGE raw` on qemu-made fragmented images): each failure
 * is one typed [NO_SPACE] line; the file is byte-identical or, after `ic recover`, valid with the same guest data
 * (check clean, compare identical); running the command again with room finishes it. And on a real full file
 * system (a tmpfs with a filler leaving 0 B to 4 MiB free; needs root to mount, skipped without).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { coverageOf } from '@ic/conformance';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
const icBin = join(repoRoot, 'apps/cli/bin/ic.js');
const ERROR_LINE = /^ic: .+ \[[A-Z_]+\]\n$/;

function ic(args: string[], fullFrom?: number) {
  const env = { ...process.env };
  delete env.IC_TEST_KILL_AFTER_WRITES;
  if (fullFrom === undefined) delete env.IC_TEST_NO_SPACE_FROM_WRITE;
  else env.IC_TEST_NO_SPACE_FROM_WRITE = String(fullFrom);
  return spawnSync(process.execPath, [icBin, ...args], { encoding: 'utf8', env });
}

const pairs = [
  { from: 'raw', to: 'qcow2', writes: ['write -P 0x51 0 64k', 'write -P 0x52 10M 128k'] },
  { from: 'raw', to: 'qed', writes: ['write -P 0x53 0 64k', 'write -P 0x54 20M 64k'] },
  // The VMDK header overwrites raw guest data: the transitional commit.
  { from: 'raw', to: 'vmdk', writes: ['write -P 0x55 0 64k', 'write -P 0x56 10M 128k'] },
  { from: 'qcow2', to: 'qed', writes: ['write -P 0x11 0 1M', 'write -P 0x12 30M 64k', 'write -z 40M 64k'] },
];

describe('ENOSPC at every write of a real `ic` conversion', () => {
  const scratch = tempDir('ic-nospace-');
  beforeAll(() => {
    requireQemu();
    if (!existsSync(join(repoRoot, 'apps/cli/dist/cli.js'))) throw new Error('build ic first (pnpm turbo run build)');
  });
  afterAll(() => scratch.cleanup());

  for (const pair of pairs) {
    it(`${pair.from} -> ${pair.to}`, { timeout: 300_000 }, () => {
      const dir = scratch.path(`${pair.from}-${pair.to}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${pair.from}`);
      qemuCreate(pristine, pair.from, '64M');
      qemuIo(pristine, pair.from, pair.writes);
      const original = readFileSync(pristine);
      const image = join(dir, `image.${pair.from}`);
      const seen = { before: 0, recovered: 0, switching: 0, after: 0 };
      let finished = false;
      for (let fullFrom = 1; !finished && fullFrom < 300; fullFrom++) {
        copyFileSync(pristine, image);
        const run = ic(['convert-inplace', '--output=json', '-f', pair.from, image, pair.to], fullFrom);
        if (run.status === 0) {
          finished = true;
          break;
        }
        const where = `no space from write ${fullFrom}: ${run.stderr}`;
        expect(run.status, where).toBe(1);
        expect(run.stderr, where).toMatch(ERROR_LINE);
        expect(run.stderr, where).toMatch(/\[NO_SPACE\]\n$/);
        if (/failed while switching the header/.test(run.stderr)) {
          // The header write itself failed: the record decides; recovery undoes or finishes it, nothing between.
          seen.switching++;
          expect(run.stderr, where).toContain('ic recover');
          const recovered = ic(['recover', image]);
          expect(recovered.status, recovered.stderr).toBe(0);
          if (readFileSync(image).equals(original)) continue;
          expect(qemuCheck(image, pair.to).code, where).toBe(0);
          expect(qemuCompare(image, pair.to, pristine, pair.from).code, where).toBe(0);
          continue;
        }
        if (run.stdout === '') {
          // Stopped before the switch.
          seen.before++;
          if (run.stderr.includes('ic recover')) {
            // The rollback's own writes failed too (the disk is still full): the record lets recover finish it.
            seen.recovered++;
            const recovered = ic(['recover', image]);
            expect(recovered.status, recovered.stderr).toBe(0);
          }
          expect(readFileSync(image).equals(original), where).toBe(true);
          expect(ic(['recover', image]).stdout, where).toMatch(/no interrupted conversion/);
          continue;
        }
        seen.after++;
        const failure = JSON.parse(run.stdout) as { committed: boolean; imageFormat: string; dataIntact: boolean; error: { code: string } };
        expect(failure, where).toMatchObject({ committed: true, imageFormat: pair.to, dataIntact: true, error: { code: 'NO_SPACE' } });
        expect(run.stderr, where).toContain(`the image is now ${pair.to}`);
        expect(run.stderr, where).toContain('ic recover');
        const recovered = ic(['recover', image]);
        expect(recovered.status, recovered.stderr).toBe(0);
        expect(qemuCheck(image, pair.to).code, where).toBe(0);
        expect(qemuCompare(image, pair.to, pristine, pair.from).code, where).toBe(0);
      }
      expect(finished).toBe(true);
      expect(seen.before).toBeGreaterThan(2);
      // The last writes of a conversion are the header's (and, for most targets, clean-up after the commit).
      expect(seen.switching + seen.after).toBeGreaterThan(0);
      expect(qemuCheck(image, pair.to).code).toBe(0);
      expect(qemuCompare(image, pair.to, pristine, pair.from).code).toBe(0);
    });
  }
});

/** The format qemu-img probes the file as (raw when it knows no other). */
const probedFormat = (file: string) => (JSON.parse(run('qemu-img', ['info', '--output=json', file]).stdout) as { format: string }).format;

/** qemu-img on what a mover command left: check clean (where qemu checks the format), guest identical to the pristine image. Returns the format. */
function expectSameGuest(file: string, pristine: string, pristineFormat: string, where: string): string {
  const format = probedFormat(file);
  if (format === pristineFormat) expect(qemuCheck(file, format).code, where).toBe(0);
  expect(qemuCompare(file, format, pristine, pristineFormat).code, where).toBe(0);
  return format;
}

/** The command's arguments for `file`: `defrag FILE`, or IMAGE replaced by it. */
const moveArgs = (command: string[], file: string) => (command[0] === 'defrag' ? [...command, file] : command.map((word) => (word === 'IMAGE' ? file : word)));

const moves: { image: MoverImage; command: string[] }[] = [
  { image: { label: 'qcow2 reverse', format: 'qcow2', size: '4M', clusterSize: 65536, order: reverse(4) }, command: ['defrag'] },
  { image: { label: 'vmdk random', format: 'vmdk', size: '4M', clusterSize: 65536, order: shuffled(4, 3) }, command: ['defrag'] },
  { image: { label: 'qed reverse, zeros', format: 'qed', size: '4M', clusterSize: 65536, order: reverse(4), after: ['write -z 64k 64k'] }, command: ['convert-inplace', 'IMAGE', 'raw'] },
  { image: { label: 'qcow2 random', format: 'qcow2', size: '4M', clusterSize: 65536, order: shuffled(4, 5) }, command: ['convert-inplace', 'IMAGE', 'raw'] },
];

describe('ENOSPC at every write of a real `ic defrag` and `ic convert-inplace IMAGE raw`', () => {
  const scratch = tempDir('ic-nospace-move-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const [n, { image, command }] of moves.entries()) {
    const name = command[0] === 'defrag' ? 'defrag' : 'convert-inplace raw';
    it(`${name} on ${image.label}: fails with one typed line, the image valid with its data, and a second run finishes it`, { timeout: 300_000 }, () => {
      const pristine = scratch.path(`pristine-${n}.${image.format}`);
      makeFragmented(pristine, image);
      const original = readFileSync(pristine);
      const file = scratch.path(`image-${n}.${image.format}`);
      const args = moveArgs(command, file);
      const seen = { identical: 0, recovered: 0, changedValid: 0 };
      let finished = false;
      // Covering (`npm test`'s default): every third write (rotated per case); full: every one.
      const step = coverageOf(undefined) === 'full' ? 1 : 3;
      for (let fullFrom = 1 + (n % step); !finished && fullFrom < 300; fullFrom += step) {
        copyFileSync(pristine, file);
        const failed = ic(args, fullFrom);
        if (failed.status === 0) {
          finished = true;
          break;
        }
        const where = `${name}, no space from write ${fullFrom}: ${failed.stderr}`;
        expect(failed.status, where).toBe(1);
        expect(failed.stderr, where).toMatch(ERROR_LINE);
        expect(failed.stderr, where).toMatch(/\[NO_SPACE\]\n$/);
        if (readFileSync(file).equals(original)) seen.identical++;
        else {
          // What the failure left: `ic recover` (the disk has room again) gives a valid image with the same guest data.
          const recovered = ic(['recover', file]);
          expect(recovered.status, `${where}; recover: ${recovered.stderr}`).toBe(0);
          if (/no interrupted/.test(recovered.stdout)) seen.changedValid++;
          else seen.recovered++;
          // The recovery may have finished the conversion.
          if (expectSameGuest(file, pristine, image.format, where) !== image.format) continue;
        }
        // Run again with room: it completes.
        const again = ic(args);
        expect(again.status, `${where}; run again: ${again.stderr}`).toBe(0);
        expect(expectSameGuest(file, pristine, image.format, where) === image.format, where).toBe(command[0] === 'defrag');
      }
      console.log(`${name} on ${image.label}: ${JSON.stringify(seen)}`);
      expect(finished).toBe(true);
      expect(seen.identical + seen.recovered + seen.changedValid).toBeGreaterThan(2);
    });
  }
});

/**
 * A real file system too small for the mover: a 16 MiB tmpfs (mounting needs root; the case is skipped without)
 * holding the image and a filler that leaves `margin` bytes free. The kernel's own ENOSPC reaches FileIO.
 */
describe('a real full file system under `ic defrag` and `ic convert-inplace IMAGE raw`', () => {
  const scratch = tempDir('ic-nospace-fs-');
  const mountPoint = scratch.path('fs');
  let mounted = false;
  beforeAll(() => {
    requireQemu();
    mkdirSync(mountPoint);
    mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mountPoint]).status === 0;
  });
  afterAll(() => {
    if (mounted) spawnSync('umount', [mountPoint]);
    scratch.cleanup();
  });

  const cases: { image: MoverImage; command: string[] }[] = [
    { image: { label: 'qcow2 reverse', format: 'qcow2', size: '8M', clusterSize: 65536, order: reverse(16) }, command: ['defrag'] },
    { image: { label: 'qcow2 reverse', format: 'qcow2', size: '8M', clusterSize: 65536, order: reverse(16) }, command: ['convert-inplace', 'IMAGE', 'raw'] },
    { image: { label: 'qed random', format: 'qed', size: '8M', clusterSize: 65536, order: shuffled(16, 4) }, command: ['convert-inplace', 'IMAGE', 'raw'] },
  ];
  for (const [n, { image, command }] of cases.entries()) {
    const name = command[0] === 'defrag' ? 'defrag' : 'convert-inplace raw';
    it(`${name} on ${image.label}: completes, or fails with one typed line and the image intact`, { timeout: 300_000 }, (context) => {
      if (!mounted) context.skip('mounting a tmpfs needs root');
      const pristine = scratch.path(`pristine-${n}.${image.format}`);
      makeFragmented(pristine, image);
      const original = readFileSync(pristine);
      const file = join(mountPoint, `image.${image.format}`);
      const filler = join(mountPoint, 'filler');
      const args = moveArgs(command, file);
      const outcomes: string[] = [];
      for (const margin of [0, 64 * 1024, 512 * 1024, 4 * 1024 * 1024]) {
        copyFileSync(pristine, file);
        const free = () => {
          const fs = statfsSync(mountPoint);
          return fs.bavail * fs.bsize;
        };
        writeFileSync(filler, new Uint8Array(Math.max(0, free() - margin)).fill(1));
        const where = `${name} with ${free()} bytes free`;
        const full = ic(args);
        rmSync(filler);
        if (full.status === 0) outcomes.push(`${margin}: completed`);
        else {
          expect(full.status, `${where}: ${full.stderr}`).toBe(1);
          expect(full.stderr, where).toMatch(ERROR_LINE);
          expect(full.stderr, where).toMatch(/\[NO_SPACE\]\n$/);
          const identical = readFileSync(file).equals(original);
          outcomes.push(`${margin}: NO_SPACE, ${identical ? 'byte-identical' : 'recovered'}`);
          if (!identical) {
            const recovered = ic(['recover', file]);
            expect(recovered.status, `${where}; recover: ${recovered.stderr}`).toBe(0);
            expectSameGuest(file, pristine, image.format, where);
          }
          // With room again, running it again finishes it.
          const again = ic(args);
          expect(again.status, `${where}; run again: ${again.stderr}`).toBe(0);
        }
        expect(expectSameGuest(file, pristine, image.format, where) === image.format, where).toBe(command[0] === 'defrag');
      }
      console.log(`${name} on ${image.label} on a full tmpfs, by bytes left free: ${outcomes.join('; ')}`);
      expect(outcomes.some((outcome) => outcome.includes('NO_SPACE'))).toBe(true);
    });
  }
});
