/**
 * The driver as both ends of the core's in-place engine, on images qemu made: qcow2 -> qcow2 with other
 * options. qemu-img check must be clean and qemu-img compare must find the original content.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { convertInPlace } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { qcow2Driver } from '../src/index.js';
import { inflate } from './helpers.js';

const tmp = tempDir('ic-qcow2-engine-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;

const cases: { label: string; from: string; to: Record<string, string | number | boolean>; backing: boolean }[] = [
  { label: 'compat 1.1 -> 0.10', from: '', to: { compat: '0.10' }, backing: false },
  { label: 'compat 0.10 -> 1.1 with refcount_bits=1', from: 'compat=0.10', to: { compat: '1.1', refcount_bits: 1 }, backing: false },
  { label: 'compat 1.1 with backing file and zero clusters -> 1.1, lazy refcounts', from: '', to: { lazy_refcounts: true }, backing: true },
  { label: '4k clusters -> 1.1 (same geometry)', from: 'cluster_size=4k', to: {}, backing: false },
];

describe('convertInPlace(qcow2 -> qcow2) on qemu-made images', () => {
  cases.forEach((testCase, index) => {
    it(testCase.label, async () => {
      const original = tmp.path(`original${index}.qcow2`);
      const file = tmp.path(`converted${index}.qcow2`);
      if (testCase.backing) {
        qemuCreate(tmp.path('base.qcow2'), 'qcow2', 64 * M);
        qemuIo(tmp.path('base.qcow2'), 'qcow2', ['write -P 9 0 64M']);
      }
      qemuCreate(original, 'qcow2', 64 * M, {
        ...(testCase.from ? { o: testCase.from } : {}),
        ...(testCase.backing ? { backing: 'base.qcow2', backingFormat: 'qcow2', cwd: tmp.dir } : {}),
      });
      qemuIo(original, 'qcow2', [
        'write -P 1 1000 100k',
        'write -P 2 10M 1M',
        'write -z 10M 64k', // zero cluster that keeps its host cluster (compat 1.1)
        'write -z 20M 128k',
        `discard ${10 * M + 65536} 64k`,
        `write -P 3 ${64 * M - 4096} 4k`,
      ]);
      copyFileSync(original, file);
      const io = await FileIO.open(file, { writable: true, lock: true });
      try {
        const report = await convertInPlace({ io, source: qcow2Driver, target: qcow2Driver, targetOptions: testCase.to, openOptions: { inflate } });
        expect(report.verified).toBe(true);
      } finally {
        await io.close();
      }
      const check = qemuCheck(file, 'qcow2');
      expect(check.code, check.text).toBe(0);
      const compare = qemuCompare(original, 'qcow2', file, 'qcow2');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      const info = qemuInfo(file, 'qcow2');
      expect(info['format-specific']?.data.compat).toBe(testCase.to.compat ?? '1.1');
      if (testCase.backing) expect(info['backing-filename-format']).toBe('qcow2');
    });
  });
});
