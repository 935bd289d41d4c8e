import { metadataRangesOf } from '@ic/conformance';
import { readFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertCoverage, collectExtents, type Image, type ImageInfo } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qedDriver } from '../src/index.js';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { ourQemuMap, rawRange, theirQemuMap, withImage } from './helpers.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const KiB = 1024;

/** A scenario: how to make the image, and which guest ranges to compare byte for byte. */
interface Scenario {
  name: string;
  size: number;
  o?: string;
  backing?: { file: string; format: 'raw' | 'qcow2' };
  commands: string[];
  /** Ranges to read; undefined = the whole disk. */
  ranges?: [number, number][];
}

const scenarios: Scenario[] = [
  {
    name: 'default geometry, unaligned writes, zero write, discard, last cluster',
    size: GiB,
    commands: ['write -P 0x11 1000 5000', 'write -P 0x22 200k 70k', 'write -z 1M 128k', 'write -P 0x33 2M 64k', 'discard 2M 64k', `write -P 0x44 ${GiB - 4 * KiB} 4k`],
    ranges: [
      [0, 4 * MiB],
      [GiB - MiB, MiB],
      [512 * MiB - 3000, 9000],
    ],
  },
  {
    name: 'cluster_size=4k table_size=2 (4 MiB per L2 table, many tables)',
    size: 64 * MiB,
    o: 'cluster_size=4k,table_size=2',
    commands: ['write -P 0x51 3 10000', 'write -P 0x52 4094k 8k', 'write -z 10M 40k', 'write -P 0x53 33M 1M', 'write -z 33M 4k', `write -P 0x54 ${64 * MiB - 512} 512`],
  },
  {
    name: 'writes more than 2 GiB apart (three L2 tables at the default table size)',
    size: 5 * GiB,
    commands: ['write -P 0x61 0 64k', `write -P 0x62 ${2 * GiB + 12345} 100k`, `write -z ${3 * GiB} 64k`, `write -P 0x63 ${4 * GiB + 65536} 64k`, `write -P 0x64 ${5 * GiB - 65536} 64k`],
    ranges: [
      [0, MiB],
      [2 * GiB, MiB],
      [3 * GiB - 4096, 200 * KiB],
      [4 * GiB, MiB],
      [5 * GiB - MiB, MiB],
    ],
  },
  {
    name: 'cluster_size=16k table_size=8, size not a cluster multiple',
    size: 10 * MiB + 512,
    o: 'cluster_size=16k,table_size=8',
    commands: ['write -P 0x71 0 16k', 'write -P 0x72 5M 33k', 'write -z 6M 32k', `write -P 0x73 ${10 * MiB} 512`],
  },
  {
    name: 'table_size=16, cluster_size=64k',
    size: 256 * MiB,
    o: 'table_size=16',
    commands: ['write -P 0x81 100M 300k', 'write -z 200M 64k'],
    ranges: [
      [0, MiB],
      [100 * MiB - 4096, 400 * KiB],
      [200 * MiB - 4096, 200 * KiB],
    ],
  },
];

/** A backing Image over a plain file: what the CLI would hand in after opening the backing file. */
function fileBackedImage(path: string): Image {
  const bytes = readFileSync(path);
  return {
    format: 'raw',
    info: (): ImageInfo => ({ format: 'raw', virtualSize: bytes.length, dirty: false }),
    map: async function* () {
      yield { kind: 'data', guestOffset: 0, length: bytes.length, hostOffset: 0 };
    },
    read: async (offset: number, length: number) => new Uint8Array(bytes.subarray(offset, offset + length)),
    close: async () => {},
  };
}

describe('QED images made by qemu-img: map, info, read agree with qemu', () => {
  const tmp = tempDir('ic-qed-oracle-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, scenario] of scenarios.entries()) {
    it(scenario.name, async () => {
      const image = tmp.path(`s${index}.qed`);
      qemuCreate(image, 'qed', scenario.size, scenario.o ? { o: scenario.o } : {});
      qemuIo(image, 'qed', scenario.commands);
      const reference = tmp.path(`s${index}.raw`);
      qemuConvert(image, 'qed', reference, 'raw');
      const info = qemuInfo(image, 'qed');

      await withImage(image, async (qed) => {
        const ours = qed.info();
        expect(ours.virtualSize).toBe(info['virtual-size']);
        expect(ours.clusterSize).toBe(info['cluster-size']);
        expect(ours.dirty).toBe(info['dirty-flag']);
        expect(info['format-specific']).toBeUndefined();
        expect(ours.formatSpecific).toBeUndefined();
        expect(ours.backing).toBeUndefined();

        const extents = await collectExtents(qed.map());
        assertCoverage(extents, scenario.size);
        expect(await ourQemuMap(qed)).toEqual(theirQemuMap(image));

        const ranges = scenario.ranges ?? [[0, scenario.size]];
        for (const [offset, length] of ranges) {
          const ours = await qed.read(offset, length);
          expect(Buffer.from(ours).equals(Buffer.from(rawRange(reference, offset, length))), `read ${offset}+${length}`).toBe(true);
        }
      });
    });
  }

  it('a raw backing file: NO_PROBE means format raw; unallocated reads fall through, zero clusters hide it', async () => {
    const base = tmp.path('base.raw');
    const pattern = new Uint8Array(8 * MiB);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + (i >> 12)) & 0xff;
    writeFileSync(base, pattern);
    const image = tmp.path('over-raw.qed');
    qemuCreate(image, 'qed', 8 * MiB, { backing: 'base.raw', backingFormat: 'raw', cwd: tmp.dir });
    qemuIo(image, 'qed', ['write -P 0x91 100k 10k', 'write -z 1M 64k', 'write -P 0x92 7M 4k']);
    const info = qemuInfo(image, 'qed');
    expect(info['backing-filename']).toBe('base.raw');
    expect(info['backing-filename-format']).toBe('raw');
    const reference = tmp.path('over-raw.raw');
    qemuConvert(image, 'qed', reference, 'raw');

    await withImage(
      image,
      async (qed) => {
        expect(qed.info().backing).toEqual({ name: 'base.raw', format: 'raw' });
        expect(await ourQemuMap(qed)).toEqual(theirQemuMap(image));
        const ours = await qed.read(0, 8 * MiB);
        expect(Buffer.from(ours).equals(readFileSync(reference))).toBe(true);
        // The zero cluster really masks the backing file (which is not zero there).
        expect(ours.subarray(MiB, MiB + 64 * KiB).every((byte) => byte === 0)).toBe(true);
        expect(pattern.subarray(MiB, MiB + 64 * KiB).some((byte) => byte !== 0)).toBe(true);
      },
      { backing: fileBackedImage(base) },
    );
  });

  it('a qcow2 backing file: no format recorded (qemu probes it)', async () => {
    const base = tmp.path('base.qcow2');
    qemuCreate(base, 'qcow2', 4 * MiB);
    const image = tmp.path('over-qcow2.qed');
    qemuCreate(image, 'qed', 4 * MiB, { backing: 'base.qcow2', backingFormat: 'qcow2', cwd: tmp.dir });
    const info = qemuInfo(image, 'qed');
    expect(info['backing-filename']).toBe('base.qcow2');
    expect(info['backing-filename-format']).toBeUndefined();
    await withImage(image, async (qed) => {
      expect(qed.info().backing).toEqual({ name: 'base.qcow2' });
      const source = await qed.conversionSource();
      expect(source.options.backing).toEqual({ name: 'base.qcow2' });
      expect(await metadataRangesOf(source)).toContainEqual({ offset: 64, length: 'base.qcow2'.length, kind: 'header', role: 'QED backing file name' });
    });
  });

  it('untrusted mode refuses a backing reference', async () => {
    const image = tmp.path('over-qcow2.qed');
    const io = await FileIO.open(image);
    await expect(qedDriver.open(io, { untrusted: true })).rejects.toMatchObject({ code: 'EXTERNAL_REF' });
    await io.close();
  });

  it('conversionSource lists the header, the L1 and every L2 table, and the zero extents', async () => {
    const image = tmp.path('s2.qed'); // the 5 GiB scenario: three L2 tables, a zero cluster
    await withImage(image, async (qed) => {
      const source = await qed.conversionSource();
      expect(source.blockers).toEqual([]);
      expect(source.options).toEqual({ virtualSize: 5 * GiB, clusterSize: 64 * KiB });
      const ranges = await metadataRangesOf(source);
      const tables = ranges.filter((range) => range.role?.startsWith('QED L2'));
      expect(tables).toHaveLength(3);
      for (const table of tables) expect(table.length).toBe(4 * 64 * KiB);
      expect(ranges[0]).toEqual({ offset: 0, length: 64, kind: 'header', role: 'QED header' });
      expect(ranges[1]).toEqual({ offset: 64 * KiB, length: 4 * 64 * KiB, kind: 'metadata', role: 'QED L1 table' });
      // No metadata range overlaps a data extent.
      const extents = await collectExtents(qed.map());
      for (const extent of extents) {
        if (extent.kind !== 'data') continue;
        for (const range of ranges) {
          expect(extent.hostOffset + extent.length <= range.offset || range.offset + range.length <= extent.hostOffset).toBe(true);
        }
      }
    });
  });
});
