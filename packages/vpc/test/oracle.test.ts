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
  ranges?: [number, number][];
}

const scenarios: Scenario[] = [
  {
    name: 'dynamic 1 GiB (CHS-rounded to 1073995776): unaligned writes, a zero write, several block positions, the last block',
    size: GiB,
    commands: ['write -P 0x11 1000 5000', 'write -P 0x22 5M 4k', 'write -z 8M 1M', 'write -P 0x33 3M 3M', `write -P 0x44 ${1073995776 - 4 * KiB} 4k`, 'write -P 0x55 0 512'],
    ranges: [
      [0, 12 * MiB],
      [1073995776 - 3 * MiB, 3 * MiB],
      [512 * MiB - 3000, 9000],
    ],
  },
  { name: 'dynamic, force_size (exact 100 MiB, creator qem2)', size: 100 * MiB, o: 'force_size=on', commands: ['write -P 0x61 0 64k', `write -P 0x62 ${100 * MiB - 512} 512`] },
  { name: 'dynamic, odd size', size: 10 * MiB + 1001, commands: ['write -P 0x63 2M 64k'] },
  { name: 'dynamic, empty', size: 64 * MiB, commands: [] },
  { name: 'dynamic, blocks written in reverse order', size: 32 * MiB, commands: ['write -P 0x71 30M 1M', 'write -P 0x72 20M 1M', 'write -P 0x73 10M 1M', 'write -P 0x74 0 1M'] },
  { name: 'fixed 20 MiB (CHS-rounded), sparse', size: 20 * MiB, o: 'subformat=fixed', commands: ['write -P 0x81 3M 4k', 'write -P 0x82 7M 1M', 'write -P 0x83 20M 512'] },
  { name: 'fixed, force_size, odd size', size: 5 * MiB + 1001, o: 'subformat=fixed,force_size=on', commands: ['write -P 0x91 5M 512'] },
  {
    name: 'dynamic 5 GiB: a 10 KiB BAT, data from 0x3200',
    size: 5 * GiB,
    commands: ['write -P 0xa1 0 64k', `write -P 0xa2 ${4 * GiB} 1M`, `write -z ${2 * GiB} 64k`],
    ranges: [
      [0, MiB],
      [2 * GiB, MiB],
      [4 * GiB - 4096, MiB + 8192],
    ],
  },
];

describe('VHD images made by qemu-img: info, map, read agree with qemu', () => {
  const tmp = tempDir('ic-vpc-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, scenario] of scenarios.entries()) {
    it(scenario.name, async () => {
      const image = tmp.path(`s${index}.vhd`);
      qemuCreate(image, 'vpc', scenario.size, scenario.o ? { o: scenario.o } : {});
      if (scenario.commands.length > 0) qemuIo(image, 'vpc', scenario.commands);
      const reference = tmp.path(`s${index}.raw`);
      qemuConvert(image, 'vpc', reference, 'raw');
      const info = qemuInfo(image, 'vpc');
      const fixed = scenario.o?.includes('fixed') ?? false;

      await withImage(image, async (vhd) => {
        const ours = vhd.info();
        expect(ours.virtualSize).toBe(info['virtual-size']);
        expect(ours.clusterSize).toBe(info['cluster-size']);
        expect(ours.clusterSize).toBe(fixed ? undefined : 2 * MiB);
        expect(ours.dirty).toBe(info['dirty-flag']);
        expect(info['format-specific']).toBeUndefined();
        expect(vhd.layout.kind).toBe(fixed ? 'fixed' : 'dynamic');

        const extents = await collectExtents(vhd.map());
        assertCoverage(extents, info['virtual-size']);
        expect(await ourQemuMap(vhd)).toEqual(theirQemuMap(image));

        for (const [offset, length] of scenario.ranges ?? [[0, info['virtual-size']]]) {
          const bytes = await vhd.read(offset, length);
          expect(Buffer.from(bytes).equals(Buffer.from(fileRange(reference, offset, length))), `read ${offset}+${length}`).toBe(true);
        }

        const source = await vhd.conversionSource();
        expect(source.blockers).toEqual([]);
        expect(source.options.virtualSize).toBe(info['virtual-size']);
        const ranges = await metadataRangesOf(source);
        if (fixed) {
          expect(ranges).toEqual([{ offset: info['virtual-size'], length: 512, kind: 'header', role: 'VHD footer' }]);
          expect(source.zeroHostRangesReadAsZero).toBe(true);
        } else {
          expect(ranges.slice(0, 3).map((r) => [r.offset, r.role])).toEqual([
            [0, 'VHD footer copy'],
            [512, 'VHD dynamic disk header'],
            [1536, 'VHD block allocation table'],
          ]);
          expect(ranges.filter((r) => r.role === 'VHD footer')).toHaveLength(1);
          const bitmaps = ranges.filter((r) => r.role === 'VHD block bitmap');
          expect(bitmaps.length).toBe(new Set(extents.filter((e) => e.kind === 'data').flatMap((e) => [...Array(Math.ceil(e.length / (2 * MiB))).keys()].map((k) => e.guestOffset + k * 2 * MiB))).size);
          for (const extent of extents) {
            if (extent.kind !== 'data') continue;
            for (const range of ranges) expect(extent.hostOffset + extent.length <= range.offset || range.offset + range.length <= extent.hostOffset).toBe(true);
          }
        }
      });
    });
  }
});
