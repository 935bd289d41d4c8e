import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { statSync } from 'node:fs';
import { vhdxDriver } from '../src/index.js';
import { peekBytes, withImage } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe('create() makes what qemu-img create -f vhdx makes', () => {
  const tmp = tempDir('ic-vhdx-create-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: { name: string; size: number; o?: string }[] = [
    { name: 'defaults, 1 GiB (8 MiB blocks)', size: GiB },
    { name: 'defaults, 2 GiB (16 MiB blocks)', size: 2 * GiB },
    { name: 'block_size=1M', size: 100 * MiB, o: 'block_size=1M' },
    { name: 'block_size=32M, log_size=2M', size: 300 * MiB, o: 'block_size=32M,log_size=2M' },
    { name: 'subformat=fixed (blocks "zero": qemu-img default)', size: 64 * MiB, o: 'subformat=fixed' },
    { name: 'subformat=fixed,block_state_zero=off (blocks present)', size: 64 * MiB, o: 'subformat=fixed,block_state_zero=off' },
    { name: 'block_state_zero=off (dynamic, blocks "not present")', size: 64 * MiB, o: 'block_state_zero=off' },
  ];
  for (const [index, testCase] of cases.entries()) {
    it(testCase.name, async () => {
      const theirs = tmp.path(`qemu${index}.vhdx`);
      const ours = tmp.path(`ic${index}.vhdx`);
      qemuCreate(theirs, 'vhdx', testCase.size, testCase.o ? { o: testCase.o } : {});
      const io = await FileIO.create(ours);
      await vhdxDriver.create!(io, { virtualSize: testCase.size, options: parseOptions(testCase.o ? [testCase.o] : [], vhdxDriver.options!, 'vhdx') });
      await io.close();
      // Same length, same layout; only GUIDs, the first sequence number, the creator and the CRCs differ.
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      const region = (path: string) => Buffer.from(peekBytes(path, 3 * 64 * 1024 + 16, 64));
      expect(region(ours).equals(region(theirs))).toBe(true);
      const bat = (path: string) => Buffer.from(peekBytes(path, 2 * MiB + (testCase.o?.includes('log_size=2M') ? MiB : 0), 4096));
      expect(bat(ours).equals(bat(theirs))).toBe(true);
      const check = qemuCheck(ours, 'vhdx');
      expect(check.code, check.text).toBe(0);
      expect(qemuCompare(ours, 'vhdx', theirs, 'vhdx').code).toBe(0);
      const { filename: _a, 'actual-size': _b, ...infoOurs } = qemuInfo(ours, 'vhdx');
      const { filename: _c, 'actual-size': _d, ...infoTheirs } = qemuInfo(theirs, 'vhdx');
      expect(infoOurs).toEqual(infoTheirs);
      await withImage(ours, async (image) => {
        expect(image.info().virtualSize).toBe(testCase.size);
        expect(image.subformat).toBe(testCase.o?.includes('fixed') ? 'fixed' : 'dynamic');
        expect((await image.check()).corruptions).toBe(0);
      });
      // qemu writes into it (through its log) and finds it clean afterwards.
      qemuIo(ours, 'vhdx', ['write -P 0x5a 0 512', `write -P 0x5b ${testCase.size - 4096} 4096`]);
      expect(qemuCheck(ours, 'vhdx').code).toBe(0);
    });
  }

  it('refuses bad options and a backing file', async () => {
    const io = await FileIO.create(tmp.path('refused.vhdx'));
    await expect(vhdxDriver.create!(io, { virtualSize: MiB, options: { block_size: 3 * MiB } })).rejects.toMatchObject({ code: 'INVALID' });
    await expect(vhdxDriver.create!(io, { virtualSize: MiB, options: { log_size: 1000 } })).rejects.toMatchObject({ code: 'INVALID' });
    await expect(vhdxDriver.create!(io, { virtualSize: 65 * 1024 * GiB, options: {} })).rejects.toMatchObject({ code: 'INVALID' });
    await expect(vhdxDriver.create!(io, { virtualSize: MiB, backing: { name: 'base.vhdx' }, options: {} })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await io.close();
  });
});
