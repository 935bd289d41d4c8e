/** Every failure is one line `ic: <message> [<CODE>]` on stderr with the right exit status; no stack traces. */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { IcError } from '@ic/core';
import { qemuCreate, qemuIo, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { reportError } from '../src/context.js';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-errors-');
afterAll(() => work.cleanup());
const image = work.path('disk.qcow2');

beforeAll(() => {
  qemuCreate(image, 'qcow2', '16M');
  qemuIo(image, 'qcow2', ['write -P 0x5a 0 64k']);
});

/** Runs ic and checks: exit status, one error line with the code, nothing on stdout, the image untouched. */
async function expectError(args: string[], status: number, code: string, text?: string): Promise<string> {
  const before = sha256File(image);
  const result = await runIc(args);
  expect(result.code).toBe(status);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(ERROR_LINE);
  expect(result.stderr).toContain(`[${code}]`);
  expect(result.stderr).not.toMatch(/\n\s+at /); // no stack frames
  if (text) expect(result.stderr).toContain(text);
  expect(sha256File(image)).toBe(before);
  return result.stderr;
}

describe('image errors: exit 1', () => {
  test('missing file', async () => {
    const line = await expectError(['info', work.path('nope.qcow2')], 1, 'NOT_FOUND', 'nope.qcow2');
    expect(line).toContain('no such file or directory');
    await expectError(['map', work.path('nope.qcow2')], 1, 'NOT_FOUND');
    await expectError(['check', work.path('nope.qcow2')], 1, 'NOT_FOUND');
    await expectError(['convert-inplace', work.path('nope.qcow2'), 'qcow2'], 1, 'NOT_FOUND');
  });

  test('wrong -f: WRONG_FORMAT, never probed', async () => {
    const wrongFormat = (await runIc(['formats', '--output=json'])).stdout;
    const names = (JSON.parse(wrongFormat) as { drivers: { name: string; capabilities: { read: boolean } }[] }).drivers
      .filter((d) => d.capabilities.read && d.name !== 'qcow2' && d.name !== 'raw')
      .map((d) => d.name);
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      await expectError(['info', '-f', name, image], 1, 'WRONG_FORMAT');
      await expectError(['convert-inplace', '-f', name, image, 'qcow2'], 1, 'WRONG_FORMAT');
    }
  });

  test('a directory is not an image', async () => {
    await expectError(['info', work.dir], 1, 'INVALID');
  });

  test('--debug adds the stack trace', async () => {
    const result = await runIc(['--debug', 'info', work.path('nope.qcow2')]);
    expect(result.code).toBe(1);
    expect(result.stderr.split('\n')[0]).toMatch(/^ic: .* \[NOT_FOUND\]$/);
    expect(result.stderr).toMatch(/\n\s+at /);
  });
});

describe('usage errors: exit 2', () => {
  test('unknown format name', async () => {
    await expectError(['info', '-f', 'nosuchformat', image], 2, 'USAGE', "unknown format 'nosuchformat'");
    await expectError(['convert-inplace', image, 'nosuchformat'], 2, 'USAGE', "unknown format 'nosuchformat'");
    await expectError(['create', '-f', 'nosuchformat', work.path('x.img'), '1G'], 2, 'USAGE');
    expect(existsSync(work.path('x.img'))).toBe(false);
  });

  test('bad -o', async () => {
    await expectError(['convert-inplace', image, 'qcow2', '-o', 'no_such_option=1'], 2, 'USAGE', 'no_such_option');
    await expectError(['convert-inplace', image, 'qcow2', '-o', 'cluster_size=banana'], 2, 'USAGE');
    await expectError(['convert-inplace', image, 'qcow2', '-o', 'cluster_size=3000'], 2, 'USAGE', 'power of two');
    await expectError(['convert-inplace', image, 'qcow2', '-o', 'cluster_size=1T'], 2, 'USAGE', 'power of two');
    await expectError(['create', '-f', 'qcow2', '-o', 'no_such_option=1', work.path('y.qcow2'), '1G'], 2, 'USAGE');
    expect(existsSync(work.path('y.qcow2'))).toBe(false);
  });

  test('bad size', async () => {
    await expectError(['create', '-f', 'qcow2', work.path('z.qcow2'), '12 parsecs'], 2, 'USAGE', 'size');
    expect(existsSync(work.path('z.qcow2'))).toBe(false);
  });

  test('unknown command, unknown option, missing and extra arguments, no command', async () => {
    await expectError(['frobnicate', image], 2, 'USAGE', "unknown command 'frobnicate'");
    await expectError(['info', '--frobnicate', image], 2, 'USAGE', "unknown option '--frobnicate'");
    await expectError(['info'], 2, 'USAGE', 'missing required argument');
    await expectError(['info', image, image], 2, 'USAGE', 'too many arguments');
    await expectError(['convert-inplace', image], 2, 'USAGE', 'missing required argument');
    await expectError(['create', work.path('w.qcow2'), '1G'], 2, 'USAGE', '--format');
    await expectError(['info', '--output=xml', image], 2, 'USAGE', 'xml');
    await expectError([], 2, 'USAGE', 'missing command');
    await expectError(['--debug'], 2, 'USAGE', 'missing command');
  });
});

test('--help and --version print to stdout and exit 0', async () => {
  const help = await runIc(['--help']);
  expect(help.code).toBe(0);
  expect(help.stdout).toContain('convert-inplace');
  expect(help.stderr).toBe('');
  const commandHelp = await runIc(['map', '--help']);
  expect(commandHelp.code).toBe(0);
  expect(commandHelp.stdout).toContain('--output');
  const version = await runIc(['--version']);
  expect(version.code).toBe(0);
  expect(version.stdout).toMatch(/^ic \d+\.\d+\.\d+\ndrivers: .*qcow2 /);
});

describe('error line rendering', () => {
  function capture(error: unknown, debug = false): { status: number; text: string } {
    let text = '';
    const status = reportError({ err: (t) => (text += t), debug }, error);
    return { status, text };
  }

  test('a bug (not an IcError) is one "internal error" line, the stack only with --debug', () => {
    const plain = capture(new TypeError("Cannot read properties of undefined (reading 'x')"));
    expect(plain.status).toBe(1);
    expect(plain.text).toMatch(ERROR_LINE);
    expect(plain.text).toMatch(/^ic: internal error: Cannot read properties/);
    expect(plain.text).toContain('[INTERNAL]');
    const debug = capture(new TypeError('boom'), true);
    expect(debug.text.split('\n').length).toBeGreaterThan(3);
  });

  test('control characters from an image (a hostile backing name) cannot break the line', () => {
    const { text } = capture(new IcError('EXTERNAL_REF', "x.qcow2: backing file 'evil\n\u001b[2Jname\r' refused"));
    expect(text).toMatch(ERROR_LINE);
    expect(text).toContain('\\x0a\\x1b[2Jname\\x0d');
  });
});

test('a file no driver but raw claims is probed as raw', async () => {
  const plain = work.path('plain.bin');
  writeFileSync(plain, new Uint8Array(1024).fill(7));
  const info = await runIc(['info', '--output=json', plain]);
  expect(info.code).toBe(0);
  expect(JSON.parse(info.stdout).format).toBe('raw');
});

describe('interrupted conversions', () => {
  test('a transitional header is reported as NEEDS_RECOVERY, never probed as raw', async () => {
    const { transitionalSector } = await import('@ic/core');
    const file = work.path('interrupted.img');
    const bytes = new Uint8Array(1024 * 1024);
    bytes.set(transitionalSector(512 * 1024));
    writeFileSync(file, bytes);
    const before = sha256File(file);
    for (const command of ['info', 'map', 'check']) {
      const result = await runIc([command, file]);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(ERROR_LINE);
      expect(result.stderr).toContain('ic recover');
      expect(result.stderr).toContain('[NEEDS_RECOVERY]');
    }
    // Its intent record is missing: recover refuses rather than guess.
    const recover = await runIc(['recover', file]);
    expect(recover.code).toBe(1);
    expect(recover.stderr).toContain('[NEEDS_RECOVERY]');
    expect(sha256File(file)).toBe(before);
  });

  test('recover on a healthy image changes nothing', async () => {
    const before = sha256File(image);
    const result = await runIc(['recover', image]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('no interrupted conversion found');
    expect(sha256File(image)).toBe(before);
  });
});
