/**
 * The oracle for qcow2 <-> QED in place: images made by qemu-img create + qemu-io, converted by ic, then
 * `qemu-img check` (no corruption; qcow2 results also without leaks) and `qemu-img compare` against an
 * untouched copy, both ways.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { qemuCheck, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { convertFile } from '../src/convert-file.js';

const GiB = 1024 ** 3;

interface Case {
  name: string;
  format: 'qcow2' | 'qed';
  size: number;
  o?: string;
  /** qemu-io commands run on the image after creation. */
  writes: (clusterSize: number, size: number) => string[];
  /** Creates a backing file first (relative name "base.<ext>"). */
  backing?: { format: string; writes: string[] };
}

const scattered = (clusterSize: number, size: number) => [
  `write -P 0xab 0 ${clusterSize}`,
  'write -P 0x11 1000 3000', // unaligned, inside the first cluster
  `write -P 0x12 ${3 * clusterSize - 700} 1400`, // unaligned, across a cluster boundary
  `write -P 0x22 ${size - clusterSize} ${clusterSize}`, // the last cluster
  `write -P 0x33 ${size / 2 + clusterSize} ${2 * clusterSize}`, // far away: another L2 table
  `write -z ${8 * clusterSize} ${2 * clusterSize}`, // zero clusters
  `write -P 0x44 ${16 * clusterSize} ${clusterSize}`,
  `discard ${16 * clusterSize} ${clusterSize}`, // written, then discarded
  `write -P 0x55 ${20 * clusterSize + 512} 512`,
];

const cases: Case[] = [
  { name: 'qcow2 v3, 64 KiB clusters', format: 'qcow2', size: 4 * GiB, o: 'compat=1.1', writes: scattered },
  { name: 'qcow2 v2 (compat 0.10), 64 KiB clusters', format: 'qcow2', size: 4 * GiB, o: 'compat=0.10', writes: scattered },
  { name: 'qcow2 v3, 4 KiB clusters', format: 'qcow2', size: GiB, o: 'cluster_size=4k', writes: scattered },
  // QED's default table_size (4) reaches 16 GiB at 4 KiB clusters: the target takes 16, so nothing moves.
  { name: 'qcow2 v3, 4 KiB clusters, 64 GiB', format: 'qcow2', size: 64 * GiB, o: 'cluster_size=4k', writes: scattered },
  { name: 'qcow2 v3, 2 MiB clusters', format: 'qcow2', size: 8 * GiB, o: 'cluster_size=2M', writes: scattered },
  { name: 'qcow2 v3, odd size', format: 'qcow2', size: 100 * 1024 * 1024 + 512, writes: (cs, size) => [`write -P 0x66 ${size - 512} 512`, `write -P 0x67 0 ${cs + 1}`] },
  { name: 'QED, 64 KiB clusters', format: 'qed', size: 8 * GiB, writes: scattered },
  { name: 'QED, 4 KiB clusters', format: 'qed', size: GiB, o: 'cluster_size=4k', writes: scattered },
  {
    name: 'qcow2 over a qcow2 backing file (relative name), zero clusters masking it',
    format: 'qcow2',
    size: GiB,
    backing: { format: 'qcow2', writes: ['write -P 0x77 0 1M', 'write -P 0x78 512M 1M'] },
    writes: () => ['write -P 0x79 64k 64k', 'write -z 512M 128k', 'write -P 0x7a 1000 100'],
  },
  {
    name: 'QED over a raw backing file (no-probe flag)',
    format: 'qed',
    size: GiB,
    backing: { format: 'raw', writes: ['write -P 0x81 0 2M'] },
    writes: () => ['write -P 0x82 64k 64k', 'write -z 1M 64k'],
  },
];

const other = { qcow2: 'qed', qed: 'qcow2' } as const;

describe('qcow2 <-> QED in place, judged by qemu-img', () => {
  const scratch = tempDir('ic-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const testCase of cases) {
    it(testCase.name, async () => {
      const dir = scratch.path(testCase.name.replace(/[^a-z0-9]+/gi, '-'));
      const { mkdirSync } = await import('node:fs');
      mkdirSync(dir);
      const file = (name: string) => `${dir}/${name}`;
      const extension = testCase.format;
      const image = file(`image.${extension}`);
      if (testCase.backing) {
        const base = `base.${testCase.backing.format}`;
        qemuCreate(file(base), testCase.backing.format, testCase.size);
        qemuIo(file(base), testCase.backing.format, testCase.backing.writes);
        // A relative backing name: resolved against the image's directory.
        qemuCreate(image, testCase.format, testCase.size, { backing: base, backingFormat: testCase.backing.format, cwd: dir });
      } else {
        qemuCreate(image, testCase.format, testCase.size, testCase.o ? { o: testCase.o } : {});
      }
      const clusterSize = qemuInfo(image, testCase.format)['cluster-size']!;
      qemuIo(image, testCase.format, testCase.writes(clusterSize, testCase.size));
      const pristine = file(`pristine.${extension}`);
      copyFileSync(image, pristine);
      const infoBefore = qemuInfo(image, testCase.format);

      const target = other[testCase.format];
      const forward = await convertFile(image, target);
      expect(forward.verified).toBe(true);
      expect(forward.clustersRelocated).toBe(0);
      const checkForward = qemuCheck(image, target);
      // No corruption and no leaks: QED results are packed after the switch.
      expect(checkForward.code, checkForward.text).toBe(0);
      expect(qemuCompare(image, target, pristine, testCase.format).code, 'identical after the forward conversion').toBe(0);
      const infoForward = qemuInfo(image, target);
      expect(infoForward['virtual-size']).toBe(infoBefore['virtual-size']);
      expect(infoForward['backing-filename']).toBe(infoBefore['backing-filename']);

      const back = await convertFile(image, testCase.format);
      expect(back.verified).toBe(true);
      const checkBack = qemuCheck(image, testCase.format);
      expect(checkBack.code, checkBack.text).toBe(0);
      expect(qemuCompare(image, testCase.format, pristine, testCase.format).code, 'identical after the round trip').toBe(0);
      const infoBack = qemuInfo(image, testCase.format);
      expect(infoBack['virtual-size']).toBe(infoBefore['virtual-size']);
      expect(infoBack['cluster-size']).toBe(infoBefore['cluster-size']);
      expect(infoBack['backing-filename']).toBe(infoBefore['backing-filename']);
    });
  }
});

describe('cluster sizes that differ', () => {
  const scratch = tempDir('ic-geometry-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  it('qcow2 with 512-byte clusters -> QED (at least 4 KiB): the geometry moving the fewest bytes, explained, and identical content', async () => {
    const image = scratch.path('small.qcow2');
    qemuCreate(image, 'qcow2', '64M', { o: 'cluster_size=512' });
    qemuIo(image, 'qcow2', ['write -P 0x91 0 64k', 'write -P 0x92 1M 8k', 'write -P 0x93 40M 512', 'write -z 50M 4k']);
    const pristine = scratch.path('small-pristine.qcow2');
    copyFileSync(image, pristine);
    const plan = await convertFile(image, 'qed', { dryRun: true });
    expect(plan.sourceClusterSize).toBe(512);
    expect(plan.targetClusterSize).toBeGreaterThanOrEqual(4096);
    expect(plan.geometryReason).toMatch(/least I\/O/);
    const report = await convertFile(image, 'qed');
    expect(report.targetClusterSize).toBe(plan.targetClusterSize);
    expect(report.clustersRelocated).toBe(plan.clustersRelocated);
    expect(qemuCheck(image, 'qed').code).toBe(0);
    expect(qemuCompare(image, 'qed', pristine, 'qcow2').code).toBe(0);
    // An explicit cluster size wins over the engine's choice.
    copyFileSync(pristine, image);
    const forced = await convertFile(image, 'qed', { targetOptions: { cluster_size: 65536 } });
    expect(forced.targetClusterSize).toBe(65536);
    expect(forced.geometryReason).toMatch(/requested/);
    expect(qemuCompare(image, 'qed', pristine, 'qcow2').code).toBe(0);
  });
});
