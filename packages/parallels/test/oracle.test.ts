import { copyFileSync, statSync, truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, convertInPlace, type CheckReport } from '@ic/core';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { metadataRangesOf } from '@ic/conformance';
import { INUSE_MAGIC, parallelsDriver } from '../src/index.js';
import { ourQemuMap, pokeU32, qemuCheckJson, rawRange, theirQemuMap, withImage } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

interface Scenario {
  name: string;
  size: number;
  o?: string;
  clusterSize: number;
  commands: string[];
  ranges?: [number, number][];
}

const scenarios: Scenario[] = [
  {
    name: 'defaults (1 MiB clusters): unaligned writes, a zero write, the last sector',
    size: GiB,
    clusterSize: MiB,
    commands: ['write -P 0x11 1000 5000', 'write -P 0x22 5M 70k', 'write -z 20M 1M', 'write -P 0x33 3M 64k', `write -P 0x44 ${GiB - 512} 512`],
    ranges: [
      [0, 24 * MiB],
      [GiB - 2 * MiB, 2 * MiB],
    ],
  },
  {
    name: 'cluster_size=64k, writes in reverse order (fragmented), size not a cluster multiple',
    size: 100 * MiB + 512,
    o: 'cluster_size=64k',
    clusterSize: 64 * 1024,
    commands: [`write -P 0x51 ${100 * MiB} 512`, 'write -P 0x52 50M 200k', 'write -P 0x53 0 64k', 'write -P 0x54 7M 1k'],
  },
  {
    name: 'cluster_size=4k',
    size: 16 * MiB,
    o: 'cluster_size=4k',
    clusterSize: 4096,
    commands: ['write -P 0x61 4095 2', 'write -P 0x62 8M 1M'],
  },
];

/** The exit status the CLI derives from a report (qemu-img check's convention). */
function exitCode(report: CheckReport): number {
  if (report.checkErrors > 0) return 1;
  if (report.corruptions > 0) return 2;
  if (report.leaks > 0) return 3;
  return 0;
}

/** check() and `qemu-img check` agree on the verdict and every counter qemu prints; check() writes nothing. */
async function expectSameVerdict(path: string): Promise<CheckReport> {
  const before = sha256File(path);
  const report = await withImage(path, (image) => image.check());
  expect(sha256File(path)).toBe(before);
  const qemu = qemuCheckJson(path);
  expect({
    code: exitCode(report),
    corruptions: report.corruptions,
    leaks: report.leaks,
    total: report.totalClusters,
    allocated: report.allocatedClusters,
    fragmented: report.fragmentedClusters,
    end: report.imageEndOffset,
  }).toEqual({
    code: qemu.code,
    corruptions: qemu.json['corruptions'] ?? 0,
    leaks: qemu.json['leaks'] ?? 0,
    total: qemu.json['total-clusters'],
    allocated: qemu.json['allocated-clusters'] ?? 0,
    fragmented: qemu.json['fragmented-clusters'] ?? 0,
    end: qemu.json['image-end-offset'],
  });
  return report;
}

describe('Parallels images made by qemu-img: info, map, read and check agree with qemu', () => {
  const tmp = tempDir('ic-parallels-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, scenario] of scenarios.entries()) {
    it(scenario.name, async () => {
      const image = tmp.path(`s${index}.parallels`);
      qemuCreate(image, 'parallels', scenario.size, scenario.o ? { o: scenario.o } : {});
      qemuIo(image, 'parallels', scenario.commands);
      const reference = tmp.path(`s${index}.raw`);
      qemuConvert(image, 'parallels', reference, 'raw');
      const info = qemuInfo(image, 'parallels');
      await withImage(image, async (parallels) => {
        const ours = parallels.info();
        expect(ours.virtualSize).toBe(info['virtual-size']);
        // qemu-img info prints no cluster size, dirty flag or format-specific data for Parallels, nor does ic.
        expect([info['cluster-size'], info['dirty-flag'], info['format-specific']]).toEqual([undefined, undefined, undefined]);
        expect([ours.clusterSize, ours.formatSpecific, ours.dirty]).toEqual([undefined, undefined, undefined]);
        const extents = await collectExtents(parallels.map());
        assertCoverage(extents, scenario.size);
        expect(await ourQemuMap(parallels)).toEqual(theirQemuMap(image));
        for (const [offset, length] of scenario.ranges ?? [[0, scenario.size]]) {
          expect(Buffer.from(await parallels.read(offset, length)).equals(Buffer.from(rawRange(reference, offset, length))), `read ${offset}+${length}`).toBe(true);
        }
        const source = await parallels.conversionSource();
        expect(source.blockers).toEqual([]);
        expect(source.options).toEqual({ virtualSize: scenario.size, clusterSize: scenario.clusterSize });
        const ranges = await metadataRangesOf(source);
        expect(ranges.map((range) => range.role)).toEqual(['Parallels header', 'Parallels BAT']);
      });
      await expectSameVerdict(image);
    });
  }

  describe('check() on damaged images: the same verdict and counters as qemu-img check', () => {
    let base = '';
    const variant = (name: string, damage: (path: string) => void): string => {
      const path = tmp.path(name);
      copyFileSync(base, path);
      damage(path);
      return path;
    };
    beforeAll(() => {
      base = tmp.path('base.parallels');
      qemuCreate(base, 'parallels', 64 * MiB, { o: 'cluster_size=64k' });
      // BAT entries 0, 16, 17 and 160 -> host clusters 1, 2, 3, 4 (the BAT fits in cluster 0).
      qemuIo(base, 'parallels', ['write -P 1 0 64k', 'write -P 2 1M 128k', 'write -P 3 10M 4k']);
    });

    it('clean', async () => {
      const report = await expectSameVerdict(base);
      expect(report.allocatedClusters).toBe(4);
    });
    it('not closed cleanly (inuse): one corruption, and conversion is blocked', async () => {
      const path = variant('inuse.parallels', (p) => pokeU32(p, 44, INUSE_MAGIC));
      expect((await expectSameVerdict(path)).corruptions).toBe(1);
      await withImage(path, async (image) => {
        expect(image.inUse).toBe(true);
        expect((await image.conversionSource()).blockers.map((b) => b.feature)).toEqual(['image in use']);
      });
    });
    it('truncated: clusters past the end are corruptions; the last one cut in half is not', async () => {
      const path = variant('truncated.parallels', (p) => truncateSync(p, 3 * 65536 + 100));
      expect((await expectSameVerdict(path)).corruptions).toBe(1);
      await withImage(path, async (image) => {
        const source = await image.conversionSource();
        await expect(collectExtents(source.map!())).rejects.toMatchObject({ code: 'CORRUPT' });
      });
    });
    it('space after the last cluster is leaked, counted in clusters', async () => {
      const path = variant('tail.parallels', (p) => truncateSync(p, statSync(p).size + 3 * 65536 + 10));
      expect((await expectSameVerdict(path)).leaks).toBe(4);
    });
    it('a hole between clusters (an entry cleared) is no leak for qemu 7.2: only the space past the last cluster is', async () => {
      const path = variant('hole.parallels', (p) => pokeU32(p, 64 + 4 * 16, 0));
      expect(await expectSameVerdict(path)).toMatchObject({ corruptions: 0, leaks: 0, allocatedClusters: 3 });
    });
    it('a BAT entry far past the end of the file', async () => {
      const path = variant('far.parallels', (p) => pokeU32(p, 64 + 4 * 500, 0x7fffffff));
      expect((await expectSameVerdict(path)).corruptions).toBe(1);
    });
    it('two entries naming one cluster: qemu 7.2 does not see it (fragmented), the conversion refuses it', async () => {
      const path = variant('dup.parallels', (p) => pokeU32(p, 64 + 4 * 300, 2));
      expect((await expectSameVerdict(path)).corruptions).toBe(0);
      const before = sha256File(path);
      await withImage(path, async (image, io) => {
        await expect(convertInPlace({ io, source: parallelsDriver, target: parallelsDriver, dryRun: true })).rejects.toMatchObject({ code: 'CORRUPT' });
        expect(image.format).toBe('parallels');
      });
      expect(sha256File(path)).toBe(before);
    });
    it('an empty image whose BAT spans more than one cluster: qemu 7.2 counts leaks, as for its own images', async () => {
      const path = tmp.path('empty-big-bat.parallels');
      qemuCreate(path, 'parallels', GiB, { o: 'cluster_size=64k' });
      expect((await expectSameVerdict(path)).leaks).toBe(1);
    });
  });
});
