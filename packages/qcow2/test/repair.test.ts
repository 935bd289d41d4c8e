/**
 * check({ repair }) against `qemu-img check -r`: images damaged by killed qemu writers and by poking bytes,
 * repaired by ic and by qemu-img from the same copy; ic's result must pass `qemu-img check` clean and read the
 * same as qemu's (`qemu-img compare`), with qemu's repaired counts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { qcow2Driver, type Qcow2Image } from '../src/index.js';
import { inflate, ourCheckVerdict, peek, poke, qemuCheckVerdict, u64be } from './helpers.js';

const tmp = tempDir('ic-qcow2-repair-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;
let serial = 0;

/** A copy of `file` under a new name. */
function copy(file: string, name: string): string {
  const out = tmp.path(`${serial++}-${name}.qcow2`);
  copyFileSync(file, out);
  return out;
}

/** Repairs `file` with our driver (opened for writing, QEMU's locks held) and returns the report. */
async function icRepair(file: string, mode: 'leaks' | 'all') {
  const io = await FileIO.open(file, { writable: true });
  try {
    const image = (await qcow2Driver.open(io, { inflate })) as Qcow2Image;
    const report = await image.check({ repair: mode });
    // The image object follows the repair: a check through it sees the repaired file.
    const again = await image.check();
    return { report, again };
  } finally {
    await io.close();
  }
}

async function icCheck(file: string) {
  const io = await FileIO.open(file);
  try {
    return await ((await qcow2Driver.open(io, { inflate })) as Qcow2Image).check();
  } finally {
    await io.close();
  }
}

/** qemu-img check -r MODE --output=json: exit status and the repaired counts. */
function qemuRepair(file: string, mode: 'leaks' | 'all') {
  const result = run('qemu-img', ['check', '-r', mode, '-f', 'qcow2', '--output=json', file]);
  let json: Record<string, number> = {};
  try {
    json = JSON.parse(result.stdout) as Record<string, number>;
  } catch {
    // qemu-img printed no report (the check failed)
  }
  return { code: result.code, corruptionsFixed: json['corruptions-fixed'] ?? 0, leaksFixed: json['leaks-fixed'] ?? 0, stderr: result.stderr };
}

/**
 * Repairs a copy with ic and another with qemu-img; both must end clean and read the same. Where qemu-img 7.2's
 * own repair fails (`qemuFails`: it names the undamaged original), ours must still end clean and read as that.
 */
async function repairBoth(damaged: string, mode: 'leaks' | 'all', qemuFails?: string) {
  const ours = copy(damaged, 'ours');
  const theirs = copy(damaged, 'theirs');
  const { report, again } = await icRepair(ours, mode);
  const qemu = qemuRepair(theirs, mode);
  const verdict = qemuCheckVerdict(ours);
  expect(verdict.exit, report.messages.join('\n')).toBe(0);
  if (qemuFails !== undefined) {
    expect(qemu.code).toBe(1);
    expect(qemuCheckVerdict(theirs).exit).not.toBe(0);
    expect(qemuCompare(ours, 'qcow2', qemuFails, 'qcow2').code).toBe(0);
    expect(ourCheckVerdict(again)).toEqual(verdict);
    return { ours, theirs, report };
  }
  expect(qemuCheckVerdict(theirs).exit).toBe(0);
  expect(qemuCompare(ours, 'qcow2', theirs, 'qcow2').code).toBe(0);
  expect({ corruptionsFixed: report.corruptionsFixed ?? 0, leaksFixed: report.leaksFixed ?? 0 }).toEqual({
    corruptionsFixed: qemu.corruptionsFixed,
    leaksFixed: qemu.leaksFixed,
  });
  expect(ourCheckVerdict(again)).toEqual(verdict);
  expect(report.corruptions).toBe(0);
  expect(report.leaks).toBe(0);
  return { ours, theirs, report };
}

describe('a writer killed with lazy refcounts (dirty bit set, refcounts stale)', () => {
  let dirty: string;
  beforeAll(() => {
    dirty = tmp.path('dirty.qcow2');
    qemuCreate(dirty, 'qcow2', 64 * M, { o: 'lazy_refcounts=on' });
    qemuIo(dirty, 'qcow2', ['write -P 7 0 1M']);
    // A second writer that dies after its writes: new clusters referenced, their refcounts never written.
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'write -P 2 8M 192k', '-c', 'write -P 3 40M 64k', '-c', 'abort', dirty]);
    expect(qemuInfo(dirty, 'qcow2')['dirty-flag']).toBe(true);
  });

  it('check reports what qemu-img check reports', async () => {
    const report = await icCheck(dirty);
    expect(ourCheckVerdict(report)).toEqual(qemuCheckVerdict(dirty));
    expect(report.corruptions).toBeGreaterThan(0);
  });

  it('-r all: clean for qemu-img check, dirty bit cleared, same content as qemu-img check -r all', async () => {
    const { ours, report } = await repairBoth(dirty, 'all');
    expect(report.corruptionsFixed).toBeGreaterThan(0);
    expect(qemuInfo(ours, 'qcow2')['dirty-flag']).toBe(false);
    expect(qemuInfo(ours, 'qcow2')['format-specific']?.data['lazy-refcounts']).toBe(true);
    // qemu-io writes over the repaired image and reads old and new data back.
    const out = run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 9 16M 64k', '-c', 'read -P 9 16M 64k', '-c', 'read -P 2 8M 192k', '-c', 'read -P 7 128k 64k', ours]);
    expect(out.stdout).not.toMatch(/fail|error/i);
    expect(qemuCheckVerdict(ours).exit).toBe(0);
  });

  it('-r leaks refuses, like qemu-img ("need to rebuild refcount structures"), and writes nothing', async () => {
    const file = copy(dirty, 'leaks');
    const before = sha256File(file);
    await expect(icRepair(file, 'leaks')).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/must be rebuilt/) });
    expect(sha256File(file)).toBe(before);
    const qemu = qemuRepair(copy(dirty, 'leaks-qemu'), 'leaks');
    expect(qemu.code).toBe(1);
    expect(qemu.stderr).toContain('need to rebuild refcount structures');
  });
});

describe('leaks left by a killed qemu writer (refcount blocks written, L2 tables not)', () => {
  let leaky: string;
  beforeAll(() => {
    leaky = tmp.path('leaky.qcow2');
    qemuCreate(leaky, 'qcow2', 64 * M, { o: 'cluster_size=512' });
    qemuIo(leaky, 'qcow2', ['write -P 1 0 64k']);
    // Writeback caching with a 4-block refcount cache: refcount blocks are evicted (written) while the L2 tables
    // that would reference the new clusters stay in the cache and die with the process.
    run('qemu-io', ['-t', 'writeback', '--image-opts', '-c', 'write -P 2 8M 4M', '-c', 'abort', `driver=qcow2,file.filename=${leaky},refcount-cache-size=2048,l2-cache-size=1048576`]);
    const verdict = qemuCheckVerdict(leaky);
    expect(verdict.exit).toBe(3);
    expect(verdict.numbers.leaks).toBeGreaterThan(0);
  });

  it('check reports the leaks qemu-img reports', async () => {
    expect(ourCheckVerdict(await icCheck(leaky))).toEqual(qemuCheckVerdict(leaky));
  });

  it.each(['leaks', 'all'] as const)('-r %s frees them: qemu-img check exit 0, content as qemu repaired it', async (mode) => {
    const { report } = await repairBoth(leaky, mode);
    expect(report.leaksFixed).toBe(qemuCheckVerdict(leaky).numbers.leaks);
  });

  it('a clean image is not written at all', async () => {
    const clean = tmp.path('clean.qcow2');
    qemuCreate(clean, 'qcow2', 16 * M);
    qemuIo(clean, 'qcow2', ['write -P 1 0 1M']);
    const before = sha256File(clean);
    const { report } = await icRepair(clean, 'all');
    expect(report).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(report.corruptionsFixed).toBeUndefined();
    expect(sha256File(clean)).toBe(before);
  });
});

describe('damage made by poking bytes, repaired like qemu-img check -r', () => {
  /** Host layout of a fresh default image after these writes: refcount table 0x10000, block 0x20000, L1 0x30000, L2 0x40000, data from 0x50000. */
  const REFCOUNT_BLOCK = 0x20000;
  const L2_TABLE = 0x40000;
  const refcountEntry = (cluster: number) => REFCOUNT_BLOCK + cluster * 2;
  let base: string;
  let snapshots: string;
  beforeAll(() => {
    base = tmp.path('base.qcow2');
    qemuCreate(base, 'qcow2', 16 * M);
    qemuIo(base, 'qcow2', ['write -P 1 0 192k', 'discard 64k 64k']);
    expect(peek(base, L2_TABLE, 8)).toEqual(Uint8Array.from(u64be(0x8000000000050000n)));
    snapshots = tmp.path('snapshots.qcow2');
    qemuCreate(snapshots, 'qcow2', 16 * M);
    qemuIo(snapshots, 'qcow2', ['write -P 1 0 256k']);
    expect(run('qemu-img', ['snapshot', '-c', 'one', snapshots]).code).toBe(0);
    qemuIo(snapshots, 'qcow2', ['write -P 2 64k 64k', 'write -P 3 1M 64k']);
  });

  /** `qemuFails`: qemu-img 7.2 -r all stops with "ERROR writing refblock" (its overlap checks refuse its own rebuild). */
  const cases: { name: string; image: () => string; damage: (file: string) => void; modes: ('leaks' | 'all')[]; qemuFails?: boolean }[] = [
    { name: 'a freed cluster with refcount 1 (leak)', image: () => base, damage: (f) => poke(f, refcountEntry(6), [0, 1]), modes: ['leaks', 'all'] },
    { name: 'a data cluster with refcount 2 (leak and COPIED error)', image: () => base, damage: (f) => poke(f, refcountEntry(5), [0, 2]), modes: ['leaks', 'all'] },
    { name: 'COPIED missing on a data cluster', image: () => base, damage: (f) => poke(f, L2_TABLE, u64be(0x0000000000050000n)), modes: ['leaks', 'all'] },
    { name: 'COPIED missing on the L1 entry', image: () => base, damage: (f) => poke(f, 0x30000, u64be(0x0000000000040000n)), modes: ['all'] },
    { name: 'the header cluster counted as free (rebuild)', image: () => base, damage: (f) => poke(f, refcountEntry(0), [0, 0]), modes: ['all'] },
    { name: 'a data cluster counted as free (rebuild)', image: () => base, damage: (f) => poke(f, refcountEntry(7), [0, 0]), modes: ['all'] },
    { name: 'the refcount block moved onto a data cluster (rebuild)', image: () => base, damage: (f) => poke(f, 0x10000, u64be(0x50000)), modes: ['all'] },
    { name: 'a misaligned refcount block (check errors, rebuild)', image: () => base, damage: (f) => poke(f, 0x10000, u64be(0x20200)), modes: ['all'], qemuFails: true },
    { name: 'a refcount table entry with reserved bits (rebuild)', image: () => base, damage: (f) => poke(f, 0x10000, u64be(0x20001)), modes: ['all'], qemuFails: true },
    { name: 'a cluster shared with a snapshot counted once (refcount too low)', image: () => snapshots, damage: (f) => poke(f, refcountEntry(5), [0, 1]), modes: ['all'] },
    { name: 'a snapshot-shared cluster counted three times (leak)', image: () => snapshots, damage: (f) => poke(f, refcountEntry(5), [0, 3]), modes: ['leaks', 'all'] },
    { name: 'a snapshot-shared cluster counted as free (rebuild with snapshots)', image: () => snapshots, damage: (f) => poke(f, refcountEntry(5), [0, 0]), modes: ['all'] },
  ];
  for (const { name, image, damage, modes, qemuFails } of cases) {
    for (const mode of modes) {
      it(`${name}: -r ${mode}`, async () => {
        const file = copy(image(), 'damaged');
        damage(file);
        expect(qemuCheckVerdict(file).exit).not.toBe(0);
        expect(ourCheckVerdict(await icCheck(file))).toEqual(qemuCheckVerdict(file));
        await repairBoth(file, mode, qemuFails ? image() : undefined);
      });
    }
  }

  const refused: { name: string; damage: (file: string) => void }[] = [
    { name: 'an L2 entry pointing past the end of the file', damage: (f) => poke(f, L2_TABLE + 16, u64be(0x8000000001000000n)) },
    { name: 'an L2 entry with reserved bits', damage: (f) => poke(f, L2_TABLE, u64be(0x8000000000050002n)) },
    { name: 'a misaligned data cluster', damage: (f) => poke(f, L2_TABLE + 16, u64be(0x8000000000070200n)) },
    { name: 'an L1 entry with reserved bits', damage: (f) => poke(f, 0x30000, u64be(0x8000000000040001n)) },
  ];
  for (const { name, damage } of refused) {
    it.each(['leaks', 'all'] as const)(`${name}: -r %s is refused in one line, the file byte-identical`, async (mode) => {
      const file = copy(base, 'refused');
      damage(file);
      const before = sha256File(file);
      const error = await icRepair(file, mode).then(
        () => undefined,
        (caught: unknown) => caught as { code?: string; message?: string },
      );
      expect(error?.code).toBe('CORRUPT');
      expect(error?.message).toMatch(/^qcow2: the tables themselves are damaged/);
      expect(error?.message).not.toContain('\n');
      expect(sha256File(file)).toBe(before);
    });
  }
});
