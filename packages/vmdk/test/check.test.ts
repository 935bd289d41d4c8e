/**
 * check() of monolithicSparse images with thousands of grains: the grain-slot bitmap (aligned, distinct grain
 * starts), the switch to a sorted list at the first start that is not aligned or repeats (the starts seen so far
 * carried over), and overlaps with the tables found from the bitmap.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { qemuCheck, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { closeAll, openVmdk } from './helpers.js';

const tmp = tempDir('ic-vmdk-check-');
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const GRAIN_SECTORS = 128;

/** Sets GTE `index` of grain table 0 in the primary and the redundant tables (they stay in agreement). */
function setGte(file: string, index: number, sector: number): void {
  const bytes = readFileSync(file);
  for (const directoryField of [48, 56]) {
    const directory = Number(bytes.readBigUInt64LE(directoryField));
    const table = bytes.readUInt32LE(directory * 512);
    bytes.writeUInt32LE(sector, table * 512 + index * 4);
  }
  writeFileSync(file, bytes);
}

function gte(file: string, index: number): number {
  const bytes = readFileSync(file);
  const table = bytes.readUInt32LE(Number(bytes.readBigUInt64LE(56)) * 512);
  return bytes.readUInt32LE(table * 512 + index * 4);
}

describe('check() on a sparse VMDK with thousands of grains', () => {
  let base = '';
  const variant = (name: string, damage: (file: string) => void): string => {
    const file = tmp.path(name);
    copyFileSync(base, file);
    damage(file);
    return file;
  };
  const check = async (file: string) => (await openVmdk(file)).check!();

  beforeAll(() => {
    requireQemu();
    base = tmp.path('base.vmdk');
    // 8 GiB: 256 grain tables in each copy, so the tables span sectors a grain slot can land in.
    qemuCreate(base, 'vmdk', '8G');
    qemuIo(base, 'vmdk', ['write -P 1 0 20M', 'write -P 2 4G 1M']);
  });

  it('clean: no corruptions, like qemu-img check', async () => {
    const report = await check(base);
    expect([report.corruptions, report.checkErrors]).toEqual([0, 0]);
    expect(qemuCheck(base, 'vmdk').code).toBe(0);
  });

  it('two GTEs naming one grain, after hundreds of distinct ones: one overlap', async () => {
    const report = await check(variant('shared.vmdk', (f) => setGte(f, 300, gte(f, 200))));
    expect(report.corruptions).toBe(1);
    expect(report.messages[0]).toMatch(new RegExp(`grains at sectors ${gte(base, 200)} and ${gte(base, 200)} overlap`));
  });

  it('a grain starting half a grain into another: it overlaps both neighbours', async () => {
    const report = await check(variant('unaligned.vmdk', (f) => setGte(f, 300, gte(f, 100) + GRAIN_SECTORS / 2)));
    expect(report.corruptions).toBe(2);
    expect(report.messages.every((line) => /overlap/.test(line))).toBe(true);
  });

  it('an unaligned grain first, then a repeated one: both found by the list', async () => {
    const report = await check(
      variant('unaligned-then-shared.vmdk', (f) => {
        setGte(f, 10, gte(f, 5) + 1);
        setGte(f, 250, gte(f, 249));
      }),
    );
    expect(report.corruptions).toBe(3);
  });

  it('a grain on the grain tables: one corruption naming them', async () => {
    const report = await check(variant('on-tables.vmdk', (f) => setGte(f, 50, 2 * GRAIN_SECTORS)));
    expect(report.corruptions).toBe(1);
    expect(report.messages[0]).toMatch(new RegExp(`grain at sector ${2 * GRAIN_SECTORS} overlaps the .*tables`));
  });

  it('a grain past the end of the file: a corruption and the check fails, like qemu', async () => {
    const file = variant('past-eof.vmdk', (f) => setGte(f, 60, 2 ** 31));
    const report = await check(file);
    expect([report.corruptions, report.checkErrors]).toEqual([1, 1]);
    expect(qemuCheck(file, 'vmdk').code).toBe(1);
  });
});
