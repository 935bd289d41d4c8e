import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryIO, parseOptions, type CreateSpec } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { qedDriver } from '../src/index.js';
import { withImage } from './helpers.js';

const MiB = 1024 ** 2;

async function createWithIc(path: string, spec: CreateSpec): Promise<void> {
  const io = await FileIO.create(path);
  try {
    await qedDriver.create!(io, spec);
  } finally {
    await io.close();
  }
}

describe('create() lays images out like qemu-img create -f qed', () => {
  const tmp = tempDir('ic-qed-create-');
  beforeAll(() => {
    requireQemu();
    writeFileSync(tmp.path('base.raw'), new Uint8Array(MiB));
    qemuCreate(tmp.path('base.qcow2'), 'qcow2', MiB);
  });
  afterAll(() => tmp.cleanup());

  const cases: { name: string; size: number; o?: string; backing?: { name: string; format: string } }[] = [
    { name: 'defaults, 1 GiB', size: 1024 * MiB },
    { name: 'cluster_size=4k table_size=8, odd size rounded up to 512', size: 1001, o: 'cluster_size=4k,table_size=8' },
    { name: 'cluster_size=1M table_size=2', size: 3 * 1024 * MiB, o: 'cluster_size=1M,table_size=2' },
    { name: 'raw backing: BACKING_FILE and NO_PROBE', size: MiB, backing: { name: 'base.raw', format: 'raw' } },
    { name: 'qcow2 backing: BACKING_FILE only', size: MiB, backing: { name: 'base.qcow2', format: 'qcow2' } },
  ];

  for (const [index, testCase] of cases.entries()) {
    it(testCase.name, async () => {
      const theirs = tmp.path(`qemu${index}.qed`);
      const ours = tmp.path(`ic${index}.qed`);
      qemuCreate(theirs, 'qed', testCase.size, {
        ...(testCase.o ? { o: testCase.o } : {}),
        ...(testCase.backing ? { backing: testCase.backing.name, backingFormat: testCase.backing.format, cwd: tmp.dir } : {}),
      });
      const options = parseOptions(testCase.o ? [testCase.o] : [], qedDriver.options!, 'qed');
      await createWithIc(ours, { virtualSize: testCase.size, options, ...(testCase.backing ? { backing: testCase.backing } : {}) });

      // Same bytes, same length: the layout is exactly qemu's.
      expect(Buffer.compare(readFileSync(ours), readFileSync(theirs))).toBe(0);
      const check = qemuCheck(ours, 'qed');
      expect(check.code, check.text).toBe(0);
      const { filename: _a, 'actual-size': _b, ...infoOurs } = qemuInfo(ours, 'qed');
      const { filename: _c, 'actual-size': _d, ...infoTheirs } = qemuInfo(theirs, 'qed');
      expect(infoOurs).toEqual(infoTheirs);
      // qemu can use the result.
      qemuIo(ours, 'qed', ['write -P 0x5a 0 512']);
      expect(qemuCheck(ours, 'qed').code).toBe(0);
      await withImage(ours, async (image) => {
        const info = image.info();
        expect(info.virtualSize).toBe(Math.ceil(testCase.size / 512) * 512);
        if (testCase.backing) {
          expect(info.backing).toEqual(testCase.backing.format === 'raw' ? testCase.backing : { name: testCase.backing.name });
        }
        expect((await image.read(0, 512)).every((byte) => byte === 0x5a)).toBe(true);
      });
    });
  }

  it('declares qemu-img option names and defaults', () => {
    expect(qedDriver.options).toEqual([
      expect.objectContaining({ name: 'cluster_size', type: 'size', default: 65536 }),
      expect.objectContaining({ name: 'table_size', default: 4 }),
    ]);
  });

  it('refuses bad options and names that do not fit with INVALID', async () => {
    const bad: CreateSpec[] = [
      { virtualSize: MiB, options: { cluster_size: 1000 } },
      { virtualSize: MiB, options: { cluster_size: 2048 } },
      { virtualSize: MiB, options: { cluster_size: 128 * MiB } },
      { virtualSize: MiB, options: { table_size: 3 } },
      { virtualSize: MiB, options: { table_size: 32 } },
      // qemu 7.2 cannot open table_size=1 images (its table bounds check rejects a one-cluster table).
      { virtualSize: MiB, options: { table_size: 1 } },
      { virtualSize: 2 ** 46 + 512, options: {} },
      { virtualSize: -1, options: {} },
      { virtualSize: MiB, options: {}, backing: { name: 'x'.repeat(4096) } },
      { virtualSize: MiB, options: { cluster_size: 4096 }, backing: { name: 'x'.repeat(4096 - 63) } },
    ];
    for (const spec of bad) {
      await expect(qedDriver.create!(new MemoryIO(), spec), JSON.stringify(spec.options)).rejects.toMatchObject({ code: 'INVALID' });
    }
    // The largest size the default geometry addresses is accepted (qemu: "less than" is really "at most").
    await expect(qedDriver.create!(new MemoryIO(), { virtualSize: 2 ** 46, options: {} })).resolves.toBeUndefined();
    await expect(qedDriver.create!(new MemoryIO(), { virtualSize: MiB, options: { cluster_size: 4096 }, backing: { name: 'x'.repeat(4096 - 64) } })).resolves.toBeUndefined();
  });
});
