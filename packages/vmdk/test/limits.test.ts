/**
 * The sizes qemu 7.2 can really use, found by experiment (qemu-img create / qemu-io write at the last grain /
 * qemu-img check for 1 TiB .. 512 TiB, and ic's own in-place 256 TiB result) and by reading block/vmdk.c:
 *  - qemu-img create counts grains in uint32_t (vmdk_init_extent: grains, gt_count = DIV_ROUND_UP(grains, 512)):
 *    past 2^32 - 512 grains the count wraps; 256 TiB gives a 64 KiB file without tables: a 64 KiB write fails
 *    ("write failed: Invalid argument"), a 512-byte one "succeeds" over the header (the data reads back wrong and
 *    the image no longer opens); 257 TiB gets the tables of 1 TiB (its last TiB cannot be written). With its 64 KiB grains qemu-img makes
 *    images up to 256 TiB - 32 MiB correctly. ic create, which lays files out like qemu-img, stops there.
 *  - Opening counts nothing in 32 bits except the grain directory (vmdk_add_extent: "L1 size too big" past 32 Mi
 *    entries) and sector numbers (GD/GT entries, and VMDK_EXTENT_MAX_SECTORS = 2^32 for allocation). So an image
 *    with correct tables is usable beyond 256 TiB: ic's in-place target made a 256 TiB VMDK that qemu-io wrote
 *    at its last grain and qemu-img check found clean. The target refuses more than 32 Mi grain tables
 *    (1 PiB with 64 KiB grains, 64 TiB with 4 KiB grains) and tables that would end past 2 TiB of file.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { isIcError } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCreate, qemuIo, run, tempDir } from '@ic/test-utils';
import { MAX_GD_ENTRIES, QEMU_CREATE_MAX_GRAINS, vmdkDriver } from '../src/index.js';

const TiB = 1024 ** 4;
const MiB = 1024 ** 2;
const tmp = tempDir('ic-vmdk-limits-');
afterAll(() => tmp.cleanup());

async function create(name: string, size: number): Promise<{ file: string; error?: unknown }> {
  const file = tmp.path(name);
  const io = await FileIO.create(file);
  try {
    await vmdkDriver.create!(io, { virtualSize: size, options: {} });
    return { file };
  } catch (error) {
    return { file, error };
  } finally {
    await io.close();
  }
}

describe('VMDK sizes qemu 7.2 can use', () => {
  it('ic create refuses 256 TiB up front in one line, like the unusable file qemu-img create makes of it', async () => {
    expect(QEMU_CREATE_MAX_GRAINS * 65536).toBe(256 * TiB - 32 * MiB);
    for (const size of [256 * TiB, 256 * TiB - 32 * MiB + 512, 300 * TiB]) {
      const { file, error } = await create('too-big.vmdk', size);
      expect(isIcError(error) && error.code).toBe('INVALID');
      expect((error as Error).message).toMatch(/^vmdk: virtual size \d+ needs \d+ grains of 65536 bytes; qemu 7\.2 counts them in 32 bits .* at most 281474943156224 bytes \(256 TiB - 32 MiB\)$/);
      expect(statSync(file).size).toBe(0);
    }
    // What qemu-img makes of 256 TiB: a 64 KiB file without tables, where writes fail or land on the header.
    const theirs = tmp.path('qemu-256T.vmdk');
    qemuCreate(theirs, 'vmdk', 256 * TiB);
    expect(statSync(theirs).size).toBe(65536);
    expect(run('qemu-io', ['-f', 'vmdk', '-c', 'write 0 64k', theirs]).stdout).toMatch(/write failed: Invalid argument/);
    qemuCreate(theirs, 'vmdk', 256 * TiB);
    expect(run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 7 0 512', '-c', 'read -P 7 0 512', theirs]).stdout).toMatch(/Pattern verification failed/);
    expect(run('qemu-img', ['info', '-f', 'vmdk', theirs]).code).not.toBe(0);
  });

  it('256 TiB - 32 MiB, the largest image qemu-img makes correctly, is made like qemu-img makes it and qemu writes its last sector', async () => {
    const size = 256 * TiB - 32 * MiB;
    const { file, error } = await create('largest.vmdk', size);
    expect(error).toBeUndefined();
    const theirs = tmp.path('largest-q.vmdk');
    qemuCreate(theirs, 'vmdk', size);
    expect(statSync(file).size).toBe(statSync(theirs).size);
    // Header, then the start of the redundant directory (after the descriptor, whose CID is random).
    const head = (path: string) => {
      const fd = openSync(path, 'r');
      try {
        const bytes = Buffer.alloc(0x2a00 + 65536);
        readSync(fd, bytes, 0, bytes.length, 0);
        return bytes;
      } finally {
        closeSync(fd);
      }
    };
    const ours = head(file);
    const qemus = head(theirs);
    expect(ours.subarray(0, 512).equals(qemus.subarray(0, 512))).toBe(true);
    expect(ours.subarray(0x2a00).equals(qemus.subarray(0x2a00))).toBe(true);
    qemuIo(file, 'vmdk', [`write -P 0x5a ${size - 512} 512`, `read -P 0x5a ${size - 512} 512`, 'write -P 0x5b 0 512']);
  }, 300_000);

  it('the in-place target takes up to 32 Mi grain tables whatever the size, and no more', () => {
    const problems = (virtualSize: number, clusterSize: number) =>
      vmdkDriver.inPlace!.create({ source: { virtualSize, clusterSize }, clusterSize, options: {} }).problems;
    for (const grain of [4096, 65536, 2 * MiB]) {
      const largest = MAX_GD_ENTRIES * 512 * grain;
      if (Number.isSafeInteger(largest + grain)) {
        expect(problems(largest, grain), `${grain}`).toEqual([]);
        expect(problems(largest + grain, grain), `${grain}`).toEqual([expect.stringMatching(/needs more than 33554432 grain tables/)]);
      }
    }
    expect(problems(256 * TiB, 65536)).toEqual([]);
  });

  it('the in-place target refuses up front (in its estimate, dry runs too) tables that would end past 2 TiB of file', () => {
    const target = vmdkDriver.inPlace!.create({ source: { virtualSize: 64 * 1024 * MiB, clusterSize: 65536 }, clusterSize: 65536, options: {} });
    const summary = { virtualSize: 64 * 1024 * MiB, clusterSize: 65536, dataClusters: 1, zeroClusters: 0, relocatedClusters: 0, tablesUsed: 1, keptDataEnd: 0 };
    expect(target.estimate({ ...summary, spaceStart: TiB }).metadataBytes).toBeGreaterThan(0);
    expect(() => target.estimate({ ...summary, spaceStart: 2 * TiB - 1024 * 1024 })).toThrow(/end beyond the 2 TiB/);
  });
});
