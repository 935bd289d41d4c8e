import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { HEADER_FIELDS, MAX_DISK_SIZE, vdiDriver } from '../src/index.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** The file with both random UUIDs blanked: what must equal qemu-img's file byte for byte. */
function withoutUuids(path: string): Buffer {
  const bytes = readFileSync(path);
  bytes.fill(0, HEADER_FIELDS.uuidImage.offset, HEADER_FIELDS.uuidLastSnap.offset + 16);
  return bytes;
}

async function icCreate(path: string, virtualSize: number, options: Record<string, boolean> = {}): Promise<void> {
  const io = await FileIO.create(path);
  try {
    await vdiDriver.create!(io, { virtualSize, options });
  } finally {
    await io.close();
  }
}

describe('create: the same bytes as qemu-img create -f vdi (but the random UUIDs)', () => {
  const tmp = tempDir('ic-vdi-create-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: { size: number; static?: boolean }[] = [{ size: GiB }, { size: 10 * MiB + 1001 }, { size: 0 }, { size: 5 * GiB }, { size: 20 * MiB, static: true }, { size: 3 * MiB + 512, static: true }];
  for (const testCase of cases) {
    it(`${testCase.size} bytes${testCase.static ? ', static' : ''}`, async () => {
      const ours = tmp.path(`ours-${testCase.size}-${testCase.static ?? false}.vdi`);
      const theirs = tmp.path(`theirs-${testCase.size}-${testCase.static ?? false}.vdi`);
      await icCreate(ours, testCase.size, testCase.static ? { static: true } : {});
      qemuCreate(theirs, 'vdi', testCase.size, testCase.static ? { o: 'static=on' } : {});
      expect(withoutUuids(ours).equals(withoutUuids(theirs))).toBe(true);
      // UUIDs are version 4 as stored by qemu (byte 7 of the swapped layout carries the version).
      const uuid = readFileSync(ours).subarray(HEADER_FIELDS.uuidImage.offset, HEADER_FIELDS.uuidImage.offset + 16);
      expect(uuid[7]! >> 4).toBe(4);
      expect(qemuCheck(ours, 'vdi').code).toBe(0);
      expect(qemuCompare(ours, 'vdi', theirs, 'vdi').code).toBe(0);
      // qemu can write into it.
      if (testCase.size >= MiB) {
        qemuIo(ours, 'vdi', ['write -P 0x5a 0 4k']);
        expect(qemuCheck(ours, 'vdi').code).toBe(0);
      }
    });
  }

  it('refuses a backing file, a bad option and a size past qemu\'s maximum', async () => {
    const path = tmp.path('refused.vdi');
    const io = await FileIO.create(path);
    try {
      await expect(vdiDriver.create!(io, { virtualSize: MiB, backing: { name: 'base.vdi' }, options: {} })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
      await expect(vdiDriver.create!(io, { virtualSize: MiB, options: { static: 'yes' } })).rejects.toMatchObject({ code: 'INVALID' });
      await expect(vdiDriver.create!(io, { virtualSize: MAX_DISK_SIZE + 512, options: {} })).rejects.toMatchObject({ code: 'INVALID' });
    } finally {
      await io.close();
    }
  });
});
