/**
 * VHDX images made by qemu-img converted in place through the real `ic` (build first: pnpm turbo run build) to
 * qcow2, QED, VMDK and Parallels, and images qemu-img made in those formats (and raw) converted to VHDX and back,
 * judged by qemu-img, then written by qemu-io and judged again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { icCli, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, requireBuiltIc, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { reviveLastLogEntry } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

function expectSame(path: string, format: string, expected: string): void {
  const check = qemuCheck(path, format);
  expect(check.code, check.text).toBe(0);
  const compare = qemuCompare(path, format, expected, 'raw');
  expect(compare.code, compare.stdout + compare.stderr).toBe(0);
}

const laterWrites = ['write -P 0xe1 700M 3M', 'write -P 0xe2 5M 4k', 'write -P 0xe3 100M 1536k'];

interface Report {
  targetClusterSize: number;
  clustersKept: number;
  clustersRelocated: number;
  bytesRelocated: number;
  verified: boolean;
}

function convert(path: string, target: string, options: string[] = []): Report {
  const run = icCli(['convert-inplace', ...options, '--output=json', path, target]);
  expect(run.status, run.stderr).toBe(0);
  return JSON.parse(run.stdout) as Report;
}

/** Writes into a fresh area, over old data, and into part of a block. */
function writeBoth(path: string, format: string, expected: string, writes: string[]): void {
  qemuIo(path, format, writes);
  qemuIo(expected, 'raw', writes);
  expectSame(path, format, expected);
}

describe('VHDX in place, through ic, judged by qemu-img', () => {
  const tmp = tempDir('ic-vhdx-inplace-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  const sources = [
    { name: 'defaults (8 MiB blocks)', o: undefined },
    { name: 'block_size=1M', o: 'block_size=1M' },
    { name: 'block_size=32M', o: 'block_size=32M' },
    { name: 'subformat=fixed,block_state_zero=off', o: 'subformat=fixed,block_state_zero=off' },
  ];
  const targets: { format: string; options: string[] }[] = [
    { format: 'qcow2', options: ['-o', 'cluster_size=64k'] },
    { format: 'qed', options: ['-o', 'cluster_size=64k'] },
    { format: 'vmdk', options: [] },
    { format: 'parallels', options: [] },
  ];
  for (const source of sources) {
    for (const target of targets) {
      it(`${source.name} -> ${target.format}: no data moves; qemu-io writes afterwards`, () => {
        const image = tmp.path(`${source.o ?? 'default'}-${target.format}.img`);
        const expected = `${image}.raw`;
        const size = source.o?.includes('fixed') ? 256 * MiB : GiB;
        qemuCreate(image, 'vhdx', size, source.o ? { o: source.o } : {});
        qemuIo(image, 'vhdx', ['write -P 0x11 1000 5000', 'write -P 0x22 9M 70k', 'write -P 0x33 100M 3M', `write -P 0x44 ${size - 512} 512`]);
        qemuConvert(image, 'vhdx', expected, 'raw');
        const run = icCli(['convert-inplace', ...target.options, '--output=json', image, target.format]);
        expect(run.status, run.stderr).toBe(0);
        const report = JSON.parse(run.stdout) as { bytesRelocated: number; clustersRelocated: number; verified: boolean };
        expect([report.bytesRelocated, report.clustersRelocated, report.verified]).toEqual([0, 0, true]);
        expectSame(image, target.format, expected);
        const writes = laterWrites.map((w) => w.replace('700M', `${Math.floor(size * 0.7 / MiB)}M`));
        qemuIo(image, target.format, writes);
        qemuIo(expected, 'raw', writes);
        expectSame(image, target.format, expected);
      });
    }
  }

  it('a VHDX with a log to replay is refused in one line and left as it was', () => {
    const image = tmp.path('dirty.vhdx');
    qemuCreate(image, 'vhdx', 64 * MiB);
    qemuIo(image, 'vhdx', ['write -P 0x61 0 1M']);
    reviveLastLogEntry(image);
    const before = sha256File(image);
    const run = icCli(['convert-inplace', image, 'qcow2']);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(/^ic: vhdx: .* contains a log that needs to be replayed .*qemu-img check -r all.* \[UNSUPPORTED\]\n$/);
    expect(sha256File(image)).toBe(before);
  });
});

describe('to VHDX and back, through ic, judged by qemu-img', () => {
  const tmp = tempDir('ic-vhdx-to-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  const firstWrites = ['write -P 0x11 1000 5000', 'write -P 0x22 9M 70k', 'write -P 0x33 100M 3M', 'write -P 0x55 300M 16M', `write -P 0x44 ${GiB - 512} 512`];
  // Guest 1 MiB blocks holding data: 0, 9, 100-102, 300-315, 1023.
  const dataBlocks = 22;
  const cases: { name: string; format: string; o?: string; moved: (report: Report) => void; back: string }[] = [
    {
      name: 'qcow2 v3, 64 KiB clusters',
      format: 'qcow2',
      // qemu puts data from 0x50000 on: no 1 MiB block is 1 MiB-aligned and whole in the file, so all move.
      moved: (r) => expect([r.clustersKept, r.clustersRelocated, r.bytesRelocated]).toEqual([0, dataBlocks, dataBlocks * MiB]),
      back: 'qcow2',
    },
    { name: 'qcow2 v2, 64 KiB clusters', format: 'qcow2', o: 'compat=0.10', moved: (r) => expect(r.clustersRelocated).toBe(dataBlocks), back: 'qed' },
    {
      name: 'qcow2, 1 MiB clusters',
      format: 'qcow2',
      o: 'cluster_size=1M',
      // Each qcow2 cluster is a 1 MiB-aligned block already: nothing moves.
      moved: (r) => expect([r.targetClusterSize, r.clustersKept, r.clustersRelocated]).toEqual([MiB, dataBlocks, 0]),
      back: 'vmdk',
    },
    { name: 'qcow2, 4 KiB clusters', format: 'qcow2', o: 'cluster_size=4k', moved: (r) => expect(r.clustersRelocated).toBe(dataBlocks), back: 'qcow2' },
    { name: 'QED, 64 KiB clusters', format: 'qed', moved: (r) => expect(r.clustersRelocated).toBe(dataBlocks), back: 'qed' },
    { name: 'QED, 1 MiB clusters', format: 'qed', o: 'cluster_size=1M', moved: (r) => expect(r.clustersRelocated).toBe(0), back: 'qcow2' },
    { name: 'VMDK monolithicSparse', format: 'vmdk', moved: (r) => expect(r.clustersRelocated).toBe(dataBlocks), back: 'vmdk' },
    {
      name: 'raw',
      format: 'raw',
      // Only the block under the 1 MiB header section moves.
      moved: (r) => expect([r.clustersKept, r.clustersRelocated]).toEqual([dataBlocks - 1, 1]),
      back: 'qcow2',
    },
  ];
  for (const source of cases) {
    it(`${source.name} -> vhdx -> ${source.back}, qemu-io writes on each side`, () => {
      const image = tmp.path(`${source.name.replace(/\W+/g, '-')}.img`);
      const expected = `${image}.raw`;
      qemuCreate(image, source.format, GiB, source.o ? { o: source.o } : {});
      qemuIo(image, source.format, firstWrites);
      qemuConvert(image, source.format, expected, 'raw');

      const there = convert(image, 'vhdx', source.format === 'raw' ? ['-f', 'raw'] : []);
      expect(there.verified).toBe(true);
      source.moved(there);
      expectSame(image, 'vhdx', expected);
      writeBoth(image, 'vhdx', expected, laterWrites);

      const back = convert(image, source.back);
      expect(back.verified).toBe(true);
      expectSame(image, source.back, expected);
      writeBoth(image, source.back, expected, ['write -P 0xf1 900M 2M', 'write -P 0xf2 5M 512', 'write -P 0xf3 700M 100k']);
    });
  }
});
