/**
 * In-place conversions through the real `ic` (build first: pnpm turbo run build), judged by qemu-img: Parallels
 * images made by qemu-img to qcow2, QED and VMDK and back, and qemu-made qcow2, QED, VMDK and raw images to
 * Parallels and back, each result written by qemu-io and checked again.
 */
import { copyFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_HEAD_LENGTH } from '@ic/core';
import { icCli, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, requireBuiltIc, requireQemu, tempDir } from '@ic/test-utils';
import { ENGINE_HEAD_LIMIT } from '../src/index.js';

const GiB = 1024 ** 3;

interface Conversion {
  report: Record<string, unknown> & { bytesRelocated: number; io: { bytesWritten: number } };
}

function convert(path: string, target: string, options: string[] = []): Conversion {
  const run = icCli(['convert-inplace', ...options, '--output=json', path, target]);
  expect(run.status, run.stderr).toBe(0);
  return { report: JSON.parse(run.stdout) as Conversion['report'] };
}

/** The image reads exactly like `expected` (a raw file) and qemu-img check finds it clean. */
function expectSame(path: string, format: string, expected: string): void {
  const check = qemuCheck(path, format);
  expect(check.code, check.text).toBe(0);
  const compare = qemuCompare(path, format, expected, 'raw');
  expect(compare.code, compare.stdout + compare.stderr).toBe(0);
}

/** Writes after a conversion: a fresh area, over old data, into part of an allocated cluster. */
const laterWrites = ['write -P 0xe1 700M 3M', 'write -P 0xe2 5M 4k', 'write -P 0xe3 100M 1536k'];

describe('Parallels in place, through ic, judged by qemu-img', () => {
  const tmp = tempDir('ic-parallels-inplace-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  const cases: { target: string; forward: string[]; back: string[] }[] = [
    { target: 'qcow2', forward: ['-o', 'cluster_size=64k'], back: ['-o', 'cluster_size=1M'] },
    { target: 'qed', forward: ['-o', 'cluster_size=64k'], back: ['-o', 'cluster_size=1M'] },
    { target: 'vmdk', forward: [], back: [] },
  ];
  for (const { target, forward, back } of cases) {
    it(`parallels (1 MiB clusters) -> ${target} -> parallels, qemu-io writes on each side`, () => {
      const image = tmp.path(`${target}.img`);
      const expected = tmp.path(`${target}.raw`);
      qemuCreate(image, 'parallels', GiB);
      qemuIo(image, 'parallels', ['write -P 0x11 1000 5000', 'write -P 0x22 5M 70k', 'write -P 0x33 100M 3M', `write -P 0x44 ${GiB - 512} 512`]);
      qemuConvert(image, 'parallels', expected, 'raw');

      const there = convert(image, target, forward);
      // Parallels clusters sit at 1 MiB multiples past the BAT: nothing has to move.
      expect(there.report.bytesRelocated).toBe(0);
      expect(there.report.clustersRelocated).toBe(0);
      expectSame(image, target, expected);
      qemuIo(image, target, laterWrites);
      qemuIo(expected, 'raw', laterWrites);
      expectSame(image, target, expected);

      convert(image, 'parallels', back);
      expectSame(image, 'parallels', expected);
      qemuIo(image, 'parallels', ['write -P 0xf1 900M 2M', 'write -P 0xf2 5M 512', 'write -P 0xf3 700M 100k']);
      qemuIo(expected, 'raw', ['write -P 0xf1 900M 2M', 'write -P 0xf2 5M 512', 'write -P 0xf3 700M 100k']);
      expectSame(image, 'parallels', expected);
    });
  }

  // Images qemu-img made in other formats (and raw), converted to Parallels and back.
  const firstWrites = ['write -P 0x11 1000 5000', 'write -P 0x22 9M 70k', 'write -P 0x33 100M 3M', 'write -P 0x55 300M 16M', `write -P 0x44 ${GiB - 512} 512`];
  const sources: { name: string; format: string; o?: string; options?: string[]; relocated: number; back: string }[] = [
    // qemu's qcow2 and QED data clusters are 64 KiB-aligned past a 128 KiB header region: all stay.
    { name: 'qcow2 v3, 64 KiB clusters', format: 'qcow2', relocated: 0, back: 'qcow2' },
    { name: 'qcow2 v2, 64 KiB clusters', format: 'qcow2', o: 'compat=0.10', relocated: 0, back: 'qed' },
    { name: 'qcow2, 1 MiB clusters', format: 'qcow2', o: 'cluster_size=1M', relocated: 0, back: 'vmdk' },
    { name: 'QED', format: 'qed', relocated: 0, back: 'qcow2' },
    { name: 'VMDK monolithicSparse', format: 'vmdk', relocated: 0, back: 'vmdk' },
    // The first cluster lies under the header and BAT.
    { name: 'raw', format: 'raw', options: ['-f', 'raw'], relocated: 1, back: 'qed' },
  ];
  for (const source of sources) {
    it(`${source.name} -> parallels -> ${source.back}, qemu-io writes on each side`, () => {
      const image = tmp.path(`${source.name.replace(/\W+/g, '-')}.img`);
      const expected = `${image}.raw`;
      qemuCreate(image, source.format, GiB, source.o ? { o: source.o } : {});
      qemuIo(image, source.format, firstWrites);
      qemuConvert(image, source.format, expected, 'raw');

      const there = convert(image, 'parallels', source.options);
      expect(there.report.clustersRelocated).toBe(source.relocated);
      expectSame(image, 'parallels', expected);
      qemuIo(image, 'parallels', laterWrites);
      qemuIo(expected, 'raw', laterWrites);
      expectSame(image, 'parallels', expected);

      convert(image, source.back);
      expectSame(image, source.back, expected);
      const writes = ['write -P 0xf1 900M 2M', 'write -P 0xf2 5M 512', 'write -P 0xf3 700M 100k'];
      qemuIo(image, source.back, writes);
      qemuIo(expected, 'raw', writes);
      expectSame(image, source.back, expected);
    });
  }

  it('a 64 GiB disk at 64 KiB clusters: a 4 MiB header region, the clusters under it move', () => {
    const image = tmp.path('64g.qcow2');
    qemuCreate(image, 'qcow2', 64 * GiB);
    qemuIo(image, 'qcow2', ['write -P 0x55 0 3M', 'write -P 0x56 40G 1M', `write -P 0x57 ${64 * GiB - 512} 512`]);
    const expected = tmp.path('64g.qcow2.copy');
    copyFileSync(image, expected);
    const { report } = convert(image, 'parallels', ['-o', 'cluster_size=64k']);
    // The commit writes 64 + 4 * 1 Mi entries, in sectors: 4 MiB + 512. The header region (data_off) is that padded
    // to a cluster, 4 MiB + 64 KiB; qemu put the first 4 MiB of data below it.
    expect(report.headerBytes).toBe(4 * 1024 * 1024 + 512);
    expect(report.clustersRelocated).toBeGreaterThan(0);
    expect(qemuCheck(image, 'parallels').code).toBe(0);
    expect(qemuCompare(image, 'parallels', expected, 'qcow2').code).toBe(0);
  });

  it('an empty image whose BAT spans three clusters gets one cluster of zeros (qemu 7.2 counts the BAT as leaked without one)', () => {
    const image = tmp.path('empty-4k.qcow2');
    const expected = tmp.path('empty-4k.raw');
    qemuCreate(image, 'qcow2', 8 * 1024 * 1024, { o: 'cluster_size=4k' });
    qemuConvert(image, 'qcow2', expected, 'raw');
    const { report } = convert(image, 'parallels');
    expect(report).toMatchObject({ targetClusterSize: 4096, clustersKept: 0, clustersRelocated: 1, bytesRelocated: 4096, unallocatedClusters: 2047 });
    // Header and BAT (64 + 4 * 2048 bytes) padded to three clusters, then the zero cluster (packed down to them).
    expect(report['fileSizeAfter']).toBe(4 * 4096);
    expectSame(image, 'parallels', expected);
    qemuIo(image, 'parallels', ['write -P 0xe5 1M 8k']);
    qemuIo(expected, 'raw', ['write -P 0xe5 1M 8k']);
    expectSame(image, 'parallels', expected);
    convert(image, 'qcow2');
    expectSame(image, 'qcow2', expected);
  });

  it('a target whose header and BAT would not fit the engine is refused in one line, the file untouched', () => {
    const image = tmp.path('big.qcow2');
    // 2 TiB at 64 KiB clusters: a BAT of 128 MiB, more than the 64 MiB header region the engine commits.
    qemuCreate(image, 'qcow2', 2048 * GiB);
    qemuIo(image, 'qcow2', ['write -P 0x55 0 64k']);
    const copy = tmp.path('big-copy.qcow2');
    copyFileSync(image, copy);
    const run = icCli(['convert-inplace', '-o', 'cluster_size=64k', image, 'parallels']);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(/^ic: parallels: the header and BAT would take \d+ bytes .* \[UNSUPPORTED\]\n$/);
    expect(qemuCompare(image, 'qcow2', copy, 'qcow2').code).toBe(0);
    expect(qemuCheck(image, 'qcow2').code).toBe(0);
  });

  it('the header limit is the engine\'s', () => {
    expect(ENGINE_HEAD_LIMIT).toBe(MAX_HEAD_LENGTH);
  });
});
