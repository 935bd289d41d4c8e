/**
 * VHDX images made by qemu-img converted in place through the real `ic` (build first: pnpm turbo run build) to
 * qcow2, QED, VMDK and Parallels, judged by qemu-img, then written by qemu-io and judged again. (The way back is in
 * target.test.ts: the engine does not offer the VHDX target yet.)
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
