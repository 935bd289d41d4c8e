import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents } from '@ic/core';
import { metadataRangesOf } from '@ic/conformance';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { fileRange, ourQemuMap, theirQemuMap, withImage } from './helpers.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

interface Scenario {
  name: string;
  size: number;
  o?: string;
  commands: string[];
  /** Ranges to read; undefined = the whole disk. */
  ranges?: [number, number][];
}

const scenarios: Scenario[] = [
  {
    name: 'dynamic 1 GiB: unaligned writes, a zero write, several block positions, the last block',
    size: GiB,
    commands: ['write -P 0x11 1000 5000', 'write -P 0x22 5M 4k', 'write -z 8M 1M', 'write -P 0x33 3M 1536k', `write -P 0x44 ${GiB - 4 * KiB} 4k`, 'write -P 0x55 0 512'],
    ranges: [
      [0, 12 * MiB],
      [GiB - 2 * MiB, 2 * MiB],
      [512 * MiB - 3000, 9000],
    ],
  },
  { name: 'dynamic, odd size (rounded up to a sector)', size: 10 * MiB + 1001, commands: ['write -P 0x61 0 64k', `write -P 0x62 ${10 * MiB} 1024`] },
  { name: 'dynamic, empty', size: 64 * MiB, commands: [] },
  { name: 'dynamic, blocks written in reverse order', size: 32 * MiB, commands: ['write -P 0x71 30M 1M', 'write -P 0x72 20M 1M', 'write -P 0x73 10M 1M', 'write -P 0x74 0 1M'] },
  { name: 'static 20 MiB (every block allocated, a sparse file)', size: 20 * MiB, o: 'static=on', commands: ['write -P 0x81 3M 4k', 'write -P 0x82 7M 1M', `write -P 0x83 ${20 * MiB - 512} 512`] },
  { name: 'static, size not a block multiple', size: 5 * MiB + 512, o: 'static=on', commands: ['write -P 0x91 5M 512'] },
  {
    name: 'dynamic 5 GiB: a 20 KiB block map, data from 0x5200',
    size: 5 * GiB,
    commands: ['write -P 0xa1 0 64k', `write -P 0xa2 ${4 * GiB} 1M`, `write -z ${2 * GiB} 64k`],
    ranges: [
      [0, MiB],
      [2 * GiB, MiB],
      [4 * GiB - 4096, MiB + 8192],
    ],
  },
];

describe('VDI images made by qemu-img: info, map, read agree with qemu', () => {
  const tmp = tempDir('ic-vdi-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, scenario] of scenarios.entries()) {
    it(scenario.name, async () => {
      const image = tmp.path(`s${index}.vdi`);
      qemuCreate(image, 'vdi', scenario.size, scenario.o ? { o: scenario.o } : {});
      if (scenario.commands.length > 0) qemuIo(image, 'vdi', scenario.commands);
      const reference = tmp.path(`s${index}.raw`);
      qemuConvert(image, 'vdi', reference, 'raw');
      const info = qemuInfo(image, 'vdi');

      await withImage(image, async (vdi) => {
        const ours = vdi.info();
        expect(ours.virtualSize).toBe(info['virtual-size']);
        expect(ours.clusterSize).toBe(info['cluster-size']);
        expect(ours.dirty).toBe(info['dirty-flag']);
        expect(info['format-specific']).toBeUndefined();
        expect(ours.formatSpecific).toBeUndefined();

        const extents = await collectExtents(vdi.map());
        assertCoverage(extents, info['virtual-size']);
        expect(await ourQemuMap(vdi)).toEqual(theirQemuMap(image));

        for (const [offset, length] of scenario.ranges ?? [[0, info['virtual-size']]]) {
          const bytes = await vdi.read(offset, length);
          expect(Buffer.from(bytes).equals(Buffer.from(fileRange(reference, offset, length))), `read ${offset}+${length}`).toBe(true);
        }

        const source = await vdi.conversionSource();
        expect(source.blockers).toEqual([]);
        expect(source.options).toEqual({ virtualSize: info['virtual-size'], clusterSize: MiB });
        const ranges = await metadataRangesOf(source);
        expect(ranges[0]).toEqual({ offset: 0, length: 512, kind: 'header', role: 'VDI header' });
        expect(ranges[1]).toMatchObject({ offset: 512, kind: 'metadata', role: 'VDI block map' });
        for (const extent of extents) {
          if (extent.kind !== 'data') continue;
          for (const range of ranges) expect(extent.hostOffset + extent.length <= range.offset || range.offset + range.length <= extent.hostOffset).toBe(true);
        }
      });
    });
  }
});
