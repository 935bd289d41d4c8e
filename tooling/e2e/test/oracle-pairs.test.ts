/**
 * Issue 3's oracle: every ordered pair among qcow2, QED and VMDK on images made by qemu-img/qemu-io, raw as a
 * source, and VMDK grains that are not cluster-aligned. Judged by `qemu-img check` and `qemu-img compare`.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, statSync, writeFileSync, openSync, writeSync, closeSync, truncateSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { writeSparseVmdk } from '@ic/vmdk';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { convertFile } from '../src/convert-file.js';

const MiB = 1024 * 1024;
const formats = ['qcow2', 'qed', 'vmdk'] as const;
type Format = (typeof formats)[number];

interface Source {
  name: string;
  format: Format;
  size: number;
  o?: string;
  writes: string[];
  parent?: boolean;
}

const writes = (size: number) => [
  'write -P 0xa1 0 64k',
  'write -P 0xa2 1000 3000',
  `write -P 0xa3 ${3 * 65536 - 700} 1400`,
  `write -P 0xa4 ${size - 65536} 65536`,
  `write -P 0xa5 ${Math.floor(size / 2 / 65536) * 65536} 131072`,
  `write -P 0xa6 ${size - 512} 512`,
];

const sources: Source[] = [
  { name: 'qcow2 1 GiB', format: 'qcow2', size: 1024 * MiB, writes: [...writes(1024 * MiB), 'write -z 4M 128k'] },
  { name: 'QED 1 GiB', format: 'qed', size: 1024 * MiB, writes: [...writes(1024 * MiB), 'write -z 4M 128k'] },
  { name: 'VMDK default 1 GiB', format: 'vmdk', size: 1024 * MiB, writes: writes(1024 * MiB) },
  { name: 'VMDK zeroed_grain=on, odd size', format: 'vmdk', size: 100 * MiB + 512, o: 'zeroed_grain=on', writes: [...writes(100 * MiB + 512), 'write -z 4M 128k'] },
  { name: 'VMDK with a VMDK parent', format: 'vmdk', size: 256 * MiB, writes: ['write -P 0xb1 64k 64k', 'write -P 0xb2 100M 4k'], parent: true },
];

describe('in-place pairs among qcow2, QED and VMDK, judged by qemu-img', () => {
  const scratch = tempDir('ic-pairs-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const source of sources) {
    for (const target of formats.filter((f) => f !== source.format)) {
      it(`${source.name} -> ${target} -> ${source.format}`, async () => {
        const dir = scratch.path(`${source.name}-${target}`.replace(/[^a-z0-9]+/gi, '-'));
        mkdirSync(dir);
        const image = `${dir}/image.${source.format}`;
        if (source.parent) {
          qemuCreate(`${dir}/base.vmdk`, 'vmdk', source.size);
          qemuIo(`${dir}/base.vmdk`, 'vmdk', ['write -P 0xb0 0 1M', 'write -P 0xbf 200M 1M']);
          qemuCreate(image, 'vmdk', source.size, { backing: 'base.vmdk', backingFormat: 'vmdk', cwd: dir });
        } else {
          qemuCreate(image, source.format, source.size, source.o ? { o: source.o } : {});
        }
        qemuIo(image, source.format, source.writes);
        const pristine = `${dir}/pristine.${source.format}`;
        copyFileSync(image, pristine);

        const sizeBefore = statSync(image).size;
        const forward = await convertFile(image, target);
        expect(forward.verified).toBe(true);
        // The file grows by no more than the target's metadata, the relocated clusters and one cluster.
        expect(statSync(image).size - sizeBefore).toBeLessThanOrEqual(forward.metadataBytes + forward.bytesRelocated + forward.targetClusterSize);
        const checked = qemuCheck(image, target);
        expect(checked.code, checked.text).toBe(0);
        expect(qemuCompare(image, target, pristine, source.format).code, `identical as ${target}`).toBe(0);

        const back = await convertFile(image, source.format);
        expect(back.verified).toBe(true);
        const checkedBack = qemuCheck(image, source.format);
        expect(checkedBack.code, checkedBack.text).toBe(0);
        expect(qemuCompare(image, source.format, pristine, source.format).code, 'identical after the round trip').toBe(0);
      });
    }
  }

  it('relocates exactly the misaligned grains of a VMDK (qcow2 and QED targets)', async () => {
    for (const target of ['qcow2', 'qed'] as const) {
      const dir = scratch.path(`misaligned-${target}`);
      mkdirSync(dir);
      const image = `${dir}/image.vmdk`;
      const grains = [0, 1, 2, 7, 40, 511].map((index, i) => ({ guestOffset: index * 65536, data: new Uint8Array(65536).fill(0x30 + i) }));
      const io = await FileIO.create(image);
      // Grains packed right after the tables: none on a 64 KiB boundary; then one aligned grain at the end.
      const layout = await writeSparseVmdk(io, { capacity: 64 * MiB, grains });
      await io.close();
      const misaligned = [...layout.hostOffsets.values()].filter((host) => host % 65536 !== 0).length;
      expect(misaligned).toBeGreaterThan(0);
      expect(qemuCheck(image, 'vmdk').code).toBe(0);
      const expectedRaw = `${dir}/expected.raw`;
      writeFileSync(expectedRaw, new Uint8Array(0));
      truncateSync(expectedRaw, 64 * MiB);
      const fd = openSync(expectedRaw, 'r+');
      for (const grain of grains) writeSync(fd, grain.data, 0, grain.data.length, grain.guestOffset);
      closeSync(fd);
      expect(qemuCompare(image, 'vmdk', expectedRaw, 'raw').code, 'qemu reads the misaligned VMDK').toBe(0);

      const dry = await convertFile(image, target, { dryRun: true });
      expect(dry.clustersRelocated).toBe(misaligned);
      const report = await convertFile(image, target);
      expect(report.clustersRelocated).toBe(misaligned);
      expect(report.clustersKept).toBe(grains.length - misaligned);
      expect(qemuCheck(image, target).code).toBe(0);
      expect(qemuCompare(image, target, expectedRaw, 'raw').code).toBe(0);
    }
  });
});

describe('raw as an in-place source', () => {
  const scratch = tempDir('ic-raw-src-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const target of formats) {
    it(`raw -> ${target}: moves only guest cluster 0, maps the rest where it lies`, async () => {
      const dir = scratch.path(target);
      mkdirSync(dir);
      const image = `${dir}/disk.raw`;
      const size = 512 * MiB;
      qemuCreate(image, 'raw', size);
      qemuIo(image, 'raw', ['write -P 0xc1 0 64k', 'write -P 0xc2 10M 1M', 'write -P 0xc3 300M 64k', `write -P 0xc4 ${size - 4096} 4096`]);
      const pristine = `${dir}/pristine.raw`;
      copyFileSync(image, pristine);
      const sizeBefore = statSync(image).size;
      const report = await convertFile(image, target);
      expect(report.clustersRelocated).toBe(1);
      // Only the holes became unallocated: 1 MiB + 64 KiB + 64 KiB + the first cluster of data stay mapped.
      expect(report.clustersKept).toBe(16 + 1 + 1);
      // Everything but packing (which QED needs to be free of leaks) is one cluster plus metadata.
      expect(report.io.bytesWritten - (report.compaction?.bytesMoved ?? 0) * 1.01).toBeLessThan(65536 + report.metadataBytes + 2 * 65536);
      expect(qemuCheck(image, target).code, 'no leaks either').toBe(0);
      expect([0, 3]).toContain(qemuCheck(image, target).code);
      expect(qemuCompare(image, target, pristine, 'raw').code).toBe(0);
      expect(statSync(image).size - sizeBefore).toBeLessThanOrEqual(report.metadataBytes + 2 * 65536);
    });
  }
});

describe('zero scan (explicit)', () => {
  const scratch = tempDir('ic-zero-scan-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  it('a fully written raw file: zero clusters stay data without the scan and become unallocated with it', async () => {
    const image = scratch.path('dense.raw');
    const size = 16 * MiB;
    // Every byte written (no holes), zeros in the middle.
    const bytes = new Uint8Array(size);
    bytes.fill(0x71, 0, 2 * MiB);
    bytes.fill(0x72, 12 * MiB, 13 * MiB);
    writeFileSync(image, bytes);
    const pristine = scratch.path('dense-pristine.raw');
    copyFileSync(image, pristine);
    const plain = await convertFile(image, 'qcow2', { dryRun: true });
    expect(plain.unallocatedClusters).toBe(0);
    const copy = scratch.path('dense-scan.raw');
    copyFileSync(image, copy);
    const { convertInPlace } = await import('@ic/core');
    const { FileIO } = await import('@ic/core/node');
    const { registry } = await import('../src/registry.js');
    const io = await FileIO.open(copy, { writable: true, lock: true });
    const scanned = await convertInPlace({ io, source: registry.get('raw'), target: registry.get('qcow2'), zeroScan: true });
    await io.close();
    expect(scanned.clustersKept + scanned.clustersRelocated).toBe((3 * MiB) / 65536);
    expect(scanned.unallocatedClusters).toBe((13 * MiB) / 65536);
    expect(qemuCheck(copy, 'qcow2').code).toBe(0);
    expect(qemuCompare(copy, 'qcow2', pristine, 'raw').code).toBe(0);
  });
});
