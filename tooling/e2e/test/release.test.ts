/**
 * The release step (packages/core/src/engine/release.ts) against the qemu oracle: qemu-made VDI and dynamic VHD
 * (whose blocks sit at 512-byte offsets, so every cluster is relocated into qcow2) and QED (already aligned:
 * nothing moves) converted to qcow2 by the CLI; afterwards the file's allocated space (st_blocks) is at most the
 * source's plus the new metadata plus one 64 MiB wave, qemu-img check exits 0, qemu-img compare says identical,
 * and qemu-io writes read back with the old data.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, statSync } from 'node:fs';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo } from '@ic/test-utils';
import { icCli, requireBuiltIc, requireQemu, tempDir } from '@ic/test-utils';

const MiB = 1024 * 1024;
const WAVE = 64 * MiB;
const allocatedBytes = (file: string) => statSync(file).blocks * 512;

describe('convert-inplace gives back what the new image does not reference', () => {
  const scratch = tempDir('ic-release-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  for (const format of ['vdi', 'vpc', 'qed']) {
    it(`${format} -> qcow2: allocated space after <= source + metadata + one wave; check 0, identical, usable`, { timeout: 60_000 }, () => {
      const pristine = scratch.path(`pristine.${format}`);
      qemuCreate(pristine, format, '48M');
      qemuIo(pristine, format, ['write -P 0x11 0 5M', 'write -P 0x22 20M 3M', 'write -P 0x33 33M 64k', 'write -P 0x44 40M 4M']);
      const file = scratch.path(`image-${format}`);
      copyFileSync(pristine, file);
      const before = allocatedBytes(file);

      const dry = icCli(['convert-inplace', '--dry-run', '--output=json', file, 'qcow2']);
      expect(dry.status, dry.stderr).toBe(0);
      const plan = JSON.parse(dry.stdout) as { release?: { bytesReleased: number; estimated: boolean }; bytesRelocated: number };
      expect(plan.release?.estimated).toBe(true);

      const run = icCli(['convert-inplace', '--output=json', file, 'qcow2']);
      expect(run.status, run.stderr).toBe(0);
      const report = JSON.parse(run.stdout) as { bytesRelocated: number; metadataBytes: number; release: { bytesReleased: number; bytesPunched: number; bytesLeft: number } };
      const after = allocatedBytes(file);
      expect(after).toBeLessThanOrEqual(before + report.metadataBytes + WAVE);
      if (report.bytesRelocated > 0 && report.release.bytesLeft === 0) {
        // The old places are given back: what is left is about the data once, not twice.
        expect(report.release.bytesReleased).toBeGreaterThanOrEqual(report.bytesRelocated - 2 * MiB);
        expect(after).toBeLessThanOrEqual(before + report.metadataBytes + 2 * MiB);
        expect(plan.release!.bytesReleased).toBeGreaterThanOrEqual(report.bytesRelocated - 2 * MiB);
      }
      expect(qemuCheck(file, 'qcow2').code).toBe(0);
      expect(qemuCompare(pristine, format, file, 'qcow2').code).toBe(0);

      // Usable: new data into fresh areas, over old data and into a partly written cluster, old data still there.
      qemuIo(file, 'qcow2', ['write -P 0xa1 10M 128k', 'write -P 0xa2 1M 4k', 'write -P 0xa3 33M 4k']);
      qemuIo(file, 'qcow2', ['read -P 0xa1 10M 128k', 'read -P 0xa2 1M 4k', 'read -P 0x11 0 1M', 'read -P 0x11 1052672 1M', 'read -P 0xa3 33M 4k', 'read -P 0x33 34607104 60k', 'read -P 0x44 40M 4M', 'read -P 0x22 20M 3M']);
      expect(qemuCheck(file, 'qcow2').code).toBe(0);
    });
  }
});

describe('release bounds its system calls on scattered old tables', () => {
  const scratch = tempDir('ic-release-short-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  it('qcow2 with 4 KiB clusters, preallocated (an old L2 table every 2 MiB) -> vmdk: the first 256 short runs punched, the rest counted as left', { timeout: 120_000 }, () => {
    const pristine = scratch.path('pristine.qcow2');
    // 1 GiB of 4 KiB clusters: 512 L2 tables between the data clusters, each a 4 KiB run the VMDK does not reference.
    qemuCreate(pristine, 'qcow2', '1G', { o: 'cluster_size=4096,preallocation=metadata' });
    qemuIo(pristine, 'qcow2', ['write -P 0x5a 0 1M', 'write -P 0x6b 700M 64k']);
    const file = scratch.path('image.qcow2');
    copyFileSync(pristine, file);
    const run = icCli(['convert-inplace', '--output=json', file, 'vmdk']);
    expect(run.status, run.stderr).toBe(0);
    const release = (JSON.parse(run.stdout) as { release: { bytesPunched: number; bytesLeft: number; reason: string } }).release;
    // At most 256 short runs (4 KiB each here, some merged with a neighbour) are punched; at least the other 256
    // old L2 tables are left and said to be left.
    expect(release.bytesPunched).toBeGreaterThan(0);
    expect(release.bytesPunched).toBeLessThanOrEqual(256 * 2 * 4096 + 2 * MiB);
    expect(release.bytesLeft).toBeGreaterThanOrEqual(200 * 4096);
    expect(release.reason).toMatch(/except \d+ bytes in runs shorter than 1048576 bytes past the first 256/);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(pristine, 'qcow2', file, 'vmdk').code).toBe(0);
    qemuIo(file, 'vmdk', ['write -P 0x7c 300M 64k']);
    qemuIo(file, 'vmdk', ['read -P 0x7c 300M 64k', 'read -P 0x5a 0 1M', 'read -P 0x6b 700M 64k']);
  });
});
