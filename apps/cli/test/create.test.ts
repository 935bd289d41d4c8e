/** `ic create` makes images qemu-img accepts: check clean, info equal to what qemu-img create makes. */
import { afterAll, describe, expect, test } from 'vitest';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { hasCapability } from '@ic/core';
import { qemuCheck, qemuCreate, qemuInfo, requireQemu, run, tempDir } from '@ic/test-utils';
import { createRegistry } from '../src/index.js';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-create-');
afterAll(() => work.cleanup());
const { registry } = createRegistry();
const creatable = registry.list().filter((d) => hasCapability(d, 'create') && d.create).map((d) => d.name);

/** qemu-img info JSON without the fields that differ between two files by nature. */
function comparableInfo(file: string, format: string): Record<string, unknown> {
  const { filename: _f, 'actual-size': _a, ...rest } = qemuInfo(file, format) as unknown as Record<string, unknown>;
  const specific = rest['format-specific'] as { data: Record<string, unknown> } | undefined;
  // VMDK descriptors carry a random CID and the extent file name.
  if (specific?.data && 'cid' in specific.data) {
    const { cid: _c, extents: _e, ...data } = specific.data;
    rest['format-specific'] = { ...specific, data };
  }
  return rest;
}

test('every driver that can create is exercised', () => {
  expect(creatable.length).toBeGreaterThanOrEqual(2);
});

describe.each(creatable)('%s', (format) => {
  test('create: qemu-img check clean, qemu-img info as for qemu-img create', async () => {
    const mine = work.path(`mine-${format}.img`);
    const theirs = work.path(`theirs-${format}.img`);
    const result = await runIc(['create', '-f', format, mine, '1G']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(new RegExp(`^Formatting '${mine}', fmt=${format} size=1073741824`));
    qemuCreate(theirs, format, '1G');
    const check = qemuCheck(mine, format);
    expect([0, 63]).toContain(check.code); // 63: the format has no check (raw)
    expect(comparableInfo(mine, format)).toEqual(comparableInfo(theirs, format));
    // ic reads back what it made exactly as qemu-img does.
    const ours = await runIc(['info', '--output=json', mine]);
    expect(JSON.parse(ours.stdout)).toEqual(qemuInfo(mine, format));
  });
});

test('qcow2 with options, quietly', async () => {
  const file = work.path('options.qcow2');
  const result = await runIc(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-o', 'compat=0.10', file, '100M']);
  expect(result.code).toBe(0);
  expect(result.stdout).toBe('');
  expect(qemuCheck(file, 'qcow2').code).toBe(0);
  const info = qemuInfo(file, 'qcow2');
  expect(info['cluster-size']).toBe(4096);
  expect(info['format-specific']?.data['compat']).toBe('0.10');
});

test('with a backing file: size taken from it, relative name kept, qemu-img agrees', async () => {
  const base = work.path('base.qcow2');
  qemuCreate(base, 'qcow2', '48M');
  const top = work.path('top.qcow2');
  const result = await runIc(['create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top]);
  expect(result.stderr).toBe('');
  expect(result.code).toBe(0);
  const info = qemuInfo(top, 'qcow2');
  expect(info['virtual-size']).toBe(48 * 1024 * 1024);
  expect(info['backing-filename']).toBe('base.qcow2');
  expect(info['backing-filename-format']).toBe('qcow2');
  expect(qemuCheck(top, 'qcow2').code).toBe(0);
  const map = await runIc(['map', '--output=json', top]);
  expect(map.stdout).toBe(run('qemu-img', ['map', '--output=json', top]).stdout);
});

test('backing errors: -b without -F is a usage error; a missing backing file is NOT_FOUND; -u skips the check', async () => {
  const target = work.path('b.qcow2');
  const noFormat = await runIc(['create', '-f', 'qcow2', '-b', 'base.qcow2', target, '1G']);
  expect(noFormat.code).toBe(2);
  expect(noFormat.stderr).toMatch(ERROR_LINE);
  const missing = await runIc(['create', '-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2', target, '1G']);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toMatch(ERROR_LINE);
  expect(missing.stderr).toContain('[NOT_FOUND]');
  expect(existsSync(target)).toBe(false);
  const unsafe = await runIc(['create', '-q', '-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', target, '1G']);
  expect(unsafe.code).toBe(0);
  expect(qemuInfo(target, 'qcow2')['backing-filename']).toBe('missing.qcow2');
});

test('a format that cannot have a backing file refuses -b', async () => {
  const cannot = registry.list().filter((d) => hasCapability(d, 'create') && !hasCapability(d, 'backing'));
  expect(cannot.length).toBeGreaterThan(0);
  for (const driver of cannot) {
    const result = await runIc(['create', '-f', driver.name, '-b', 'base.qcow2', '-F', 'qcow2', work.path(`nb.${driver.name}`), '1M']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(ERROR_LINE);
    expect(result.stderr).toContain('[UNSUPPORTED]');
  }
});

test('an existing file is overwritten, as qemu-img create does', async () => {
  const file = work.path('existing.qcow2');
  writeFileSync(file, new Uint8Array(5 * 1024 * 1024).fill(0xee));
  const result = await runIc(['create', '-q', '-f', 'qcow2', file, '2M']);
  expect(result.code).toBe(0);
  expect(statSync(file).size).toBeLessThan(1024 * 1024);
  expect(qemuCheck(file, 'qcow2').code).toBe(0);
  expect(qemuInfo(file, 'qcow2')['virtual-size']).toBe(2 * 1024 * 1024);
});

test('-o help lists the options of the format', async () => {
  const result = await runIc(['create', '-f', 'qcow2', '-o', 'help', work.path('unused.qcow2')]);
  expect(result.code).toBe(0);
  expect(result.stdout).toContain('cluster_size');
  expect(existsSync(work.path('unused.qcow2'))).toBe(false);
});
