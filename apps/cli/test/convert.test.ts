/** `ic convert-inplace`: dry run writes nothing; real conversions pass qemu-img check and compare. */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { statSync } from 'node:fs';
import { hasCapability, type ConversionReport } from '@ic/core';
import { copyFile, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { createRegistry } from '../src/index.js';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-convert-');
afterAll(() => work.cleanup());
const { registry } = createRegistry();

const source = work.path('source.qcow2');
const expectedRaw = work.path('expected.raw');

beforeAll(() => {
  qemuCreate(source, 'qcow2', '64M');
  qemuIo(source, 'qcow2', ['write -P 0xab 0 1M', 'write -P 0x11 3M 64k', 'write -P 0x22 7M 100k', 'write -P 0x33 63M 1M']);
  qemuConvert(source, 'qcow2', expectedRaw, 'raw');
});

/** A fresh copy of the source image. */
function copy(name: string): string {
  const file = work.path(name);
  copyFile(source, file);
  return file;
}

function expectValid(file: string, format: string): void {
  expect(qemuInfo(file, format).format).toBe(format);
  const compare = qemuCompare(file, format, expectedRaw, 'raw');
  expect(compare.code, compare.stdout + compare.stderr).toBe(0);
  // DESIGN.md §4 step 5: the result must also be free of leaks (exit 3 would mean old metadata left behind).
  // qemu-img has no check for some formats (VHD): it exits 63 saying so, and compare alone judges them.
  const check = qemuCheck(file, format);
  if (check.code === 63 && /does not support checks/.test(check.text)) return;
  expect(check.code, check.text).toBe(0);
}

describe('--dry-run', () => {
  test('leaves the file byte-identical and reports the plan as JSON', async () => {
    const file = copy('dry.qcow2');
    const before = sha256File(file);
    const targets = registry.list().filter((d) => hasCapability(d, 'inPlaceTarget'));
    expect(targets.length).toBeGreaterThan(0);
    for (const target of targets) {
      const result = await runIc(['convert-inplace', '--dry-run', '--output=json', file, target.name]);
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      const report = JSON.parse(result.stdout) as ConversionReport;
      expect(report.dryRun).toBe(true);
      expect(report.sourceFormat).toBe('qcow2');
      expect(report.targetFormat).toBe(target.name);
      expect(report.io.bytesWritten).toBe(0);
      expect(sha256File(file)).toBe(before);
    }
    const human = await runIc(['convert-inplace', '--dry-run', file, targets[0]!.name]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('dry run: nothing was written');
    expect(human.stdout).toMatch(/clusters: +\d+ kept in place, \d+ relocated/);
    expect(sha256File(file)).toBe(before);
  });

  test('a refused conversion writes nothing either', async () => {
    // Drivers that are no in-place target (raw, reached through the mover) refuse an image with a backing file.
    const base = work.path('refused-base.qcow2');
    const file = work.path('refused.qcow2');
    qemuCreate(base, 'qcow2', '64M');
    qemuCreate(file, 'qcow2', '64M', { backing: base, backingFormat: 'qcow2' });
    qemuIo(file, 'qcow2', ['write -P 0x3c 1M 64k']);
    const before = sha256File(file);
    const noTarget = registry.list().filter((d) => !hasCapability(d, 'inPlaceTarget'));
    for (const target of noTarget) {
      const result = await runIc(['convert-inplace', file, target.name]);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(ERROR_LINE);
      expect(sha256File(file)).toBe(before);
    }
  });

  test('--untrusted refuses an image with a backing file before writing', async () => {
    const base = work.path('untrusted-base.qcow2');
    const top = work.path('untrusted-top.qcow2');
    qemuCreate(base, 'qcow2', '16M');
    qemuCreate(top, 'qcow2', '16M', { backing: base, backingFormat: 'qcow2' });
    const before = sha256File(top);
    const target = registry.list().find((d) => hasCapability(d, 'inPlaceTarget') && d.name !== 'qcow2') ?? registry.list()[0]!;
    const result = await runIc(['--untrusted', 'convert-inplace', top, target.name]);
    expect(result.code).toBe(1);
    expect(result.stderr.split('\n').filter((l) => l.startsWith('ic: ') && !l.startsWith('ic: warning:'))).toHaveLength(1);
    expect(result.stderr).toContain('[EXTERNAL_REF]');
    expect(sha256File(top)).toBe(before);
  });
});

describe('real conversions', () => {
  test('qcow2 -> qed -> qcow2: qemu-img check clean and compare identical after each step', async () => {
    const file = copy('roundtrip.qcow2');
    for (const [from, to] of [['qcow2', 'qed'], ['qed', 'qcow2']] as const) {
      const result = await runIc(['convert-inplace', '--output=json', file, to]);
      expect(result.stderr.replace(/^ic: warning: .*\n/gm, '')).toBe('');
      expect(result.code).toBe(0);
      const report = JSON.parse(result.stdout) as ConversionReport;
      expect(report.sourceFormat).toBe(from);
      expect(report.verified).toBe(true);
      expect(report.fileSizeAfter).toBe(statSync(file).size);
      expectValid(file, to);
    }
  });

  test.each(registry.list().filter((d) => hasCapability(d, 'inPlaceTarget') && hasCapability(d, 'inPlaceSource') && d.name !== 'qcow2').map((d) => d.name))(
    'qcow2 -> %s -> qcow2 with -f, the human summary and -p',
    async (format) => {
      const file = copy(`roundtrip-${format}.qcow2`);
      const there = await runIc(['convert-inplace', '-f', 'qcow2', '-p', file, format]);
      expect(there.code).toBe(0);
      expect(there.stdout).toMatch(new RegExp(`^Converted '.*' from qcow2 to ${format} in place\\n`));
      expect(there.stdout).toMatch(/verified: +yes/);
      // Progress on stderr, as plain lines when stderr is not a terminal.
      expect(there.stderr).toMatch(/^validate 0%$/m);
      expect(there.stderr).toMatch(/^commit 100%$/m);
      expectValid(file, format);
      const back = await runIc(['convert-inplace', file, 'qcow2']);
      expect(back.code).toBe(0);
      expect(back.stderr.replace(/^ic: warning: .*\n/gm, '')).toBe(''); // no progress without -p
      expectValid(file, 'qcow2');
    },
  );

  test('-p on a terminal draws one bar redrawn with \\r', async () => {
    const file = copy('tty.qcow2');
    const target = registry.list().find((d) => hasCapability(d, 'inPlaceTarget') && d.name !== 'qcow2');
    expect(target).toBeDefined();
    const result = await runIc(['convert-inplace', '-p', file, target!.name], { isTTY: true });
    expect(result.code).toBe(0);
    const progress = result.stderr.replace(/^ic: warning: .*\n/gm, '');
    expect(progress).toMatch(/^\r/);
    expect(progress).toMatch(/\[#+\] 100%/);
    expect(progress.endsWith('\n')).toBe(true);
    expect(progress.slice(0, -1)).not.toContain('\n');
  });
});

test('map after a conversion still equals qemu-img map', async () => {
  const file = copy('mapped.qcow2');
  const target = registry.list().find((d) => hasCapability(d, 'inPlaceTarget') && d.name !== 'qcow2');
  expect((await runIc(['convert-inplace', file, target!.name])).code).toBe(0);
  const ours = await runIc(['map', '--output=json', file]);
  expect(ours.stdout).toBe(run('qemu-img', ['map', '-f', target!.name, '--output=json', file]).stdout);
});
