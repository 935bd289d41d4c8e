/**
 * Features an in-place target cannot represent: the conversion refuses before writing anything, with one
 * line that names the feature and the way out, and the file stays byte-identical.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { isIcError } from '@ic/core';
import { qemuConvert, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { convertFile } from '../src/convert-file.js';

interface Refusal {
  name: string;
  format: string;
  target: string;
  /** Builds the image in `dir`, returns its path. */
  make(dir: string): string;
  /** What the one-line reason must mention. */
  mentions: RegExp;
}

const ok = (result: { code: number; stderr: string }) => {
  if (result.code !== 0) throw new Error(result.stderr);
};

const refusals: Refusal[] = [
  {
    name: 'compressed clusters',
    format: 'qcow2',
    target: 'qed',
    mentions: /compress/i,
    make: (dir) => {
      qemuCreate(`${dir}/plain.raw`, 'raw', '16M');
      qemuIo(`${dir}/plain.raw`, 'raw', ['write -P 0x11 0 1M']);
      ok(run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', `${dir}/plain.raw`, `${dir}/c.qcow2`]));
      return `${dir}/c.qcow2`;
    },
  },
  {
    name: 'encryption',
    format: 'qcow2',
    target: 'qed',
    mentions: /encrypt/i,
    make: (dir) => {
      // qemu's LUKS key-derivation benchmark sometimes reads zero CPU time in sandboxes ("Unable to get
      // accurate CPU usage"); a retry succeeds.
      const args = ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=sec0,data=topsecret', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', `${dir}/e.qcow2`, '16M'];
      let result = run('qemu-img', args);
      for (let attempt = 0; attempt < 5 && result.code !== 0; attempt++) result = run('qemu-img', args);
      ok(result);
      return `${dir}/e.qcow2`;
    },
  },
  {
    name: 'internal snapshots',
    format: 'qcow2',
    target: 'qed',
    mentions: /snapshot/i,
    make: (dir) => {
      qemuCreate(`${dir}/s.qcow2`, 'qcow2', '16M');
      qemuIo(`${dir}/s.qcow2`, 'qcow2', ['write -P 0x22 0 64k']);
      ok(run('qemu-img', ['snapshot', '-c', 'snap1', `${dir}/s.qcow2`]));
      return `${dir}/s.qcow2`;
    },
  },
  {
    name: 'persistent bitmaps',
    format: 'qcow2',
    target: 'qed',
    mentions: /bitmap/i,
    make: (dir) => {
      qemuCreate(`${dir}/b.qcow2`, 'qcow2', '16M');
      ok(run('qemu-img', ['bitmap', '--add', `${dir}/b.qcow2`, 'bm0']));
      return `${dir}/b.qcow2`;
    },
  },
  {
    name: 'extended L2 (subclusters)',
    format: 'qcow2',
    target: 'qed',
    mentions: /extended|subcluster/i,
    make: (dir) => {
      qemuCreate(`${dir}/x.qcow2`, 'qcow2', '16M', { o: 'extended_l2=on' });
      qemuIo(`${dir}/x.qcow2`, 'qcow2', ['write -P 0x33 0 4k']);
      return `${dir}/x.qcow2`;
    },
  },
  {
    name: 'an external data file',
    format: 'qcow2',
    target: 'qed',
    mentions: /data file/i,
    make: (dir) => {
      qemuCreate(`${dir}/d.qcow2`, 'qcow2', '16M', { o: `data_file=${dir}/d.data` });
      return `${dir}/d.qcow2`;
    },
  },
  {
    name: 'a QED image whose need-check flag is set',
    format: 'qed',
    target: 'qcow2',
    mentions: /check/i,
    make: (dir) => {
      qemuCreate(`${dir}/n.qed`, 'qed', '16M');
      const result = run('qemu-io', ['-f', 'qed', '-c', 'write -P 0x44 0 64k', '-c', 'abort', `${dir}/n.qed`]);
      expect(result.code).not.toBe(0); // abort() kills qemu-io, leaving the flag set
      return `${dir}/n.qed`;
    },
  },
  {
    name: 'a backing file the target cannot reference (qcow2 parent under VMDK)',
    format: 'qcow2',
    target: 'vmdk',
    mentions: /parent|backing/i,
    make: (dir) => {
      qemuCreate(`${dir}/base.qcow2`, 'qcow2', '16M');
      qemuCreate(`${dir}/child.qcow2`, 'qcow2', '16M', { backing: 'base.qcow2', backingFormat: 'qcow2', cwd: dir });
      return `${dir}/child.qcow2`;
    },
  },
  {
    name: 'a streamOptimized VMDK (compressed grains)',
    format: 'vmdk',
    target: 'qcow2',
    mentions: /streamOptimized|compress/i,
    make: (dir) => {
      qemuCreate(`${dir}/p.raw`, 'raw', '16M');
      qemuIo(`${dir}/p.raw`, 'raw', ['write -P 0x55 0 1M']);
      qemuConvert(`${dir}/p.raw`, 'raw', `${dir}/so.vmdk`, 'vmdk', 'subformat=streamOptimized');
      return `${dir}/so.vmdk`;
    },
  },
  {
    name: 'a VMDK whose data lives in other files (monolithicFlat)',
    format: 'vmdk',
    target: 'qcow2',
    mentions: /other files|monolithicFlat|extent/i,
    make: (dir) => {
      qemuCreate(`${dir}/flat.vmdk`, 'vmdk', '16M', { o: 'subformat=monolithicFlat' });
      return `${dir}/flat.vmdk`;
    },
  },
  {
    name: 'a VMDK split into 2 GB extents (twoGbMaxExtentSparse)',
    format: 'vmdk',
    target: 'qed',
    mentions: /other files|twoGbMaxExtentSparse|extent/i,
    make: (dir) => {
      qemuCreate(`${dir}/split.vmdk`, 'vmdk', '3G', { o: 'subformat=twoGbMaxExtentSparse' });
      return `${dir}/split.vmdk`;
    },
  },
];

describe('refused in-place conversions leave the file byte-identical', () => {
  const scratch = tempDir('ic-refuse-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const refusal of refusals) {
    it(`${refusal.name}: ${refusal.format} -> ${refusal.target}`, async () => {
      const dir = scratch.path(refusal.name.replace(/[^a-z0-9]+/gi, '-'));
      mkdirSync(dir);
      const image = refusal.make(dir);
      const before = sha256File(image);
      const error = await convertFile(image, refusal.target).catch((e: unknown) => e);
      expect(isIcError(error), String(error)).toBe(true);
      const message = (error as Error).message;
      expect((error as { code: string }).code).toBe('UNSUPPORTED');
      expect(message).toMatch(refusal.mentions);
      expect(message).not.toContain('\n');
      expect(sha256File(image)).toBe(before);
    });
  }
});
