import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents } from '@ic/core';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, qemuMap, requireQemu, tempDir } from '@ic/test-utils';
import { metadataRangesOf } from '@ic/conformance';
import { peekBytes, qemuCheckJson, withImage } from './helpers.js';

const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

interface Scenario {
  name: string;
  size: number;
  o?: string;
  blockSize: number;
  commands: string[];
  /** Ranges to compare byte for byte; undefined = the whole disk. */
  ranges?: [number, number][];
}

export const scenarios: Scenario[] = [
  {
    name: 'defaults (8 MiB blocks): unaligned writes, a zero write, the last sector',
    size: 256 * MiB,
    blockSize: 8 * MiB,
    commands: ['write -P 0x11 1000 5000', 'write -P 0x22 9M 70k', 'write -z 20M 1M', 'write -P 0x33 40M 64k', `write -P 0x44 ${256 * MiB - 512} 512`],
    ranges: [
      [0, 48 * MiB],
      [248 * MiB, 8 * MiB],
    ],
  },
  {
    name: 'block_size=1M, more than one chunk (sector bitmap entries interleaved after 4096 blocks)',
    size: 5 * GiB,
    o: 'block_size=1M',
    blockSize: MiB,
    commands: ['write -P 0x51 0 4k', `write -P 0x52 ${4 * GiB - 4096} 8k`, `write -P 0x53 ${4 * GiB + 3 * MiB} 1M`, `write -P 0x54 ${5 * GiB - MiB} 1M`],
    ranges: [
      [0, MiB],
      [4 * GiB - 2 * MiB, 6 * MiB],
      [5 * GiB - 2 * MiB, 2 * MiB],
    ],
  },
  {
    name: 'block_size=32M, size not a block multiple',
    size: 256 * MiB + 3 * MiB + 512,
    o: 'block_size=32M',
    blockSize: 32 * MiB,
    commands: ['write -P 0x61 31M 2M', `write -P 0x62 ${256 * MiB + 3 * MiB} 512`],
    ranges: [
      [0, 64 * MiB],
      [224 * MiB, 35 * MiB + 512],
    ],
  },
  {
    name: 'subformat=fixed block_state_zero=off: every block present from the start',
    size: 64 * MiB,
    o: 'subformat=fixed,block_state_zero=off',
    blockSize: 8 * MiB,
    commands: ['write -P 0x71 5M 1M', 'write -P 0x72 63M 1M'],
  },
  {
    name: 'subformat=fixed with qemu-img defaults: blocks "zero", the first write allocates past the preallocated data',
    size: 64 * MiB,
    o: 'subformat=fixed',
    blockSize: 8 * MiB,
    commands: ['write -P 0x81 0 4k', 'write -P 0x82 33M 100k'],
  },
];

describe('VHDX images made by qemu-img: info, map, read and check agree with qemu', () => {
  const tmp = tempDir('ic-vhdx-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, scenario] of scenarios.entries()) {
    it(scenario.name, async () => {
      const image = tmp.path(`s${index}.vhdx`);
      qemuCreate(image, 'vhdx', scenario.size, scenario.o ? { o: scenario.o } : {});
      qemuIo(image, 'vhdx', scenario.commands);
      const reference = tmp.path(`s${index}.raw`);
      qemuConvert(image, 'vhdx', reference, 'raw');
      const info = qemuInfo(image, 'vhdx');
      const theirMap = qemuMap(image, 'vhdx');
      const check = qemuCheckJson(image);

      await withImage(image, async (vhdx) => {
        const ours = vhdx.info();
        expect({ virtualSize: ours.virtualSize, clusterSize: ours.clusterSize, dirty: ours.dirty, formatSpecific: ours.formatSpecific }).toEqual({
          virtualSize: info['virtual-size'],
          clusterSize: info['cluster-size'],
          dirty: info['dirty-flag'],
          formatSpecific: info['format-specific'],
        });
        expect(ours.clusterSize).toBe(scenario.blockSize);
        // qemu's VHDX driver has no block-status: its map is the whole disk as data, with no offsets to compare.
        expect(theirMap).toEqual([{ start: 0, length: scenario.size, depth: 0, present: true, zero: false, data: true }]);
        const extents = await collectExtents(vhdx.map());
        assertCoverage(extents, scenario.size);
        // Every data extent really is where the map says: the bytes at its host offset are the guest bytes.
        for (const extent of extents) {
          if (extent.kind !== 'data') continue;
          const length = Math.min(extent.length, MiB);
          expect(same(peekBytes(image, extent.hostOffset, length), peekBytes(reference, extent.guestOffset, length))).toBe(true);
          expect(extent.hostOffset % MiB).toBe(0);
        }
        for (const [offset, length] of scenario.ranges ?? [[0, scenario.size]]) {
          const bytes = await vhdx.read(offset, length);
          expect(same(bytes, peekBytes(reference, offset, length)), `read ${offset}+${length}`).toBe(true);
        }
        const report = await vhdx.check();
        expect([check.code, report.corruptions, report.leaks, report.checkErrors]).toEqual([0, 0, 0, 0]);
        expect(check.json?.['corruptions'] ?? 0).toBe(0);
        const source = await vhdx.conversionSource();
        expect(source.blockers).toEqual([]);
        expect(source.options).toEqual({ virtualSize: scenario.size, clusterSize: scenario.blockSize });
        const ranges = await metadataRangesOf(source);
        expect(ranges.map((range) => range.role)).toEqual([
          'VHDX header section (file identifier, headers, region tables)',
          'VHDX log',
          'VHDX BAT',
          'VHDX metadata region',
        ]);
        for (const extent of extents) {
          if (extent.kind !== 'data') continue;
          for (const range of ranges) expect(extent.hostOffset + extent.length <= range.offset || range.offset + range.length <= extent.hostOffset).toBe(true);
        }
      });
    });
  }
});
