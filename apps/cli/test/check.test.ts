/** `ic check` exit statuses and reports against qemu-img check on clean, leaking and corrupt qcow2 images. */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { copyFile, qemuCheck, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-check-');
afterAll(() => work.cleanup());

/** Sets the 16-bit refcount of host cluster `index` (refcount_bits=16, first refcount block). */
function setRefcount(file: string, index: number, value: number): void {
  const bytes = readFileSync(file);
  const refcountTableOffset = Number(bytes.readBigUInt64BE(48)); // header: refcount_table_offset
  const refcountBlockOffset = Number(bytes.readBigUInt64BE(refcountTableOffset));
  bytes.writeUInt16BE(value, refcountBlockOffset + 2 * index);
  writeFileSync(file, bytes);
}

/** Host offset of the data cluster that holds guest offset 0 (L1[0] -> L2[0]). */
function firstDataCluster(file: string): number {
  const bytes = readFileSync(file);
  const l1TableOffset = Number(bytes.readBigUInt64BE(40));
  const l2Offset = Number(bytes.readBigUInt64BE(l1TableOffset) & 0x00fffffffffffe00n);
  return Number(bytes.readBigUInt64BE(l2Offset) & 0x00fffffffffffe00n);
}

const clean = work.path('clean.qcow2');
const leaky = work.path('leaky.qcow2');
const corrupt = work.path('corrupt.qcow2');
const both = work.path('both.qcow2');

beforeAll(() => {
  qemuCreate(clean, 'qcow2', '64M');
  qemuIo(clean, 'qcow2', ['write -P 0xaa 0 1M', 'write -P 0xbb 10M 64k']);
  copyFile(clean, leaky);
  setRefcount(leaky, 0, 2); // the header cluster counted twice: a leak, harmless
  copyFile(clean, corrupt);
  setRefcount(corrupt, firstDataCluster(corrupt) / 65536, 0); // a data cluster counted as free: corruption
  copyFile(corrupt, both);
  setRefcount(both, 0, 2);
});

test.each([
  ['clean', clean, 0],
  ['leaky', leaky, 3],
  ['corrupt', corrupt, 2],
  ['corrupt and leaky', both, 2],
])('%s image: exit status, text and JSON as qemu-img check', async (_name, file, status) => {
  const before = sha256File(file);
  const expected = qemuCheck(file, 'qcow2');
  expect(expected.code).toBe(status);
  const human = await runIc(['check', file]);
  const json = await runIc(['check', '--output=json', file]);
  expect(human.code).toBe(status);
  expect(json.code).toBe(status);
  expect(human.stdout).toBe(run('qemu-img', ['check', '-f', 'qcow2', file]).stdout);
  expect(JSON.parse(json.stdout)).toEqual(expected.json);
  expect(json.stdout).toBe(run('qemu-img', ['check', '-f', 'qcow2', '--output=json', file]).stdout);
  // Problem descriptions go to stderr (as qemu-img's do); nothing at all for a clean image.
  if (status === 0) expect(human.stderr).toBe('');
  else expect(human.stderr.length).toBeGreaterThan(0);
  expect(sha256File(file)).toBe(before);
});

/** `ic check -r MODE` and `qemu-img check -r MODE` on two copies of `file`: both results, and the copies. */
async function repairBoth(file: string, mode: 'leaks' | 'all', output: 'human' | 'json' = 'human') {
  const ours = work.path(`ours-${mode}-${output}-${Math.random().toString(36).slice(2)}.qcow2`);
  const theirs = `${ours}.qemu`;
  copyFile(file, ours);
  copyFile(file, theirs);
  const args = output === 'json' ? ['--output=json'] : [];
  const ic = await runIc(['check', '-r', mode, ...args, ours]);
  const qemu = run('qemu-img', ['check', '-r', mode, '-f', 'qcow2', ...args, theirs]);
  return { ic, qemu, ours, theirs };
}

test.each(['human', 'json'] as const)('-r leaks: the same report (%s) and exit status as qemu-img, a clean image after', async (output) => {
  const { ic, qemu, ours, theirs } = await repairBoth(leaky, 'leaks', output);
  expect(ic.code).toBe(qemu.code);
  expect(ic.code).toBe(0);
  expect(output === 'json' ? JSON.parse(ic.stdout) : ic.stdout).toEqual(output === 'json' ? { ...JSON.parse(qemu.stdout), filename: ours } : qemu.stdout);
  expect(ic.stderr).toContain('Leaked cluster 0 refcount=2 reference=1');
  expect(qemuCheck(ours, 'qcow2').code).toBe(0);
  expect(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', ours, theirs]).code).toBe(0);
});

test('-r all on a dirty image with lazy refcounts: qemu-img\'s report, dirty bit cleared; -r leaks refuses it like qemu-img', async () => {
  const dirty = work.path('dirty.qcow2');
  qemuCreate(dirty, 'qcow2', '64M', { o: 'lazy_refcounts=on' });
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'write -P 2 1M 64k', '-c', 'abort', dirty]);
  const { ic, qemu, ours, theirs } = await repairBoth(dirty, 'all');
  expect(ic.code).toBe(qemu.code);
  expect(ic.code).toBe(0);
  expect(ic.stdout).toBe(qemu.stdout);
  expect(qemuCheck(ours, 'qcow2').code).toBe(0);
  expect(run('qemu-img', ['info', '--output=json', ours]).stdout).toContain('"dirty-flag": false');
  expect(run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', ours, theirs]).code).toBe(0);

  const before = sha256File(dirty);
  const leaks = await runIc(['check', '-r', 'leaks', dirty]);
  expect(leaks.code).toBe(1);
  expect(leaks.stderr).toMatch(ERROR_LINE);
  expect(leaks.stderr).toContain('must be rebuilt');
  expect(sha256File(dirty)).toBe(before);
  const qemuLeaks = work.path('dirty-qemu-leaks.qcow2');
  copyFile(dirty, qemuLeaks);
  const refused = run('qemu-img', ['check', '-r', 'leaks', '-f', 'qcow2', qemuLeaks]);
  expect(refused.code).toBe(1);
  expect(refused.stderr).toContain('need to rebuild refcount structures');
});

test('-r on damage the repair does not touch: one line, exit 1, nothing written', async () => {
  const damaged = work.path('damaged.qcow2');
  copyFile(clean, damaged);
  const bytes = readFileSync(damaged);
  const l1 = Number(bytes.readBigUInt64BE(40));
  bytes.writeBigUInt64BE(0x8000000000040001n, l1); // L1 entry with reserved bits
  writeFileSync(damaged, bytes);
  const before = sha256File(damaged);
  const result = await runIc(['check', '-r', 'all', damaged]);
  expect(result.code).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(ERROR_LINE);
  expect(result.stderr).toContain('[CORRUPT]');
  expect(sha256File(damaged)).toBe(before);
  const bad = await runIc(['check', '-r', 'everything', damaged]);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(ERROR_LINE);
});

test('a format without checks answers 63, like qemu-img', async () => {
  const raw = work.path('plain.raw');
  writeFileSync(raw, new Uint8Array(65536));
  const expected = run('qemu-img', ['check', '-f', 'raw', raw]);
  const result = await runIc(['check', '-f', 'raw', raw]);
  expect(result.code).toBe(expected.code);
  expect(result.code).toBe(63);
  expect(result.stderr).toMatch(ERROR_LINE);
});

test('an image that cannot be opened: exit 1, one line', async () => {
  const broken = work.path('broken.qcow2');
  const bytes = readFileSync(clean);
  bytes.writeBigUInt64BE(0x7fffffffffff0000n, 40); // L1 table offset far past the end of the file
  writeFileSync(broken, bytes);
  const result = await runIc(['check', '-f', 'qcow2', broken]);
  expect(result.code).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(ERROR_LINE);
});
