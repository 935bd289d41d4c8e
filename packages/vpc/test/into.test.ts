/**
 * Conversions in place *into* VHD through the real `ic`: dynamic disks (prefixed target: each block's sector
 * bitmap right before its data) from qemu-made qcow2 (v2, v3, several cluster sizes), QED, VMDK and raw; a raw
 * file into a fixed disk (identity target: one footer appended, nothing moves); a fixed disk refused for any
 * image whose data is not already at its guest offsets. qemu-img has no check for VHD (it exits 63), so qemu-img
 * compare against the original, qemu-io writes (a fresh area, over old data, into a partly written block), and
 * the way back to qcow2 (checked clean by qemu-img) judge the results.
 */
import { copyFileSync, readFileSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IC_ERROR_LINE, icCli, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, qemuDataBlocks, QEMU_SOURCES, requireBuiltIc, requireQemu, tempDir, WRITES_AFTER, WRITES_BEFORE } from '@ic/test-utils';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** qemu-img check exits 63 for VHD: it has no check for the format. */
const NO_CHECK = 63;

interface Report {
  verified: boolean;
  clustersKept: number;
  clustersRelocated: number;
  targetClusterSize: number;
}

/** The image converted back to qcow2 by ic: clean, identical to `expected`, and writable. */
function expectBackToQcow2(image: string, format: string, expected: string): void {
  const back = icCli(['convert-inplace', '-f', format, '--output=json', image, 'qcow2']);
  expect(back.status, back.stderr).toBe(0);
  const check = qemuCheck(image, 'qcow2');
  expect(check.code, check.text).toBe(0);
  expect(qemuCompare(image, 'qcow2', expected, 'raw').code).toBe(0);
  qemuIo(image, 'qcow2', ['write -P 0xb1 700M 64k']);
  qemuIo(expected, 'raw', ['write -P 0xb1 700M 64k']);
  expect(qemuCompare(image, 'qcow2', expected, 'raw').code).toBe(0);
}

describe('qemu-made images converted in place to VHD by ic, and back', () => {
  const tmp = tempDir('ic-vpc-into-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  for (const [index, source] of QEMU_SOURCES.entries()) {
    it(`${source.format}${source.o ? ` (${source.o})` : ''} -> dynamic vpc -> qcow2`, () => {
      const image = tmp.path(`into-${index}.img`);
      const expected = tmp.path(`into-${index}.raw`);
      qemuCreate(image, source.format, GiB, source.o ? { o: source.o } : {});
      qemuIo(image, source.format, WRITES_BEFORE);
      qemuConvert(image, source.format, expected, 'raw');
      const blocks = qemuDataBlocks(image, source.format);
      const pristine = tmp.path(`into-${index}.pristine`);
      copyFileSync(image, pristine);

      const run = icCli(['convert-inplace', '-f', source.format, '--output=json', image, 'vpc']);
      expect(run.status, run.stderr).toBe(0);
      const report = JSON.parse(run.stdout) as Report;
      expect(report.verified).toBe(true);
      expect(report.clustersKept + report.clustersRelocated).toBe(blocks(report.targetClusterSize));
      expect(qemuCheck(image, 'vpc').code).toBe(NO_CHECK);
      expect(qemuCompare(image, 'vpc', pristine, source.format).code).toBe(0);

      qemuIo(image, 'vpc', WRITES_AFTER);
      qemuIo(expected, 'raw', WRITES_AFTER);
      const compare = qemuCompare(image, 'vpc', expected, 'raw');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      expectBackToQcow2(image, 'vpc', expected);
    });
  }

  it('raw -> fixed vpc: one footer at the end, every byte in place; qemu writes into it; and back to qcow2', () => {
    const image = tmp.path('fixed.img');
    const expected = tmp.path('fixed.raw');
    qemuCreate(image, 'raw', GiB);
    qemuIo(image, 'raw', WRITES_BEFORE);
    copyFileSync(image, expected);
    const pristine = readFileSync(image);

    const run = icCli(['convert-inplace', '-f', 'raw', '-o', 'subformat=fixed', '--output=json', image, 'vpc']);
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout) as Report).toMatchObject({ verified: true, clustersRelocated: 0 });
    expect(statSync(image).size).toBe(GiB + 512);
    // The disk bytes are untouched: only the footer was added.
    expect(readFileSync(image).subarray(0, GiB).equals(pristine)).toBe(true);
    const info = icCli(['info', '-f', 'vpc', '--output=json', image]);
    expect(JSON.parse(info.stdout)).toMatchObject({ format: 'vpc', 'virtual-size': GiB });
    expect(qemuCompare(image, 'vpc', expected, 'raw').code).toBe(0);
    qemuIo(image, 'vpc', WRITES_AFTER);
    qemuIo(expected, 'raw', WRITES_AFTER);
    expect(qemuCompare(image, 'vpc', expected, 'raw').code).toBe(0);
    expect(statSync(image).size).toBe(GiB + 512);
    expectBackToQcow2(image, 'vpc', expected);
  });

  it('qcow2 -> fixed vpc is refused in one line (its data is not at its guest offsets), the file byte-identical', () => {
    const image = tmp.path('refused.qcow2');
    qemuCreate(image, 'qcow2', 64 * MiB);
    qemuIo(image, 'qcow2', ['write -P 0x61 1M 64k']);
    const pristine = readFileSync(image);
    const run = icCli(['convert-inplace', '-o', 'subformat=fixed', image, 'vpc']);
    expect(run.status).not.toBe(0);
    expect(run.stderr).toMatch(IC_ERROR_LINE);
    expect(readFileSync(image).equals(pristine)).toBe(true);
  });
});
