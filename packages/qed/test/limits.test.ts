/**
 * qemu 7.2's QED geometry limits, found by experiment over the whole option grid and kept true here: ic create
 * accepts exactly the (cluster_size, table_size, size) combinations that qemu-img create accepts and qemu can
 * then open; everything else is refused up front, in one line. The rules (block/qed.c, qed.h): sizes and
 * powers of two as checked by qed_is_*_valid, table_size >= 2 (qed_check_table_offset), and qed_max_image_size()
 * computed in 64-bit arithmetic that wraps to 0 once (table_size * cluster_size / 8)^2 * cluster_size reaches 2^64.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isIcError } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuIo, requireQemu, run } from '@ic/test-utils';
import { qedDriver, qemuMaxImageSize, QEMU_USABLE_MAX_CLUSTER_SIZE } from '../src/index.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CLUSTER_SIZES = Array.from({ length: 15 }, (_, i) => 4 * KiB * 2 ** i); // 4 KiB .. 64 MiB
const TABLE_SIZES = [1, 2, 4, 8, 16];

// Large-cluster images have L1 tables of up to 1 GiB that qemu-img writes out: in memory (tmpfs) where there is one.
const dir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'ic-qed-limits-'));
const tmp = { path: (name: string) => join(dir, name) };
beforeAll(() => requireQemu());
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** qemu-img create, then qemu-img info: does qemu make the image and open it? */
function qemuAccepts(file: string, clusterSize: number, tableSize: number, size: number): { ok: boolean; why: string } {
  const create = run('qemu-img', ['create', '-q', '-f', 'qed', '-o', `cluster_size=${clusterSize},table_size=${tableSize}`, file, String(size)]);
  if (create.code !== 0) return { ok: false, why: create.stderr.trim() };
  const info = run('qemu-img', ['info', '-f', 'qed', file]);
  return { ok: info.code === 0, why: info.stderr.trim() };
}

async function icCreate(file: string, clusterSize: number, tableSize: number, size: number): Promise<{ ok: boolean; why: string }> {
  const io = await FileIO.create(file);
  try {
    await qedDriver.create!(io, { virtualSize: size, options: { cluster_size: clusterSize, table_size: tableSize } });
    return { ok: true, why: '' };
  } catch (error) {
    if (!isIcError(error)) throw error;
    expect(error.code).toBe('INVALID');
    expect(error.message).not.toContain('\n');
    return { ok: false, why: error.message };
  } finally {
    await io.close();
  }
}

describe('QED geometry limits: ic create accepts exactly what qemu 7.2 creates and opens', () => {
  for (const clusterSize of CLUSTER_SIZES) {
    it(`cluster_size=${clusterSize}, every table_size, sizes 0, 1 GiB and around qemu's maximum`, async () => {
      for (const tableSize of TABLE_SIZES) {
        const limit = qemuMaxImageSize(clusterSize, tableSize);
        // Size 0 (the only size qemu accepts past 4 MiB clusters) makes qemu-img write the whole L1 table: up to
        // 256 MiB of it here (the larger ones behave the same; they were run once by hand, see the commit).
        const sizes = new Set(clusterSize * tableSize <= 256 * MiB ? [0, 1001, GiB] : [1001, GiB]);
        if (limit > 0n && limit <= BigInt(Number.MAX_SAFE_INTEGER)) sizes.add(Number(limit)).add(Number(limit) + 512);
        for (const size of sizes) {
          const where = `cluster_size=${clusterSize} table_size=${tableSize} size=${size}`;
          const theirs = qemuAccepts(tmp.path('qemu.qed'), clusterSize, tableSize, size);
          const ours = await icCreate(tmp.path('ic.qed'), clusterSize, tableSize, size);
          expect(ours.ok, `${where}: qemu ${theirs.ok ? 'accepts' : `refuses (${theirs.why})`}, ic ${ours.ok ? 'accepts' : `refuses (${ours.why})`}`).toBe(theirs.ok);
          // Past the advertised cluster sizes only empty images exist (L1 tables of up to 1 GiB): equivalence is enough.
          if (!ours.ok || clusterSize > QEMU_USABLE_MAX_CLUSTER_SIZE) continue;
          const check = qemuCheck(tmp.path('ic.qed'), 'qed');
          expect(check.code, `${where}: ${check.text}`).toBe(0);
          if (size >= 512) qemuIo(tmp.path('ic.qed'), 'qed', [`write -P 0x5a ${Math.floor((size - 512) / 512) * 512} 512`]);
        }
      }
    });
  }

  it('the in-place target offers 4 KiB to 4 MiB clusters: 4 MiB works with table_size=2 only, 8 MiB never', () => {
    expect(QEMU_USABLE_MAX_CLUSTER_SIZE).toBe(4 * MiB);
    expect(qedDriver.inPlace!.clusterSizes).toEqual({ min: 4 * KiB, max: 4 * MiB });
    expect(qemuMaxImageSize(4 * MiB, 2)).toBe(1n << 62n);
    for (const tableSize of [4, 8, 16]) expect(qemuMaxImageSize(4 * MiB, tableSize)).toBe(0n);
    for (const tableSize of TABLE_SIZES) expect(qemuMaxImageSize(8 * MiB, tableSize) === 0n || tableSize === 1).toBe(true);
    expect(qemuMaxImageSize(2 * MiB, 16)).toBe(0n);
    expect(qemuMaxImageSize(64 * KiB, 4)).toBe(64n * 1024n ** 4n);
  });

  it('refusals name the way out, in one line', async () => {
    expect((await icCreate(tmp.path('r.qed'), 4 * MiB, 4, GiB)).why).toBe(
      'qed: qemu 7.2 refuses 1073741824-byte QED images with cluster_size=4194304 and table_size=4: its maximum-size arithmetic overflows 64 bits for this geometry and allows 0 bytes; use table_size=2',
    );
    expect((await icCreate(tmp.path('r.qed'), 64 * MiB, 4, GiB)).why).toMatch(/overflows 64 bits.*; use cluster_size=2097152$/);
    expect((await icCreate(tmp.path('r.qed'), 4 * KiB, 2, 8 * GiB)).why).toMatch(/exceeds the 4294967296 bytes .*; use table_size=4$/);
  });
});
