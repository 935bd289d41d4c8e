/**
 * Conversions in place *into* VDI through the real `ic` (its packed target): qemu-made qcow2 (v2, v3, several
 * cluster sizes), QED, VMDK and raw images become VDIs that qemu-img check finds clean and compare identical to
 * the original, that qemu-io keeps writing into (a fresh area, over old data, into a partly written block), and
 * that convert back to qcow2 the same way. The report's relocated counts are asserted against what the layout
 * allows: a 1 MiB block stays only where it is host-contiguous, at the packed run's slot.
 */
import { copyFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { icCli, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, qemuDataBlocks, QEMU_SOURCES, requireBuiltIc, requireQemu, tempDir, WRITES_AFTER, WRITES_BEFORE } from '@ic/test-utils';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

interface Report {
  verified: boolean;
  clustersKept: number;
  clustersRelocated: number;
  targetClusterSize: number;
}

describe('qemu-made images converted in place to VDI by ic, and back', () => {
  const tmp = tempDir('ic-vdi-into-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  for (const [index, source] of QEMU_SOURCES.entries()) {
    it(`${source.format}${source.o ? ` (${source.o})` : ''} -> vdi -> qcow2`, () => {
      const image = tmp.path(`into-${index}.img`);
      const expected = tmp.path(`into-${index}.raw`);
      qemuCreate(image, source.format, GiB, source.o ? { o: source.o } : {});
      qemuIo(image, source.format, WRITES_BEFORE);
      qemuConvert(image, source.format, expected, 'raw');
      const blocks = qemuDataBlocks(image, source.format)(MiB);
      const pristine = tmp.path(`into-${index}.pristine`);
      copyFileSync(image, pristine);

      const run = icCli(['convert-inplace', '-f', source.format, '--output=json', image, 'vdi']);
      expect(run.status, run.stderr).toBe(0);
      const report = JSON.parse(run.stdout) as Report;
      expect(report.verified).toBe(true);
      expect(report.targetClusterSize).toBe(MiB);
      // Every 1 MiB block holding data (as qemu maps the source) is kept or relocated.
      expect(report.clustersKept + report.clustersRelocated).toBe(blocks);
      const check = qemuCheck(image, 'vdi');
      expect(check.code, check.text).toBe(0);
      expect(qemuCompare(image, 'vdi', pristine, source.format).code).toBe(0);

      qemuIo(image, 'vdi', WRITES_AFTER);
      qemuIo(expected, 'raw', WRITES_AFTER);
      expect(qemuCheck(image, 'vdi').code).toBe(0);
      const compare = qemuCompare(image, 'vdi', expected, 'raw');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);

      const back = icCli(['convert-inplace', '-f', 'vdi', '--output=json', image, 'qcow2']);
      expect(back.status, back.stderr).toBe(0);
      expect(qemuCheck(image, 'qcow2').code).toBe(0);
      expect(qemuCompare(image, 'qcow2', expected, 'raw').code).toBe(0);
      qemuIo(image, 'qcow2', ['write -P 0xb1 700M 64k']);
      qemuIo(expected, 'raw', ['write -P 0xb1 700M 64k']);
      expect(qemuCompare(image, 'qcow2', expected, 'raw').code).toBe(0);
    });
  }

  it('a VDI made from a 64 KiB qcow2 goes back to qcow2 with nothing moved: the engine picks 64 KiB clusters', () => {
    const image = tmp.path('back.qcow2');
    qemuCreate(image, 'qcow2', GiB);
    qemuIo(image, 'qcow2', WRITES_BEFORE);
    expect(icCli(['convert-inplace', image, 'vdi']).status).toBe(0);
    const back = icCli(['convert-inplace', '--output=json', image, 'qcow2']);
    expect(back.status, back.stderr).toBe(0);
    expect(JSON.parse(back.stdout) as Report).toMatchObject({ verified: true, targetClusterSize: 65536, clustersRelocated: 0 });
    expect(qemuCheck(image, 'qcow2').code).toBe(0);
  });

  it('a 1 MiB-cluster qcow2 keeps every block (its data clusters are one packed run)', () => {
    const image = tmp.path('packed.qcow2');
    qemuCreate(image, 'qcow2', GiB, { o: 'cluster_size=1M' });
    qemuIo(image, 'qcow2', WRITES_BEFORE);
    const run = icCli(['convert-inplace', '--output=json', image, 'vdi']);
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout) as Report).toMatchObject({ verified: true, clustersKept: 11, clustersRelocated: 0 });
    expect(qemuCheck(image, 'vdi').code).toBe(0);
  });
});
