/** create() against `qemu-img create -f qcow2`: same bytes where the layouts agree, check clean and info equal always. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { MemoryIO, type BackingReference } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCreate, qemuInfo, requireQemu, tempDir } from '@ic/test-utils';
import { qcow2Driver } from '../src/index.js';
import { closeAll, errorCode, mapOf, openQcow2 } from './helpers.js';

const tmp = tempDir('ic-qcow2-create-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const M = 1024 * 1024;
const G = 1024 * M;

interface CreateCase {
  label: string;
  size: number;
  options: Record<string, string | number | boolean>;
  qemuOptions?: string;
  backing?: BackingReference;
  /** qemu lays out very large refcount structures differently; those only need check/info agreement. */
  sameBytes: boolean;
}

const cases: CreateCase[] = [
  { label: '1 GiB default', size: G, options: {}, sameBytes: true },
  { label: 'compat=0.10', size: G, options: { compat: '0.10' }, qemuOptions: 'compat=0.10', sameBytes: true },
  { label: 'odd size rounds up to a sector', size: 100 * M + 7 * 512 + 3, options: {}, sameBytes: true },
  { label: 'empty disk', size: 0, options: {}, sameBytes: true },
  { label: 'cluster_size=512, refcount_bits=1', size: G, options: { cluster_size: 512, refcount_bits: 1 }, qemuOptions: 'cluster_size=512,refcount_bits=1', sameBytes: false },
  { label: 'cluster_size=2M, refcount_bits=64', size: 10 * G, options: { cluster_size: 2 * M, refcount_bits: 64 }, qemuOptions: 'cluster_size=2M,refcount_bits=64', sameBytes: true },
  { label: 'cluster_size=4k, lazy_refcounts', size: 3 * G, options: { cluster_size: 4096, lazy_refcounts: true }, qemuOptions: 'cluster_size=4k,lazy_refcounts=on', sameBytes: true },
  { label: '64 TiB: multi-cluster L1', size: 64 * 1024 * G, options: {}, sameBytes: true },
  { label: 'backing file with format', size: G, options: {}, backing: { name: 'base.qcow2', format: 'qcow2' }, sameBytes: true },
  { label: 'compat=0.10 with backing file', size: G, options: { compat: '0.10' }, qemuOptions: 'compat=0.10', backing: { name: 'base.qcow2', format: 'qcow2' }, sameBytes: true },
  { label: '512-byte clusters, 1-bit refcounts, 64 GiB (several refcount blocks)', size: 64 * G, options: { cluster_size: 512, refcount_bits: 1 }, qemuOptions: 'cluster_size=512,refcount_bits=1', sameBytes: false },
];

describe('create() makes what qemu-img create makes', () => {
  beforeAll(() => qemuCreate(tmp.path('base.qcow2'), 'qcow2', G));
  cases.forEach((testCase, index) => {
    it(testCase.label, async () => {
      const ours = tmp.path(`ours${index}.qcow2`);
      const theirs = tmp.path(`theirs${index}.qcow2`);
      const io = await FileIO.create(ours);
      await qcow2Driver.create!(io, { virtualSize: testCase.size, options: testCase.options, ...(testCase.backing ? { backing: testCase.backing } : {}) });
      await io.close();
      qemuCreate(theirs, 'qcow2', testCase.size, {
        ...(testCase.qemuOptions ? { o: testCase.qemuOptions } : {}),
        ...(testCase.backing ? { backing: testCase.backing.name, backingFormat: testCase.backing.format, cwd: tmp.dir } : {}),
      });
      if (testCase.sameBytes) expect(Buffer.from(readFileSync(ours)).equals(readFileSync(theirs))).toBe(true);
      const check = qemuCheck(ours, 'qcow2');
      expect(check.code, check.text).toBe(0);
      const { filename: _a, 'actual-size': _b, ...ourInfo } = qemuInfo(ours, 'qcow2') as unknown as Record<string, unknown>;
      const { filename: _c, 'actual-size': _d, ...theirInfo } = qemuInfo(theirs, 'qcow2') as unknown as Record<string, unknown>;
      // full-backing-filename is resolved relative to each file: same directory, same name.
      expect(ourInfo).toEqual(theirInfo);
      const image = await openQcow2(ours);
      expect(image.info().virtualSize).toBe(Math.ceil(testCase.size / 512) * 512);
      expect((await mapOf(image)).every((extent) => extent.kind === 'unallocated')).toBe(true);
      const report = await image.check();
      expect(report.corruptions + report.leaks + report.checkErrors, report.messages.join('\n')).toBe(0);
    });
  });
});

describe('create() refuses bad options with INVALID', () => {
  const bad: [string, Record<string, string | number | boolean>, BackingReference?][] = [
    ['cluster_size not a power of two', { cluster_size: 3000 }],
    ['cluster_size 4M', { cluster_size: 4 * M }],
    ['cluster_size 256', { cluster_size: 256 }],
    ['refcount_bits 3', { refcount_bits: 3 }],
    ['refcount_bits 128', { refcount_bits: 128 }],
    ['compat=0.10 with refcount_bits=8', { compat: '0.10', refcount_bits: 8 }],
    ['compat=0.10 with lazy_refcounts', { compat: '0.10', lazy_refcounts: true }],
    ['unknown compat', { compat: '2.0' }],
    ['backing name over 1023 bytes', {}, { name: 'x'.repeat(1024) }],
    ['backing format of 16 bytes', {}, { name: 'base', format: 'f'.repeat(16) }],
  ];
  for (const [label, options, backing] of bad) {
    it(label, async () => {
      const io = new MemoryIO();
      expect(await errorCode(() => qcow2Driver.create!(io, { virtualSize: G, options, ...(backing ? { backing } : {}) }))).toBe('INVALID');
    });
  }

  it('a backing name that fits the limit but not a 512-byte cluster', async () => {
    const io = new MemoryIO();
    const code = await errorCode(() => qcow2Driver.create!(io, { virtualSize: G, options: { cluster_size: 512 }, backing: { name: 'n'.repeat(500), format: 'raw' } }));
    expect(code).toBe('INVALID');
  });
});
