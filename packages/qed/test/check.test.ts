import { appendFileSync, copyFileSync, truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertInPlace, type CheckReport } from '@ic/core';
import { qemuCreate, qemuInfo, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { NEED_CHECK_BLOCKER, qedDriver, type QedImage } from '../src/index.js';

/** What a conversion sees: the description and a full plan (a dry run). */
const dryRun = (image: QedImage) => convertInPlace({ io: image.io, source: qedDriver, target: qedDriver, dryRun: true });
import { peekU64, pokeU64, qemuCheckJson, withImage } from './helpers.js';

const GiB = 1024 ** 3;
const CLUSTER = 0x10000;

/** The exit status the CLI derives from a report (qemu-img check's convention). */
function exitCode(report: CheckReport): number {
  if (report.checkErrors > 0) return 1;
  if (report.corruptions > 0) return 2;
  if (report.leaks > 0) return 3;
  return 0;
}

/** check() and `qemu-img check` must agree on the verdict and on every counter qemu prints. */
async function expectSameVerdict(path: string): Promise<CheckReport> {
  const before = sha256File(path);
  const report = await withImage(path, (image) => image.check());
  expect(sha256File(path), 'check() must not modify the image').toBe(before);
  const qemu = qemuCheckJson(path);
  expect({
    code: exitCode(report),
    corruptions: report.corruptions,
    leaks: report.leaks,
    checkErrors: report.checkErrors,
    total: report.totalClusters,
    allocated: report.allocatedClusters,
    fragmented: report.fragmentedClusters,
  }).toEqual({
    code: qemu.code,
    corruptions: qemu.json['corruptions'] ?? 0,
    leaks: qemu.json['leaks'] ?? 0,
    checkErrors: qemu.json['check-errors'] ?? 0,
    total: qemu.json['total-clusters'],
    allocated: qemu.json['allocated-clusters'],
    fragmented: qemu.json['fragmented-clusters'] ?? 0,
  });
  return report;
}

describe('check() classifies like qemu-img check', () => {
  const tmp = tempDir('ic-qed-check-');
  /**
   * 4 GiB default image [V]: L1 0x10000-0x4FFFF, data for guest 0 at 0x50000, L2#0 at 0x60000-0x9FFFF,
   * data for guest 3G at 0xA0000, L2#1 at 0xB0000-0xEFFFF; EOF 0xF0000.
   */
  let base = '';
  const L2_0 = 0x60000;
  const L2_1 = 0xb0000;
  const variant = (name: string, damage: (path: string) => void): string => {
    const path = tmp.path(name);
    copyFileSync(base, path);
    damage(path);
    return path;
  };

  beforeAll(() => {
    requireQemu();
    base = tmp.path('base.qed');
    qemuCreate(base, 'qed', 4 * GiB);
    qemuIo(base, 'qed', ['write -P 0x11 0 64k', `write -P 0x22 ${3 * GiB} 64k`]);
    // The layout the damage below relies on.
    expect(peekU64(base, 0x10000)).toBe(L2_0);
    expect(peekU64(base, 0x10008)).toBe(L2_1);
    expect(peekU64(base, L2_0)).toBe(0x50000);
  });
  afterAll(() => tmp.cleanup());

  it('a clean image: no errors, counters as qemu prints them', async () => {
    const report = await expectSameVerdict(base);
    expect(report.corruptions + report.leaks).toBe(0);
    expect(report.allocatedClusters).toBe(2);
  });

  it('fragmentation and zero clusters are counted like qemu', async () => {
    const path = tmp.path('fragmented.qed');
    qemuCreate(path, 'qed', 4 * GiB);
    qemuIo(path, 'qed', ['write -P 1 128k 64k', 'write -P 2 0 64k', 'write -P 3 64k 64k', 'write -z 256k 64k', `write -P 4 ${2 * GiB} 64k`]);
    const report = await expectSameVerdict(path);
    expect(report.fragmentedClusters).toBe(1);
  });

  it('an L2 entry past the end of the file is a corruption', async () => {
    const path = variant('past-eof.qed', (p) => pokeU64(p, L2_0 + 8, 0x100000));
    const report = await expectSameVerdict(path);
    expect(report.corruptions).toBe(1);
    expect(report.messages.join('\n')).toMatch(/past the end of the file/);
    // qemu-img map fails on it too ("Could not read file metadata"); so do map() and conversionSource().
    expect(run('qemu-img', ['map', '-f', 'qed', '--output=json', path]).code).not.toBe(0);
    await withImage(path, async (image) => {
      await expect(async () => {
        for await (const _ of image.map()) void _;
      }).rejects.toMatchObject({ code: 'CORRUPT' });
      await expect(image.read(CLUSTER, 512)).rejects.toMatchObject({ code: 'CORRUPT' });
      await expect(image.read(0, 512)).resolves.toHaveLength(512);
      await expect(dryRun(image)).rejects.toMatchObject({ code: 'CORRUPT', offset: L2_0 + 8 });
    });
  });

  it('two entries sharing a data cluster: a corruption (map still works, conversion refuses)', async () => {
    const path = variant('shared.qed', (p) => pokeU64(p, L2_0 + 8, 0x50000));
    const report = await expectSameVerdict(path);
    expect(report.corruptions).toBe(1);
    expect(report.messages.join('\n')).toMatch(/referenced once/);
    await withImage(path, async (image) => {
      for await (const _ of image.map()) void _;
      await expect(dryRun(image)).rejects.toMatchObject({ code: 'CORRUPT' });
    });
  });

  it('an unaligned data offset is a corruption', async () => {
    const report = await expectSameVerdict(variant('unaligned.qed', (p) => pokeU64(p, L2_0 + 8, 0x50200)));
    expect(report.corruptions).toBe(1);
  });

  it('a data entry pointing into the L1 table is a corruption', async () => {
    const report = await expectSameVerdict(variant('into-l1.qed', (p) => pokeU64(p, L2_0 + 16, 0x10000)));
    expect(report.corruptions).toBe(1);
  });

  it('an L2 table overlapping the L1 and a data cluster counts one corruption per shared cluster', async () => {
    const report = await expectSameVerdict(variant('l2-overlap.qed', (p) => pokeU64(p, 0x10010, 0x20000)));
    expect(report.corruptions).toBe(4);
  });

  it('an L1 entry past the end of the file is a corruption (even beyond the virtual size)', async () => {
    const path = variant('l1-past.qed', (p) => pokeU64(p, 0x10010, 0x200000));
    const report = await expectSameVerdict(path);
    expect(report.corruptions).toBe(1);
    // L1 entry 2 maps guest 4G..6G, past this 4 GiB disk: map() never looks at it.
    await withImage(path, async (image) => {
      for await (const _ of image.map()) void _;
    });
  });

  it('a leaked cluster past the tables: leaks only (exit 3)', async () => {
    const path = variant('leak.qed', (p) => appendFileSync(p, new Uint8Array(CLUSTER)));
    const report = await expectSameVerdict(path);
    expect(report.leaks).toBe(1);
    expect(report.corruptions).toBe(0);
  });

  it('an unreferenced cluster in the middle of the file is a leak', async () => {
    // Drop the reference to guest 3G's data: 0xA0000 becomes unreferenced.
    const report = await expectSameVerdict(variant('hole-leak.qed', (p) => pokeU64(p, L2_1 + 16384 * 8, 0)));
    expect(report.leaks).toBe(1);
  });

  it('corruptions and leaks together', async () => {
    const path = variant('mixed.qed', (p) => {
      appendFileSync(p, new Uint8Array(2 * CLUSTER));
      pokeU64(p, L2_0 + 8, 0x50000);
    });
    const report = await expectSameVerdict(path);
    expect([report.corruptions, report.leaks]).toEqual([1, 2]);
  });

  it('a file truncated inside the last L2 table (and a partial trailing cluster)', async () => {
    await expectSameVerdict(variant('truncated.qed', (p) => truncateSync(p, L2_1 + CLUSTER + 100)));
    await expectSameVerdict(variant('truncated2.qed', (p) => truncateSync(p, L2_1 + CLUSTER / 2)));
  });

  it('a need-check image (qemu-io abort): qemu says clean and dirty-flag false; ic blocks conversion', async () => {
    const path = tmp.path('need-check.qed');
    qemuCreate(path, 'qed', 64 * 1024 * 1024);
    // abort() kills qemu-io on purpose; the exit status is the signal, so run it directly.
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 0x11 0 64k', '-c', 'abort', path]);
    expect(peekU64(path, 16) & 0x2).toBe(0x2);
    expect(qemuInfo(path, 'qed')['dirty-flag']).toBe(false);
    const report = await expectSameVerdict(path);
    expect(report.messages[0]).toMatch(/need-check flag is set/);
    await withImage(path, async (image) => {
      expect(image.needCheck).toBe(true);
      expect(image.info().dirty).toBe(false);
      const source = await image.conversionSource();
      expect(source.blockers).toEqual([NEED_CHECK_BLOCKER]);
      expect(source.blockers[0]!.reason).toBe('the QED image needs a consistency check (need-check flag set): run `qemu-img check -r all` first');
      // The mapping itself is readable (qemu allows read-only opens without a check).
      const data = await image.read(0, 65536);
      expect(data.every((byte) => byte === 0x11)).toBe(true);
    });
    // qemu-img check -r all clears the flag; then the blocker is gone.
    expect(run('qemu-img', ['check', '-q', '-r', 'all', '-f', 'qed', path]).code).toBe(0);
    await withImage(path, async (image) => {
      expect(image.needCheck).toBe(false);
      expect((await image.conversionSource()).blockers).toEqual([]);
    });
  });

  describe('past cluster_size - 1 clusters of file, counted with qemu-img check\'s cluster numbering', () => {
    // 4 KiB clusters: qemu numbers cluster k of the file floor(k * 4096 / 4095), so its numbering drifts from
    // the file's one bit per 4095 clusters; 24 MiB of data is 6144 data clusters plus tables.
    const K4 = 4096;
    let big = '';
    const bigVariant = (name: string, damage: (path: string) => void): string => {
      const path = tmp.path(name);
      copyFileSync(big, path);
      damage(path);
      return path;
    };
    /** L1 entry `index` (the L1 offset is header field l1_table_offset, at byte 40). */
    const l1Entry = (index: number): number => peekU64(big, 40) + index * 8;
    /** Host offset of L2 entry `index` of the first L2 table. */
    const l2Entry = (index: number): number => peekU64(big, l1Entry(0)) + index * 8;

    beforeAll(() => {
      big = tmp.path('big-4k.qed');
      qemuCreate(big, 'qed', 64 * 1024 * 1024, { o: 'cluster_size=4096' });
      qemuIo(big, 'qed', ['write -P 0x11 0 24M']);
    });

    it('a clean image: qemu counts a leak per 4095 clusters, and so does check() (saying why)', async () => {
      const report = await expectSameVerdict(big);
      expect(report.leaks).toBeGreaterThan(0);
      expect(report.corruptions).toBe(0);
      expect(report.messages.join('\n')).toMatch(/cluster_size - 1/);
    });

    it('two entries sharing a data cluster past the drift', async () => {
      const report = await expectSameVerdict(bigVariant('big-shared.qed', (p) => pokeU64(p, l2Entry(1500), peekU64(p, l2Entry(1501)))));
      expect(report.corruptions).toBe(1);
    });

    it('a data entry pointing into an L2 table past the drift', async () => {
      const secondL2 = peekU64(big, l1Entry(2));
      expect(secondL2).toBeGreaterThan(4095 * K4);
      await expectSameVerdict(bigVariant('big-into-l2.qed', (p) => pokeU64(p, l2Entry(1800), secondL2 + K4)));
    });

    it('leaks past the drift: a dropped reference and clusters appended', async () => {
      const report = await expectSameVerdict(
        bigVariant('big-leaks.qed', (p) => {
          pokeU64(p, l2Entry(1900), 0);
          appendFileSync(p, new Uint8Array(5 * K4));
        }),
      );
      expect(report.leaks).toBeGreaterThan(5);
    });
  });

  it('repair is refused with UNSUPPORTED', async () => {
    await withImage(base, async (image) => {
      await expect(image.check({ repair: 'leaks' })).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    });
  });
});
