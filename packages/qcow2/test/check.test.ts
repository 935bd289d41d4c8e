/**
 * check() on images damaged the way qemu's iotests damage them (poking bytes), compared with
 * `qemu-img check`: same counts of corruptions and leaks, same totals, same exit classification.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { closeAll, openQcow2, ourCheckVerdict, peek, poke, qemuCheckVerdict, u64be } from './helpers.js';

const tmp = tempDir('ic-qcow2-check-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const K = 1024;
const M = 1024 * K;

const theirNumbers = qemuCheckVerdict;
const ourNumbers = ourCheckVerdict;

/** Host layout of a fresh default image after these writes: L2 at 0x40000, data from 0x50000. */
const REFCOUNT_BLOCK = 0x20000;
const L2_TABLE = 0x40000;
const refcountEntry = (cluster: number) => REFCOUNT_BLOCK + cluster * 2;

let base: string;
beforeAll(() => {
  base = tmp.path('base.qcow2');
  qemuCreate(base, 'qcow2', 16 * M);
  // Clusters 5, 6, 7 hold data; discarding the middle one frees cluster 6 (refcount 0, file keeps its length).
  qemuIo(base, 'qcow2', ['write -P 1 0 192k', 'discard 64k 64k']);
  expect(peek(base, L2_TABLE, 24)).toEqual(Uint8Array.from([...u64be(0x8000000000050000n), ...u64be(1), ...u64be(0x8000000000070000n)]));
});

interface Damage {
  name: string;
  poke: (file: string) => void;
  expect: 'corruption' | 'leaks' | 'clean' | 'check-errors';
}

const damages: Damage[] = [
  { name: 'undamaged', poke: () => {}, expect: 'clean' },
  { name: 'refcount of a data cluster lowered to 0', poke: (f) => poke(f, refcountEntry(5), [0, 0]), expect: 'corruption' },
  { name: 'refcount of the L2 table lowered to 0', poke: (f) => poke(f, refcountEntry(4), [0, 0]), expect: 'corruption' },
  { name: 'refcount of the header cluster lowered to 0', poke: (f) => poke(f, refcountEntry(0), [0, 0]), expect: 'corruption' },
  { name: 'L2 entry pointing past EOF', poke: (f) => poke(f, L2_TABLE + 16, u64be(0x8000000001000000n)), expect: 'corruption' },
  { name: 'L2 entry not cluster-aligned', poke: (f) => poke(f, L2_TABLE + 16, u64be(0x8000000000070200n)), expect: 'corruption' },
  { name: 'two L2 entries sharing one cluster', poke: (f) => poke(f, L2_TABLE + 16, u64be(0x8000000000050000n)), expect: 'corruption' },
  { name: 'L2 entry with reserved bits set', poke: (f) => poke(f, L2_TABLE, u64be(0x8000000000050002n)), expect: 'corruption' },
  { name: 'COPIED flag missing on a data cluster', poke: (f) => poke(f, L2_TABLE, u64be(0x0000000000050000n)), expect: 'corruption' },
  { name: 'COPIED flag missing on the L1 entry', poke: (f) => poke(f, 0x30000, u64be(0x0000000000040000n)), expect: 'corruption' },
  { name: 'L1 entry with reserved bits set', poke: (f) => poke(f, 0x30000, u64be(0x8000000000040001n)), expect: 'corruption' },
  { name: 'leaked cluster: freed cluster with refcount raised to 1', poke: (f) => poke(f, refcountEntry(6), [0, 1]), expect: 'leaks' },
  { name: 'data cluster refcount raised to 2 (leak + COPIED error)', poke: (f) => poke(f, refcountEntry(5), [0, 2]), expect: 'corruption' },
  { name: 'refcount past EOF raised (not compared, like qemu)', poke: (f) => poke(f, refcountEntry(9), [0, 1]), expect: 'clean' },
  { name: 'refcount table entry pointing past EOF', poke: (f) => poke(f, 0x10008, u64be(0x10000000)), expect: 'corruption' },
  { name: 'refcount block moved to a data cluster', poke: (f) => poke(f, 0x10000, u64be(0x50000)), expect: 'corruption' },
  { name: 'refcount block not cluster-aligned', poke: (f) => poke(f, 0x10000, u64be(0x20200)), expect: 'check-errors' },
];

describe('check() classifies damage like qemu-img check', () => {
  damages.forEach((damage, index) => {
    it(damage.name, async () => {
      const file = tmp.path(`damage${index}.qcow2`);
      copyFileSync(base, file);
      damage.poke(file);
      const theirs = theirNumbers(file);
      const report = await (await openQcow2(file)).check();
      const ours = ourNumbers(report);
      expect(ours, report.messages.join('\n')).toEqual(theirs);
      expect(theirs.exit).toBe({ clean: 0, 'check-errors': 1, corruption: 2, leaks: 3 }[damage.expect]);
    });
  });
});

describe('check() on other qemu-made states', () => {
  it('a dirty image left by a crash with lazy refcounts', async () => {
    const file = tmp.path('dirty.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'lazy_refcounts=on' });
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'abort', file]);
    const image = await openQcow2(file);
    expect(image.info().dirty).toBe(true);
    const report = await image.check();
    expect(ourNumbers(report)).toEqual(theirNumbers(file));
    expect(report.corruptions).toBeGreaterThan(0);
  });

  it('internal snapshots (shared clusters with refcount 2)', async () => {
    const file = tmp.path('snapshots.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    qemuIo(file, 'qcow2', ['write -P 1 0 256k']);
    expect(run('qemu-img', ['snapshot', '-c', 'first', file]).code).toBe(0);
    qemuIo(file, 'qcow2', ['write -P 2 64k 64k', 'write -P 3 1M 64k']);
    expect(run('qemu-img', ['snapshot', '-c', 'second', file]).code).toBe(0);
    qemuIo(file, 'qcow2', ['write -P 4 0 64k']);
    const image = await openQcow2(file);
    expect(image.state.snapshotTable?.snapshots.map((s) => s.name)).toEqual(['first', 'second']);
    const report = await image.check();
    expect(ourNumbers(report)).toEqual(theirNumbers(file));
    // Damage a snapshot's L2 reference count: cluster shared by the active L1 and both snapshots.
    const damaged = tmp.path('snapshots-damaged.qcow2');
    copyFileSync(file, damaged);
    poke(damaged, refcountEntry(5), [0, 1]);
    const damagedReport = await (await openQcow2(damaged)).check();
    expect(ourNumbers(damagedReport)).toEqual(theirNumbers(damaged));
    expect(damagedReport.corruptions).toBeGreaterThan(0);
  });

  it('persistent bitmaps (directory, tables and bitmap data are referenced)', async () => {
    const file = tmp.path('bitmaps.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    expect(run('qemu-img', ['bitmap', '--add', file, 'b0']).code).toBe(0);
    qemuIo(file, 'qcow2', ['write -P 1 0 64k', 'write -P 2 8M 64k']);
    expect(run('qemu-img', ['bitmap', '--add', '-g', '128k', file, 'b1']).code).toBe(0);
    const report = await (await openQcow2(file)).check();
    expect(ourNumbers(report)).toEqual(theirNumbers(file));
  });

  it('a compressed image with a raised refcount on a shared compressed cluster', async () => {
    const raw = tmp.path('c.raw');
    const file = tmp.path('c.qcow2');
    qemuCreate(raw, 'raw', 4 * M);
    qemuIo(raw, 'raw', ['write -P 5 0 192k']);
    expect(run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, file]).code).toBe(0);
    expect(ourNumbers(await (await openQcow2(file)).check())).toEqual(theirNumbers(file));
    poke(file, refcountEntry(5), [0, 9]);
    const report = await (await openQcow2(file)).check();
    expect(ourNumbers(report)).toEqual(theirNumbers(file));
    expect(report.leaks).toBe(1);
  });

  it('refuses repair with a typed error', async () => {
    const image = await openQcow2(base);
    await expect(image.check({ repair: 'all' })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
  });
});
