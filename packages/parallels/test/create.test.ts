import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { parallelsDriver } from '../src/index.js';
import { qemuCheckJson, withImage } from './helpers.js';

const MiB = 1024 ** 2;

describe('create() lays images out like qemu-img create -f parallels', () => {
  const tmp = tempDir('ic-parallels-create-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: { name: string; size: number; o?: string; leaks: number }[] = [
    { name: 'defaults, 1 GiB', size: 1024 * MiB, leaks: 0 },
    { name: 'cluster_size=64k, 10 MiB, odd size rounded up to 512', size: 10 * MiB + 1, o: 'cluster_size=64k', leaks: 0 },
    { name: 'cluster_size=3000 (rounded up to 3072, not a power of two)', size: 5 * MiB, o: 'cluster_size=3000', leaks: 2 },
    // qemu 7.2 counts the BAT clusters past the first as leaked in its own empty images: the same bytes, the same verdict.
    { name: 'cluster_size=64k, 1 GiB: a BAT of two clusters', size: 1024 * MiB, o: 'cluster_size=64k', leaks: 1 },
  ];
  for (const [index, testCase] of cases.entries()) {
    it(testCase.name, async () => {
      const theirs = tmp.path(`qemu${index}.img`);
      const ours = tmp.path(`ic${index}.img`);
      qemuCreate(theirs, 'parallels', testCase.size, testCase.o ? { o: testCase.o } : {});
      const io = await FileIO.create(ours);
      await parallelsDriver.create!(io, { virtualSize: testCase.size, options: parseOptions(testCase.o ? [testCase.o] : [], parallelsDriver.options!, 'parallels') });
      await io.close();
      expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0);
      expect([qemuCheckJson(ours).json['leaks'] ?? 0, qemuCheckJson(theirs).json['leaks'] ?? 0]).toEqual([testCase.leaks, testCase.leaks]);
      await withImage(ours, async (image) => expect((await image.check()).leaks).toBe(testCase.leaks));
      qemuIo(ours, 'parallels', ['write -P 0x5a 0 512']);
      expect(qemuCheck(ours, 'parallels').code).toBe(0);
    });
  }

  it('refuses a backing file and sizes beyond 2^32 clusters', async () => {
    const io = await FileIO.create(tmp.path('refused.img'));
    await expect(parallelsDriver.create!(io, { virtualSize: MiB, backing: { name: 'base.img' }, options: {} })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    await expect(parallelsDriver.create!(io, { virtualSize: 2 ** 32 * 4096, options: { cluster_size: 4096 } })).rejects.toMatchObject({ code: 'INVALID' });
    await io.close();
  });
});
