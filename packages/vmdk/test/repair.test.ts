/**
 * check({ repair }) for VMDK: the format has no reference counts (no leaks) and no redundancy to rebuild from, and
 * qemu-img cannot repair it (`qemu-img check -r` answers 63). ic says there is nothing to repair, clears
 * uncleanShutdown once the tables check consistent, and refuses damage without writing.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { vmdkDriver } from '../src/index.js';

requireQemu();
const tmp = tempDir('ic-vmdk-repair-');
afterAll(() => tmp.cleanup());

function poke(file: string, offset: number, bytes: number[]): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

async function icRepair(file: string, mode: 'leaks' | 'all') {
  const io = await FileIO.open(file, { writable: true });
  try {
    return await (await vmdkDriver.open(io)).check!({ repair: mode });
  } finally {
    await io.close();
  }
}

let serial = 0;
function makeImage(): string {
  const file = tmp.path(`${serial++}.vmdk`);
  qemuCreate(file, 'vmdk', 16 * 1024 * 1024);
  qemuIo(file, 'vmdk', ['write -P 1 0 128k', 'write -P 2 4M 64k']);
  return file;
}

describe('VMDK repair', () => {
  it.each(['leaks', 'all'] as const)('-r %s on a consistent image: nothing to repair, nothing written (qemu-img answers 63)', async (mode) => {
    const file = makeImage();
    const before = sha256File(file);
    const report = await icRepair(file, mode);
    expect(report).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
    expect(report.corruptionsFixed ?? 0).toBe(0);
    expect(report.messages.at(-1)).toMatch(/^nothing to repair/);
    expect(sha256File(file)).toBe(before);
    const qemu = run('qemu-img', ['check', '-r', mode, '-f', 'vmdk', file]);
    expect(qemu.code).toBe(63);
    expect(sha256File(file)).toBe(before);
  });

  it('uncleanShutdown set: cleared (one byte), the tables untouched', async () => {
    const file = makeImage();
    poke(file, 72, [1]);
    const reference = readFileSync(file);
    const report = await icRepair(file, 'leaks');
    expect(report.messages.at(-1)).toMatch(/Cleared uncleanShutdown/);
    const after = readFileSync(file);
    expect(after[72]).toBe(0);
    after[72] = 1;
    expect(after.equals(reference)).toBe(true);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
  });

  it('the feature model: unclean_shutdown removable (demote clears it), zeroed grains removable too', async () => {
    const file = tmp.path(`${serial++}-zeroed.vmdk`);
    qemuCreate(file, 'vmdk', 16 * 1024 * 1024, { o: 'zeroed_grain=on' });
    qemuIo(file, 'vmdk', ['write -P 1 0 128k', 'write -z 64k 64k']);
    poke(file, 72, [1]);
    const io = await FileIO.open(file, { writable: true });
    try {
      const image = await vmdkDriver.open(io);
      const features = await image.features!();
      expect(features.map((feature) => [feature.name, feature.kind, feature.removal.possible])).toEqual([
        ['unclean_shutdown', 'compatible', true],
        ['zeroed_grains', 'incompatible', true],
      ]);
      expect((await image.demote!(['unclean_shutdown'])).changes).toEqual(['uncleanShutdown cleared (tables checked)']);
      expect((await image.demote!(['zeroed_grains'])).changes).toEqual(['zeroed grains expanded: 1 (made unallocated); zeroed-grain flag cleared']);
      expect(await image.features!()).toEqual([]);
    } finally {
      await io.close();
    }
    expect(readFileSync(file)[72]).toBe(0);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
  });

  it('a grain table entry naming a grain past the end: refused in one line, the file byte-identical', async () => {
    const file = makeImage();
    const bytes = readFileSync(file);
    const gd = Number(bytes.readBigUInt64LE(56)) * 512;
    const gt = bytes.readUInt32LE(gd) * 512;
    poke(file, gt, [0xff, 0xff, 0xff, 0x00]);
    expect(qemuCheck(file, 'vmdk').code).not.toBe(0);
    const before = sha256File(file);
    await expect(icRepair(file, 'all')).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/^vmdk: [^\n]*nothing was written$/) });
    expect(sha256File(file)).toBe(before);
  });
});
