/** `ic info --features`, `ic amend` and `ic demote` on qcow2 images made by qemu, judged by qemu-img. */
import { afterAll, expect, test } from 'vitest';
import { copyFile, qemuCheck, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-amend-');
afterAll(() => work.cleanup());

let serial = 0;
/** A v3 qcow2 with data and zero clusters (with and without a host cluster), over a raw backing file or not. */
function makeImage(backing: boolean, o?: string): { image: string; original: string } {
  const dir = work.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/image.qcow2`;
  if (backing) {
    qemuCreate(`${dir}/base.raw`, 'raw', '16M');
    qemuIo(`${dir}/base.raw`, 'raw', ['write -P 0xbb 0 16M']);
    qemuCreate(image, 'qcow2', '16M', { backing: 'base.raw', backingFormat: 'raw', cwd: dir, ...(o ? { o } : {}) });
  } else {
    qemuCreate(image, 'qcow2', '16M', o ? { o } : {});
  }
  qemuIo(image, 'qcow2', ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 4M 128k']);
  const original = `${dir}/original.qcow2`;
  copyFile(image, original);
  return { image, original };
}

const formatSpecific = (file: string) => qemuInfo(file, 'qcow2')['format-specific']?.data ?? {};

test('info --features lists the features with kind and removal; JSON keeps qemu-img\'s fields', async () => {
  const { image } = makeImage(true, 'lazy_refcounts=on');
  const human = await runIc(['info', '--features', image]);
  expect(human.code).toBe(0);
  expect(human.stdout.startsWith(run('qemu-img', ['info', image]).stdout)).toBe(true);
  expect(human.stdout).toMatch(/^Features:\n {4}v3 \[incompatible\]: .*removable \(zeros: /m);
  expect(human.stdout).toMatch(/^ {4}zero_clusters \[incompatible\]: 3 L2 entries/m);
  expect(human.stdout).toMatch(/^ {4}lazy_refcounts \[compatible\]: .*removable \(header: /m);
  const json = JSON.parse((await runIc(['info', '--features', '--output=json', image])).stdout) as Record<string, unknown> & { features: { name: string }[] };
  const { features, ...rest } = json;
  expect(rest).toEqual(qemuInfo(image, 'qcow2'));
  expect(features.map((feature) => feature.name)).toEqual(['v3', 'zero_clusters', 'lazy_refcounts']);
});

test.each([false, true])('amend -o compat=0.10 (backing file: %s): qemu-img info says 0.10, content identical, check clean', async (backing) => {
  const { image, original } = makeImage(backing);
  const result = await runIc(['amend', '-o', 'compat=0.10', image]);
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout).toContain('compat 1.1 -> 0.10');
  expect(formatSpecific(image).compat).toBe('0.10');
  expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
  expect(qemuCheck(image, 'qcow2').code).toBe(0);
  expect(qemuIo(image, 'qcow2', ['write -P 7 8M 64k', 'read -P 7 8M 64k', 'read -P 1 0 64k'])).not.toMatch(/fail/i);
});

test('amend -o lazy_refcounts=off keeps every other option as it was', async () => {
  const { image, original } = makeImage(false, 'lazy_refcounts=on,refcount_bits=64');
  const before = formatSpecific(image);
  const result = await runIc(['amend', '-o', 'lazy_refcounts=off', image]);
  expect(result.code, result.stderr).toBe(0);
  expect(formatSpecific(image)).toEqual({ ...before, 'lazy-refcounts': false });
  expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
  expect(qemuCheck(image, 'qcow2').code).toBe(0);
});

test('demote removes what it can and lists what stays, with why', async () => {
  const { image, original } = makeImage(false, 'refcount_bits=8');
  // A persistent bitmap: version 3 only, and not removable by demote.
  expect(run('qemu-img', ['bitmap', '--add', image, 'b0']).code).toBe(0);
  const result = await runIc(['demote', image]);
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout).toContain('zero clusters expanded: 3');
  expect(result.stdout).toContain('refcount_bits 8 -> 16');
  expect(result.stdout).toMatch(/^kept v3: persistent bitmaps/m);
  expect(result.stdout).toMatch(/^kept bitmaps: /m);
  expect(formatSpecific(image)).toMatchObject({ compat: '1.1', 'refcount-bits': 16 });
  expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
  expect(qemuCheck(image, 'qcow2').code).toBe(0);
  expect((await runIc(['info', '--features', image])).stdout).not.toContain('zero_clusters');
});

test('amend -o compat=1.1,refcount_bits=4 on a version 2 image: what qemu-img amend makes', async () => {
  const { image, original } = makeImage(true);
  expect(run('qemu-img', ['amend', '-f', 'qcow2', '-o', 'compat=0.10', image]).code).toBe(0);
  copyFile(image, original);
  const theirs = `${original}.qemu`;
  copyFile(original, theirs);
  expect(run('qemu-img', ['amend', '-f', 'qcow2', '-o', 'compat=1.1,refcount_bits=4', theirs]).code).toBe(0);
  const result = await runIc(['amend', '-o', 'compat=1.1,refcount_bits=4', image]);
  expect(result.code, result.stderr).toBe(0);
  expect(result.stdout).toBe('compat 0.10 -> 1.1\nrefcount_bits 16 -> 4\n');
  expect(formatSpecific(image)).toEqual(formatSpecific(theirs));
  expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
  expect(qemuCheck(image, 'qcow2').code).toBe(0);
});

test('demote of a plain v3 image: version 2, as qemu-img amend -o compat=0.10 makes it', async () => {
  const { image, original } = makeImage(true);
  const theirs = `${original}.qemu`;
  copyFile(original, theirs);
  expect(run('qemu-img', ['amend', '-f', 'qcow2', '-o', 'compat=0.10', theirs]).code).toBe(0);
  expect((await runIc(['demote', image])).code).toBe(0);
  expect(formatSpecific(image)).toEqual(formatSpecific(theirs));
  expect(qemuCompare(image, 'qcow2', theirs, 'qcow2').code).toBe(0);
  expect(qemuCheck(image, 'qcow2').code).toBe(0);
});

test('bad input: one line, the file byte-identical', async () => {
  const { image } = makeImage(false);
  const before = sha256File(image);
  for (const args of [
    ['amend', '-o', 'cluster_size=4k', image],
    ['amend', image],
    ['amend', '-o', 'refcount_bits=3', image],
    ['amend', '-o', 'refcount_bits=many', image],
    ['amend', '-o', 'compat=0.10,refcount_bits=8', image],
    ['demote', '--feature', 'no_such_feature', image],
  ]) {
    const result = await runIc(args);
    expect(result.code, args.join(' ')).not.toBe(0);
    expect(result.stderr).toMatch(ERROR_LINE);
    expect(sha256File(image)).toBe(before);
  }
});
