import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { vmdkDriver } from '../src/index.js';
import { closeAll, errorCode, mapOf, openVmdk } from './helpers.js';

const tmp = tempDir('ic-vmdk-create-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

async function ourCreate(name: string, size: number, options: Record<string, string | boolean> = {}, backing?: { name: string; format?: string }) {
  const file = tmp.path(name);
  const io = await FileIO.create(file);
  await vmdkDriver.create!(io, { virtualSize: size, options, ...(backing ? { backing } : {}) });
  await io.close();
  return file;
}

/** Replaces the random CID and the file's own name in the extent line so two files can be compared. */
function normalised(bytes: Buffer, fileName: string): Buffer {
  const copy = Buffer.from(bytes);
  const text = copy.subarray(0x200, 0x2a00).toString('latin1');
  const fixed = text.replace(/^CID=[0-9a-f]+$/m, 'CID=cafe').replace(`"${fileName}"`, '"X"');
  const out = Buffer.alloc(0x2800);
  out.write(fixed, 'latin1');
  out.copy(copy, 0x200);
  return copy;
}

describe('create() lays the file out like qemu-img create -f vmdk', () => {
  const cases: [string, number, Record<string, string | boolean>, string][] = [
    ['1G default', 1024 ** 3, {}, ''],
    ['odd size (rounded up to a sector)', 100 * 1024 * 1024 + 7 * 512 + 3, {}, ''],
    ['zeroed_grain', 100 * 1024 * 1024, { zeroed_grain: true }, 'zeroed_grain=on'],
    ['lsilogic + hwversion 6', 1024 ** 3, { adapter_type: 'lsilogic', hwversion: '6' }, 'adapter_type=lsilogic,hwversion=6'],
    ['compat6 + buslogic', 5 * 1024 ** 3, { compat6: true, adapter_type: 'buslogic' }, 'compat6=on,adapter_type=buslogic'],
  ];
  for (const [label, size, options, qemuOptions] of cases) {
    it(label, async () => {
      const name = label.replace(/\W+/g, '_');
      const ours = await ourCreate(`${name}.vmdk`, size, options);
      const theirs = tmp.path(`${name}.vmdk`.replace('.vmdk', '-q.vmdk'));
      qemuCreate(theirs, 'vmdk', size, qemuOptions ? { o: qemuOptions } : {});
      // The extent line names the file: both write the base name of the file.
      const a = normalised(readFileSync(ours), `${name}.vmdk`);
      const b = normalised(readFileSync(theirs), `${name}-q.vmdk`);
      expect(a.length).toBe(b.length);
      expect(a.equals(b)).toBe(true);
      expect(qemuCheck(ours, 'vmdk').code).toBe(0);
      const info = qemuInfo(ours, 'vmdk');
      expect(info['virtual-size']).toBe(Math.ceil(size / 512) * 512);
      const image = await openVmdk(ours);
      expect(await mapOf(image)).toEqual([{ kind: 'unallocated', guestOffset: 0, length: info['virtual-size'] }]);
      qemuIo(ours, 'vmdk', ['write -P 0x5a 0 64k', 'write -z 1M 64k']);
      expect(qemuCheck(ours, 'vmdk').code).toBe(0);
    });
  }

  it('a child with parent_cid reads through its parent in qemu', async () => {
    const base = tmp.path('base.vmdk');
    qemuCreate(base, 'vmdk', '8M');
    qemuIo(base, 'vmdk', ['write -P 0x44 0 1M']);
    const cid = /CID=([0-9a-f]+)/.exec(readFileSync(base, 'latin1'))![1]!;
    const child = await ourCreate('child.vmdk', 8 * 1024 * 1024, { parent_cid: cid }, { name: 'base.vmdk', format: 'vmdk' });
    const text = readFileSync(child, 'latin1');
    expect(text).toContain(`parentCID=${cid}\ncreateType="monolithicSparse"\nparentFileNameHint="base.vmdk"\n# Extent description\n`);
    const info = qemuInfo(child, 'vmdk');
    expect(info['backing-filename']).toBe('base.vmdk');
    expect(info['backing-filename-format']).toBe('vmdk');
    expect(qemuIo(child, 'vmdk', ['read -P 0x44 0 1M'])).toMatch(/read 1048576/);
  });

  it('refuses what it cannot make', async () => {
    const io = await FileIO.create(tmp.path('bad.vmdk'));
    const create = (options: Record<string, string | boolean>, backing?: { name: string; format?: string }) =>
      errorCode(() => vmdkDriver.create!(io, { virtualSize: 1 << 20, options, ...(backing ? { backing } : {}) }));
    expect(await create({ subformat: 'monolithicFlat' })).toBe('UNSUPPORTED');
    expect(await create({ subformat: 'streamOptimized' })).toBe('UNSUPPORTED');
    expect(await create({ subformat: 'nonsense' })).toBe('INVALID');
    expect(await create({ adapter_type: 'scsi' })).toBe('INVALID');
    expect(await create({ compat6: true, hwversion: '7' })).toBe('INVALID');
    expect(await create({}, { name: 'base.qcow2', format: 'qcow2' })).toBe('INVALID');
    expect(await create({}, { name: 'base.vmdk', format: 'vmdk' })).toBe('INVALID'); // no parent_cid
    expect(await create({ parent_cid: 'xyz' }, { name: 'base.vmdk' })).toBe('INVALID');
    expect(await create({ parent_cid: '12345678' }, { name: 'x'.repeat(9000) })).toBe('INVALID');
    await io.close();
  });
});
