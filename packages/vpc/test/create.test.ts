import { readFileSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { FOOTER_FIELDS, sizedGeometry, vpcDriver } from '../src/index.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** Blanks the footer fields that differ run to run (timestamp, checksum, unique id) in the footer at `at`. */
function blankFooter(bytes: Buffer, at: number): void {
  bytes.fill(0, at + FOOTER_FIELDS.timestamp.offset, at + FOOTER_FIELDS.timestamp.offset + 4);
  bytes.fill(0, at + FOOTER_FIELDS.checksum.offset, at + FOOTER_FIELDS.uniqueId.offset + 16);
}

function comparable(path: string, dynamic: boolean): Buffer {
  const bytes = readFileSync(path);
  blankFooter(bytes, bytes.length - 512);
  if (dynamic) blankFooter(bytes, 0);
  return bytes;
}

async function icCreate(path: string, virtualSize: number, options: Record<string, string | boolean> = {}): Promise<void> {
  const io = await FileIO.create(path);
  try {
    await vpcDriver.create!(io, { virtualSize, options });
  } finally {
    await io.close();
  }
}

describe('create: the same bytes as qemu-img create -f vpc (but the timestamp and the unique id)', () => {
  const tmp = tempDir('ic-vpc-create-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: { size: number; o: Record<string, string | boolean> }[] = [
    { size: GiB, o: {} },
    { size: 10 * MiB + 1001, o: {} },
    { size: 0, o: {} },
    { size: 5 * GiB, o: {} },
    { size: 300 * GiB, o: {} },
    { size: 100 * MiB, o: { force_size: true } },
    { size: 20 * MiB, o: { subformat: 'fixed' } },
    { size: 3 * MiB + 512, o: { subformat: 'fixed', force_size: true } },
  ];
  for (const testCase of cases) {
    const label = `${testCase.size} bytes ${JSON.stringify(testCase.o)}`;
    it(label, async () => {
      const name = label.replace(/\W+/g, '_');
      const ours = tmp.path(`ours-${name}.vhd`);
      const theirs = tmp.path(`theirs-${name}.vhd`);
      await icCreate(ours, testCase.size, testCase.o);
      const o = Object.entries(testCase.o).map(([key, value]) => `${key}=${value === true ? 'on' : value}`).join(',');
      qemuCreate(theirs, 'vpc', testCase.size, o ? { o } : {});
      const dynamic = testCase.o['subformat'] !== 'fixed';
      expect(statSync(ours).size).toBe(statSync(theirs).size);
      expect(comparable(ours, dynamic).equals(comparable(theirs, dynamic))).toBe(true);
      expect(qemuInfo(ours, 'vpc')['virtual-size']).toBe(qemuInfo(theirs, 'vpc')['virtual-size']);
      expect(qemuCompare(ours, 'vpc', theirs, 'vpc').code).toBe(0);
      // Both footers of a dynamic disk are the same bytes.
      const bytes = readFileSync(ours);
      if (dynamic) expect(bytes.subarray(0, 512).equals(bytes.subarray(bytes.length - 512))).toBe(true);
      if (testCase.size >= MiB) {
        qemuIo(ours, 'vpc', ['write -P 0x5a 0 4k']);
        expect(qemuCompare(ours, 'vpc', theirs, 'vpc').code).toBe(1);
      }
      // qemu-img has no check for vpc.
      expect(qemuCheck(ours, 'vpc').code).toBe(63);
    });
  }

  it('the CHS rounding equals qemu-img create for sizes around every geometry switch', () => {
    const sizes = [1, 512, MiB, 2 * MiB + 3, 31 * MiB, 127 * MiB, 504 * MiB, 1000 * MiB, 4 * GiB, 31 * GiB, 65535 * 16 * 63 * 512 - 512, 65535 * 16 * 63 * 512, 65535 * 16 * 63 * 512 + 512, 127 * GiB, 65535 * 16 * 255 * 512, 65535 * 16 * 255 * 512 + 512, 1500 * GiB];
    for (const size of sizes) {
      const path = tmp.path('geometry.vhd');
      qemuCreate(path, 'vpc', size, { o: 'subformat=fixed' });
      expect(sizedGeometry(size, false).virtualSize, `size ${size}`).toBe(qemuInfo(path, 'vpc')['virtual-size']);
      run('truncate', ['-s', '0', path]);
    }
  });

  it('refuses what qemu-img refuses: past 2040 GiB, a backing file, bad options', async () => {
    const path = tmp.path('refused.vhd');
    expect(run('qemu-img', ['create', '-f', 'vpc', '-o', 'force_size=on', path, String(2041 * GiB)]).code).toBe(1);
    const io = await FileIO.create(path);
    try {
      await expect(vpcDriver.create!(io, { virtualSize: 2041 * GiB, options: { force_size: true } })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/2040 GiB/) });
      await expect(vpcDriver.create!(io, { virtualSize: MiB, backing: { name: 'base.vhd' }, options: {} })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
      await expect(vpcDriver.create!(io, { virtualSize: MiB, options: { subformat: 'sparse' } })).rejects.toMatchObject({ code: 'INVALID' });
    } finally {
      await io.close();
    }
  });
});
