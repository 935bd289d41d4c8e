/**
 * Fuzzer findings as named regression tests: each rebuilds its mutant from a qemu-img seed and the recorded
 * mutations (offset + value), runs the whole harness on it in-process and expects no violation.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertInPlace, MemoryIO } from '@ic/core';
import { qcow2Driver } from '@ic/qcow2';
import { qedDriver } from '@ic/qed';
import { vmdkDriver } from '@ic/vmdk';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, tempDir } from '@ic/test-utils';
import { applyMutations, FUZZ_DRIVERS, installAllocationGuard, runMutant, seedImage, type AllocationGuard, type Mutation, type MutantResult } from '../src/index.js';

let guard: AllocationGuard;
const tmp = tempDir('ic-fuzz-findings-');
beforeAll(() => {
  guard = installAllocationGuard();
});
afterAll(() => {
  guard.uninstall();
  tmp.cleanup();
});

/** The harness on seed + mutations; the violations it found, as text. */
async function replay(seedName: string, mutations: Mutation[]): Promise<MutantResult & { found: string[] }> {
  const seed = seedImage(seedName);
  const result = await runMutant(seed.format, applyMutations(seed, mutations), { drivers: FUZZ_DRIVERS, allocationGuard: guard }, seed.backing);
  return { ...result, found: result.violations.map((v) => `${v.kind} in ${v.operation}: ${v.message}`) };
}

const be32 = (offset: number, value: number, field?: string): Mutation => ({ op: 'set', offset, width: 4, endian: 'be', value: String(value), ...(field ? { field } : {}) });

describe('fuzzer findings', () => {
  it('qcow2: backing_file_size 0xe20e45ce with no backing file made open read 3.8 GB (issue #7)', async () => {
    const result = await replay('qcow2-v3', [be32(16, 0xe20e45ce, 'backingFileSize')]);
    expect(result.found).toEqual([]);
    expect(result.verdicts.open).toBe('ok');
    expect(result.verdicts.check).toBe('ok');
  });

  it('qcow2: backing_file_size 4 MiB with no backing file and a dirty byte in the L1 (seed qcow2-snapshot#17)', async () => {
    const result = await replay('qcow2-snapshot', [{ op: 'write', offset: 196608, hex: '01' }, be32(16, 4194304, 'backingFileSize')]);
    expect(result.found).toEqual([]);
  });
});

describe('issue #7 regressions', () => {
  it('QED with 4 KiB clusters and table_size=1 converts in place to VMDK (was "allocator returned unusable offset 8192 [INTERNAL]")', async () => {
    // qemu-img creates such images (it cannot open them): header cluster, one-cluster L1, 8 KiB in all, smaller than
    // the VMDK header region (0x2A00). Give it one L2 table and one data cluster by hand, as another writer would.
    const file = tmp.path('t1.qed');
    qemuCreate(file, 'qed', 1024 * 1024, { o: 'cluster_size=4096,table_size=1' });
    const bytes = new Uint8Array(16384);
    bytes.set(readFileSync(file));
    const view = new DataView(bytes.buffer);
    view.setBigUint64(4096, 8192n, true); // L1[0] -> L2 at 8192
    view.setBigUint64(8192 + 8 * 3, 12288n, true); // L2[3] -> data cluster at 12288 (guest 12288)
    bytes.fill(0x5a, 12288);
    const expected = new Uint8Array(1024 * 1024);
    expected.fill(0x5a, 12288, 16384);
    const empty = new Uint8Array(readFileSync(file));
    for (const store of [empty, bytes]) {
      const io = new MemoryIO(store, 'qed-t1');
      await convertInPlace({ io, source: qedDriver, target: vmdkDriver });
      const converted = tmp.path('t1.vmdk');
      writeFileSync(converted, io.snapshot());
      const check = qemuCheck(converted, 'vmdk');
      expect(check.code, check.text).toBe(0);
      const raw = tmp.path('t1.raw');
      writeFileSync(raw, store === empty ? new Uint8Array(1024 * 1024) : expected);
      expect(qemuCompare(converted, 'vmdk', raw, 'raw').code).toBe(0);
    }
  });

  it('a VMDK child whose parentCID no longer matches its parent is refused by every in-place target (a qcow2/QED child has no CID to protect it)', async () => {
    const base = tmp.path('cid-parent.vmdk');
    const child = tmp.path('cid-child.vmdk');
    qemuCreate(base, 'vmdk', 4 * 1024 * 1024);
    qemuCreate(child, 'vmdk', 4 * 1024 * 1024, { backing: 'cid-parent.vmdk', backingFormat: 'vmdk', cwd: tmp.dir });
    qemuIo(base, 'vmdk', ['write -P 1 0 64k']); // a new CID for the parent
    const parentIo = await FileIO.open(base);
    const childIo = await FileIO.open(child, { writable: true });
    try {
      const parent = await vmdkDriver.open(parentIo);
      const before = readFileSync(child);
      for (const target of [qcow2Driver, qedDriver, vmdkDriver]) {
        const error = await convertInPlace({ io: childIo, source: vmdkDriver, target, openOptions: { backing: parent } }).catch((e: unknown) => e);
        expect(error, target.name).toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('parentCID mismatch') });
      }
      expect(readFileSync(child).equals(before)).toBe(true);
    } finally {
      await childIo.close();
      await parentIo.close();
    }
  });
});

describe('fixed findings', () => {
  it('qcow2 map: an L2 entry whose host offset is past 2^53 is refused as corrupt (it came out as an unsafe number from the fast path of walkMapping; seed qcow2-4k-refcount1#2)', async () => {
    // Bit 54 of an L2 entry: the general path (checkHostOffset) refused it, the inline fast path did not.
    const result = await replay('qcow2-4k-refcount1', [{ op: 'flip', offset: 286969, bit: 6 }]);
    expect(result.found).toEqual([]);
  });
});
