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

test('-r: repair is refused while no driver declares it, and nothing is written', async () => {
  const before = sha256File(leaky);
  const result = await runIc(['check', '-r', 'leaks', leaky]);
  expect(result.code).toBe(1);
  expect(result.stderr).toMatch(ERROR_LINE);
  expect(result.stderr).toContain('repair is not supported yet');
  expect(sha256File(leaky)).toBe(before);
  const bad = await runIc(['check', '-r', 'everything', leaky]);
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
