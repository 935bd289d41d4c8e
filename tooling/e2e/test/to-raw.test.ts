/**
 * ic convert-inplace IMAGE raw against the qemu oracle: qemu-made QED, VMDK and qcow2 images whose data lies out of
 * guest order (qemu-io writes in reverse and random order), with zero and unallocated areas and a partial last
 * cluster, converted in place; qemu-img compare with the untouched copy, the file as long as the disk, qemu-io
 * writes afterwards, and raw -> X -> raw giving back the same bytes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { icCli, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireBuiltIc, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { makeFragmented } from './mover-images.js';
import { toRawImages } from './to-raw-images.js';

describe('ic convert-inplace IMAGE raw', () => {
  const scratch = tempDir('ic-to-raw-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  for (const [n, image] of toRawImages.entries()) {
    it(`${image.label}: identical, as long as the disk, usable; raw -> ${image.format} -> raw gives the same bytes`, { timeout: 300_000 }, () => {
      const dir = scratch.path(`case-${n}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${image.format}`);
      makeFragmented(pristine, image, image.stride);
      const virtualSize = qemuInfo(pristine, image.format)['virtual-size'];
      const file = join(dir, 'image');
      copyFileSync(pristine, file);

      const dry = icCli(['convert-inplace', '--dry-run', '--output', 'json', file, 'raw']);
      expect(dry.status, dry.stderr).toBe(0);
      expect(sha256File(file)).toBe(sha256File(pristine));
      const plan = JSON.parse(dry.stdout) as { unitsMoved: number; unitsOutOfPlace: number; dataUnits: number; dryRun: boolean };
      expect(plan.dryRun).toBe(true);
      expect(plan.dataUnits).toBeGreaterThan(0);
      expect(plan.unitsOutOfPlace).toBeGreaterThan(0);
      expect(plan.unitsMoved).toBeGreaterThanOrEqual(plan.unitsOutOfPlace);

      const run = icCli(['convert-inplace', file, 'raw']);
      expect(run.status, run.stderr).toBe(0);
      console.log(`${image.label}\n${run.stdout}`);
      expect(run.stdout).toMatch(new RegExp(`Converted '.*' from ${image.format} to raw in place`));
      expect(statSync(file).size).toBe(virtualSize);
      const compare = qemuCompare(pristine, image.format, file, 'raw');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      const probed = icCli(['info', '--output', 'json', file]);
      expect(JSON.parse(probed.stdout).format).toBe('raw');
      const converted = sha256File(file);

      // raw -> X -> raw: the same bytes.
      const back = icCli(['convert-inplace', '-f', 'raw', file, image.format]);
      expect(back.status, back.stderr).toBe(0);
      expect(qemuCompare(pristine, image.format, file, image.format).code).toBe(0);
      const again = icCli(['convert-inplace', file, 'raw']);
      expect(again.status, again.stderr).toBe(0);
      expect(sha256File(file)).toBe(converted);

      // Usable: qemu-io writes new data; old and new read back.
      qemuIo(file, 'raw', ['write -P 0xee 64k 8k']);
      qemuIo(pristine, image.format, ['write -P 0xee 64k 8k']);
      expect(qemuCompare(pristine, image.format, file, 'raw').code).toBe(0);
    });
  }

  it('an image whose data is in guest order already, and an empty one, convert too', { timeout: 120_000 }, () => {
    for (const [name, commands] of [
      ['ordered', ['write -P 1 0 64k', 'write -P 2 64k 64k', 'write -P 3 128k 64k']],
      ['empty', []],
    ] as const) {
      const pristine = scratch.path(`${name}.qed`);
      qemuCreate(pristine, 'qed', '1M');
      if (commands.length > 0) qemuIo(pristine, 'qed', [...commands]);
      const file = scratch.path(`${name}.img`);
      copyFileSync(pristine, file);
      const run = icCli(['convert-inplace', file, 'raw']);
      expect(run.status, run.stderr).toBe(0);
      expect(statSync(file).size).toBe(1024 * 1024);
      expect(qemuCompare(pristine, 'qed', file, 'raw').code).toBe(0);
    }
  });

  it('refuses formats whose units are not listed, and images with a backing file, in one line, byte-identical', () => {
    const refused: [string, string, RegExp][] = [];
    const vdi = scratch.path('refused.vdi');
    qemuCreate(vdi, 'vdi', '16M');
    qemuIo(vdi, 'vdi', ['write -P 1 1M 64k', 'write -P 2 0 64k']);
    refused.push([vdi, 'vdi', /^ic: vdi: cannot convert to raw in place: [^\n]+ \[UNSUPPORTED\]\n$/]);
    // A qcow2 disk larger than its refcount blocks cover (4 KiB clusters: one block covers 8 MiB of the file) would
    // need a refcount block added: refused, not corrupted.
    const uncovered = scratch.path('uncovered.qcow2');
    qemuCreate(uncovered, 'qcow2', '32M', { o: 'cluster_size=4k' });
    qemuIo(uncovered, 'qcow2', ['write -P 1 1M 64k', 'write -P 2 0 64k']);
    refused.push([uncovered, 'qcow2', /^ic: [^\n]*cannot convert to raw in place: the image's reference counts cover only the first \d+ bytes[^\n]+ \[UNSUPPORTED\]\n$/]);
    const base = scratch.path('base.qed');
    qemuCreate(base, 'qed', '16M');
    const child = scratch.path('child.qed');
    qemuCreate(child, 'qed', '16M', { backing: base, backingFormat: 'qed' });
    qemuIo(child, 'qed', ['write -P 3 2M 64k']);
    refused.push([child, 'qed', /^ic: cannot convert qed to raw in place: the image has a backing file [^\n]+ \[UNSUPPORTED\]\n$/]);
    for (const [file, , pattern] of refused) {
      const sha = sha256File(file);
      const run = icCli(['convert-inplace', file, 'raw']);
      expect(run.status).toBe(1);
      expect(run.stderr).toMatch(pattern);
      expect(sha256File(file)).toBe(sha);
    }
  });
});
