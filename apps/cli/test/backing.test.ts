/**
 * `ic map` describes the backing chain like qemu-img map: unallocated ranges of the top image show the
 * backing file's content at depth 1, 2, ...; past the end of a shorter backing file, or of the chain, a
 * range stays "not present" at the depth of the last layer covering it.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-backing-');
afterAll(() => work.cleanup());

function qemuMapText(file: string, output: string): string {
  const result = run('qemu-img', ['map', `--output=${output}`, file]);
  if (result.code !== 0) throw new Error(result.stderr);
  return result.stdout;
}

beforeAll(() => {
  const cwd = work.dir;
  // base (qcow2, 32 MiB) <- middle (qcow2, 48 MiB: longer than base) <- top (qcow2, 64 MiB), relative names.
  qemuCreate('base.qcow2', 'qcow2', '32M', { cwd });
  qemuIo('base.qcow2', 'qcow2', ['write -P 0x0b 0 2M', 'write -P 0x0c 10M 64k', 'write -z 12M 1M', 'write -P 0x0d 31M 1M'], cwd);
  qemuCreate('middle.qcow2', 'qcow2', '48M', { backing: 'base.qcow2', backingFormat: 'qcow2', cwd });
  qemuIo('middle.qcow2', 'qcow2', ['write -P 0x1a 1M 512k', 'write -z 10M 64k', 'write -P 0x1b 40M 1M'], cwd);
  qemuCreate('top.qcow2', 'qcow2', '64M', { backing: 'middle.qcow2', backingFormat: 'qcow2', cwd });
  qemuIo('top.qcow2', 'qcow2', ['write -P 0x2a 1536k 1M', 'write -z 31M 64k', 'write -P 0x2b 60M 64k'], cwd);
  // Two layers only.
  qemuCreate('two.qcow2', 'qcow2', '32M', { backing: 'base.qcow2', backingFormat: 'qcow2', cwd });
  qemuIo('two.qcow2', 'qcow2', ['write -P 0x3a 512k 1M'], cwd);
  // QED over the qcow2 chain.
  qemuCreate('top.qed', 'qed', '64M', { backing: 'middle.qcow2', backingFormat: 'qcow2', cwd });
  qemuIo('top.qed', 'qed', ['write -P 0x5a 2M 128k'], cwd);
  // qcow2 over raw.
  qemuCreate('raw-base.raw', 'raw', '16M', { cwd });
  qemuIo('raw-base.raw', 'raw', ['write -P 0x4a 0 1M', 'write -P 0x4b 8M 256k'], cwd);
  qemuCreate('over-raw.qcow2', 'qcow2', '16M', { backing: 'raw-base.raw', backingFormat: 'raw', cwd });
  qemuIo('over-raw.qcow2', 'qcow2', ['write -P 0x4c 64k 64k'], cwd);
  // qcow2 whose backing file has no recorded format (probed), and one with a missing backing file.
  // qemu-img 7.2 insists on a backing format; remove the recorded one by ending the header extensions at it.
  qemuCreate('noformat.qcow2', 'qcow2', '32M', { backing: 'base.qcow2', backingFormat: 'qcow2', cwd });
  const noFormat = readFileSync(work.path('noformat.qcow2'));
  const at = noFormat.subarray(0, 4096).indexOf(Buffer.from([0xe2, 0x79, 0x2a, 0xca])); // backing format extension
  if (at < 72) throw new Error('backing format extension not found');
  noFormat.fill(0, at, at + 8); // extension type 0 = end of extensions
  writeFileSync(work.path('noformat.qcow2'), noFormat);
  if (JSON.parse(run('qemu-img', ['info', '--output=json', work.path('noformat.qcow2')]).stdout)['backing-filename-format'] !== undefined) {
    throw new Error('the backing format is still recorded');
  }
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'dangling.qcow2', '32M'], { cwd });
  // Names ic never opens.
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'json:{"file":{"driver":"file","filename":"/etc/hosts"}}', '-F', 'raw', 'json.qcow2', '32M'], { cwd });
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'nbd://localhost/x', '-F', 'raw', 'nbd.qcow2', '32M'], { cwd });
});

describe('map over a backing chain equals qemu-img map', () => {
  test.each(['two.qcow2', 'top.qcow2', 'middle.qcow2', 'noformat.qcow2', 'top.qed'])('%s', async (name) => {
    const file = work.path(name);
    for (const output of ['json', 'human']) {
      const actual = await runIc(['map', `--output=${output}`, file]);
      expect(actual.stderr).toBe('');
      expect(actual.code).toBe(0);
      expect(actual.stdout).toBe(qemuMapText(file, output));
    }
  });

  test('the chain really is described at depth 2 (the test can fail)', async () => {
    const rows = JSON.parse((await runIc(['map', '--output=json', work.path('top.qcow2')])).stdout) as { depth: number; present: boolean }[];
    expect(new Set(rows.map((r) => r.depth))).toEqual(new Set([0, 1, 2]));
    expect(rows.some((r) => r.depth === 2 && r.present)).toBe(true);
  });

  test('qcow2 over a raw backing file', async () => {
    const file = work.path('over-raw.qcow2');
    const actual = await runIc(['map', '--output=json', file]);
    expect(actual.code).toBe(0);
    // A raw backing's holes are reported like qemu-img's (zero, with an offset) where the BlockIO can
    // find them (lseek SEEK_DATA/SEEK_HOLE); the result then equals qemu-img map.
    expect(actual.stdout).toBe(qemuMapText(file, 'json'));
  });
});

describe('backing references ic refuses to open', () => {
  test('--untrusted refuses an image with a backing file, for map and info, leaving it untouched', async () => {
    const file = work.path('top.qcow2');
    const before = sha256File(file);
    for (const command of ['map', 'info', 'check']) {
      const result = await runIc(['--untrusted', command, file]);
      expect(result.code).toBe(1);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(ERROR_LINE);
      expect(result.stderr).toContain('[EXTERNAL_REF]');
    }
    // A global flag may also follow the command.
    expect((await runIc(['map', file, '--untrusted'])).stderr).toContain('[EXTERNAL_REF]');
    expect(sha256File(file)).toBe(before);
  });

  test('--untrusted still opens images without references', async () => {
    const result = await runIc(['--untrusted', 'map', '--output=json', work.path('base.qcow2')]);
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(qemuMapText(work.path('base.qcow2'), 'json'));
  });

  test.each(['json.qcow2', 'nbd.qcow2'])('%s: a json: or protocol backing name is never opened', async (name) => {
    const result = await runIc(['map', work.path(name)]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(ERROR_LINE);
    expect(result.stderr).toContain('not a plain local path');
    expect(result.stderr).toContain('[EXTERNAL_REF]');
    // info only names it, as qemu-img info does.
    const info = await runIc(['info', '--output=json', work.path(name)]);
    expect(info.code).toBe(0);
    expect(JSON.parse(info.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', work.path(name)]).stdout));
  });

  test('a missing backing file is one NOT_FOUND line naming both files', async () => {
    const result = await runIc(['map', work.path('dangling.qcow2')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(ERROR_LINE);
    expect(result.stderr).toContain('dangling.qcow2: cannot open its backing file');
    expect(result.stderr).toContain('missing.qcow2');
    expect(result.stderr).toContain('[NOT_FOUND]');
  });

  test('info shows the backing file like qemu-img info (name, actual path, format)', async () => {
    const file = work.path('top.qcow2');
    const expected = run('qemu-img', ['info', file]).stdout;
    const actual = await runIc(['info', file]);
    expect(actual.stdout).toBe(expected);
    expect(actual.stdout).toContain(`backing file: middle.qcow2 (actual path: ${work.path('middle.qcow2')})`);
    expect(readFileSync(file).length).toBeGreaterThan(0);
  });
});
