import { metadataRangesOf, runTargetBuild } from '@ic/conformance';
import { closeSync, copyFileSync, ftruncateSync, openSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alignUp, collectExtents, mergeExtents, type Extent, type SpaceAllocator, type TargetRequest } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { qedDriver } from '../src/index.js';
import { fittingTableSize } from '../src/target.js';
import { qemuCheckJson, withImage } from './helpers.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** The engine's simplest allocator: bump from `start`, aligned. */
function bumpAllocator(start: number, defaultAlignment: number): SpaceAllocator {
  let end = start;
  return {
    allocate(length: number, alignment = defaultAlignment): number {
      const at = alignUp(end, alignment);
      end = at + length;
      return at;
    },
    get end() {
      return end;
    },
  };
}

interface PlannedCluster {
  guestCluster: number;
  kind: 'data' | 'zero';
  /** Host cluster index for data. Cases use every host cluster from 1 up, so nothing leaks. */
  hostCluster?: number;
}

interface TargetCase {
  name: string;
  clusterSize: number;
  tableSize?: number;
  virtualSize: number;
  clusters: PlannedCluster[];
  /** Bytes of a raw backing file (also the expected content of unallocated ranges). */
  backing?: Uint8Array;
  /** Clusters of junk the "old source" leaves in the file, unreferenced after the commit. */
  junkClusters?: number[];
}

/** The content a data cluster holds in these tests: distinct per guest cluster and byte. */
function clusterContent(guestCluster: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (guestCluster * 31 + (i >> 9) + 1) & 0xff || 1;
  return out;
}

/** Simulates the engine: data already in the file, then build(), writes, extend, header, zero the rest of the header region. */
async function runTarget(dir: (name: string) => string, testCase: TargetCase) {
  const { clusterSize, virtualSize } = testCase;
  const imagePath = dir(`${testCase.name}.qed`);
  const expectedPath = dir(`${testCase.name}.raw`);
  const request: TargetRequest = {
    source: {
      virtualSize,
      clusterSize,
      ...(testCase.backing ? { backing: { name: 'base.raw', format: 'raw' } } : {}),
    },
    clusterSize,
    options: testCase.tableSize ? { table_size: testCase.tableSize } : {},
  };
  const target = qedDriver.inPlace!.create(request);
  expect(target.problems).toEqual([]);
  expect(target.layout).toMatchObject({ clusterSize, headerRegionSize: clusterSize, maxHostOffset: Number.MAX_SAFE_INTEGER, zeroExtents: true, unreferencedClustersLeak: true });

  // The file as the engine leaves it before build: junk in the header region (the old header), data clusters in place.
  const image = openSync(imagePath, 'w+');
  const expected = openSync(expectedPath, 'w+');
  try {
    ftruncateSync(expected, virtualSize);
    if (testCase.backing) writeSync(expected, testCase.backing, 0, testCase.backing.length, 0);
    writeSync(image, new Uint8Array(clusterSize).fill(0xee), 0, clusterSize, 0);
    let dataEnd = clusterSize;
    for (const junk of testCase.junkClusters ?? []) {
      writeSync(image, new Uint8Array(clusterSize).fill(0xcc), 0, clusterSize, junk * clusterSize);
      dataEnd = Math.max(dataEnd, (junk + 1) * clusterSize);
    }
    const mapping: Extent[] = [];
    let guest = 0;
    for (const planned of [...testCase.clusters].sort((a, b) => a.guestCluster - b.guestCluster)) {
      const guestOffset = planned.guestCluster * clusterSize;
      const length = Math.min(clusterSize, virtualSize - guestOffset);
      if (guestOffset > guest) mapping.push({ kind: 'unallocated', guestOffset: guest, length: guestOffset - guest });
      if (planned.kind === 'data') {
        const hostOffset = planned.hostCluster! * clusterSize;
        const content = clusterContent(planned.guestCluster, clusterSize);
        writeSync(image, content, 0, clusterSize, hostOffset);
        writeSync(expected, content, 0, length, guestOffset);
        dataEnd = Math.max(dataEnd, hostOffset + clusterSize);
        mapping.push({ kind: 'data', guestOffset, length, hostOffset });
      } else {
        writeSync(expected, new Uint8Array(length), 0, length, guestOffset);
        mapping.push({ kind: 'zero', guestOffset, length });
      }
      guest = guestOffset + length;
    }
    if (guest < virtualSize) mapping.push({ kind: 'unallocated', guestOffset: guest, length: virtualSize - guest });

    const space = bumpAllocator(dataEnd, clusterSize);
    const build = await runTargetBuild(target, mapping, space);
    expect(build.fileSize % clusterSize).toBe(0);
    expect(build.fileSize).toBeGreaterThanOrEqual(space.end);
    expect(build.header.length).toBeLessThanOrEqual(512);
    for (const write of build.writes) {
      expect(write.offset).toBeGreaterThanOrEqual(dataEnd);
      expect(write.offset + write.data.length).toBeLessThanOrEqual(space.end);
      writeSync(image, write.data, 0, write.data.length, write.offset);
    }
    ftruncateSync(image, build.fileSize);
    writeSync(image, build.header, 0, build.header.length, 0);
    writeSync(image, new Uint8Array(clusterSize - build.header.length), 0, clusterSize - build.header.length, build.header.length);
    return { imagePath, expectedPath, mapping: mergeExtents(mapping), build };
  } finally {
    closeSync(image);
    closeSync(expected);
  }
}

describe('in-place target: build() around data already in the file', () => {
  const tmp = tempDir('ic-qed-target-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: TargetCase[] = [
    {
      name: 'c64k-multi-l2',
      clusterSize: 64 * KiB,
      virtualSize: 5 * GiB,
      clusters: [
        { guestCluster: 0, kind: 'data', hostCluster: 3 },
        { guestCluster: 1, kind: 'data', hostCluster: 4 },
        { guestCluster: 2, kind: 'zero' },
        { guestCluster: 40, kind: 'data', hostCluster: 2 },
        { guestCluster: (2 * GiB) / (64 * KiB) + 5, kind: 'data', hostCluster: 1 },
        { guestCluster: (4 * GiB) / (64 * KiB), kind: 'zero' },
        { guestCluster: (5 * GiB) / (64 * KiB) - 1, kind: 'data', hostCluster: 5 },
      ],
    },
    {
      name: 'c4k-ts2-partial-last',
      clusterSize: 4 * KiB,
      tableSize: 2,
      virtualSize: 20 * MiB + 512,
      clusters: [
        { guestCluster: 0, kind: 'data', hostCluster: 5 },
        { guestCluster: 1, kind: 'zero' },
        { guestCluster: 2, kind: 'zero' },
        { guestCluster: 1023, kind: 'data', hostCluster: 2 },
        { guestCluster: 1024, kind: 'data', hostCluster: 1 },
        { guestCluster: 3000, kind: 'data', hostCluster: 3 },
        { guestCluster: (20 * MiB) / (4 * KiB), kind: 'data', hostCluster: 4 },
      ],
    },
    {
      name: 'c16k-ts8',
      clusterSize: 16 * KiB,
      tableSize: 8,
      virtualSize: 64 * MiB,
      // 32 data clusters on host clusters 1..32 in reverse guest order, every fifth guest cluster zero.
      clusters: Array.from({ length: 40 }, (_, i) =>
        i % 5 === 4 ? { guestCluster: i * 97, kind: 'zero' as const } : { guestCluster: i * 97, kind: 'data' as const, hostCluster: 32 - (i - Math.floor(i / 5)) },
      ),
    },
  ];

  for (const testCase of cases) {
    it(`${testCase.name}: qemu-img check clean, compare identical, map as planned`, async () => {
      const { imagePath, expectedPath, mapping } = await runTarget(tmp.path, testCase);
      const check = qemuCheck(imagePath, 'qed');
      expect(check.code, check.text).toBe(0);
      const compare = qemuCompare(imagePath, 'qed', expectedPath, 'raw');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      await withImage(imagePath, async (image) => {
        expect(await collectExtents(image.map())).toEqual(mapping);
        expect((await image.check()).corruptions + (await image.check()).leaks).toBe(0);
        expect(image.info().clusterSize).toBe(testCase.clusterSize);
        expect(image.needCheck).toBe(false);
      });
    });
  }

  it('raw backing: name in the header, NO_PROBE, zero clusters hide the backing file', async () => {
    const clusterSize = 64 * KiB;
    const backing = new Uint8Array(4 * MiB);
    for (let i = 0; i < backing.length; i++) backing[i] = ((i >> 8) * 13 + 5) & 0xff;
    writeFileSync(tmp.path('base.raw'), backing);
    const testCase: TargetCase = {
      name: 'raw-backing',
      clusterSize,
      virtualSize: 4 * MiB,
      backing,
      clusters: [
        { guestCluster: 0, kind: 'data', hostCluster: 2 },
        { guestCluster: 3, kind: 'zero' },
        { guestCluster: 4, kind: 'zero' },
        { guestCluster: 10, kind: 'data', hostCluster: 1 },
      ],
    };
    const { imagePath, expectedPath, build } = await runTarget(tmp.path, testCase);
    expect(new TextDecoder().decode(build.header.subarray(64))).toBe('base.raw');
    const info = qemuInfo(imagePath, 'qed');
    expect(info['backing-filename']).toBe('base.raw');
    expect(info['backing-filename-format']).toBe('raw');
    expect(qemuCheck(imagePath, 'qed').code).toBe(0);
    const compare = qemuCompare(imagePath, 'qed', expectedPath, 'raw');
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
    // qemu can keep writing to the result.
    qemuIo(imagePath, 'qed', ['write -P 0x77 2M 64k']);
    expect(qemuCheck(imagePath, 'qed').code).toBe(0);
  });

  it('old source metadata left in the file becomes leaks (qemu-img check exit 3), and check() agrees', async () => {
    const { imagePath, expectedPath } = await runTarget(tmp.path, {
      name: 'leaky',
      clusterSize: 64 * KiB,
      virtualSize: 16 * MiB,
      junkClusters: [1, 2, 5],
      clusters: [
        { guestCluster: 0, kind: 'data', hostCluster: 3 },
        { guestCluster: 9, kind: 'data', hostCluster: 4 },
      ],
    });
    const qemu = qemuCheckJson(imagePath);
    expect(qemu.code).toBe(3);
    expect(qemu.json['leaks']).toBe(3);
    expect(qemuCompare(imagePath, 'qed', expectedPath, 'raw').code).toBe(0);
    await withImage(imagePath, async (image) => {
      const report = await image.check();
      expect([report.corruptions, report.leaks]).toEqual([0, 3]);
    });
  });

  it('a qemu-made QED image rebuilt in place from its own conversionSource and map: old tables become leaks', async () => {
    const source = tmp.path('rebuild.qed');
    qemuCreate(source, 'qed', 5 * GiB);
    qemuIo(source, 'qed', ['write -P 0x31 0 100k', `write -z ${GiB} 128k`, `write -P 0x32 ${3 * GiB} 64k`]);
    const pristine = tmp.path('rebuild-pristine.qed');
    copyFileSync(source, pristine);
    const io = await FileIO.open(source, { writable: true, lock: true });
    try {
      const image = await qedDriver.open(io);
      const conversion = await image.conversionSource!();
      expect(conversion.blockers).toEqual([]);
      const mapping = await collectExtents(image.map());
      const target = qedDriver.inPlace!.create({ source: conversion.options, clusterSize: conversion.options.clusterSize, options: {} });
      const space = bumpAllocator(alignUp(statSync(source).size, conversion.options.clusterSize), conversion.options.clusterSize);
      const build = await runTargetBuild(target, mapping, space);
      // Nothing is written over what the source still references before the commit.
      for (const write of build.writes) {
        for (const range of await metadataRangesOf(conversion)) {
          expect(write.offset + write.data.length <= range.offset || range.offset + range.length <= write.offset).toBe(true);
        }
      }
      for (const write of build.writes) await io.write(write.offset, write.data);
      await io.truncate(build.fileSize);
      await io.write(0, build.header);
      await io.write(build.header.length, new Uint8Array(64 * KiB - build.header.length));
      await io.flush();
    } finally {
      await io.close();
    }
    // The old L1 (4 clusters) and the two old L2 tables (4 clusters each) are now unreferenced.
    const qemu = qemuCheckJson(source);
    expect([qemu.code, qemu.json['leaks'], qemu.json['corruptions'] ?? 0]).toEqual([3, 12, 0]);
    expect(qemuCompare(source, 'qed', pristine, 'qed').code).toBe(0);
    const reference = tmp.path('rebuild.raw');
    qemuConvert(pristine, 'qed', reference, 'raw');
    expect(qemuCompare(source, 'qed', reference, 'raw').code).toBe(0);
    await withImage(source, async (image) => {
      const report = await image.check();
      expect([report.corruptions, report.leaks]).toEqual([0, 12]);
    });
  });

  it('problems: size beyond the geometry, odd size, backing names that do not fit', () => {
    const problems = (source: TargetRequest['source'], clusterSize = 64 * KiB, options = {}) =>
      qedDriver.inPlace!.create({ source, clusterSize, options }).problems;
    const base = { virtualSize: GiB, clusterSize: 64 * KiB };
    expect(problems(base)).toEqual([]);
    // 4 KiB clusters, table_size 4: (4*4096/8)^2 * 4096 = 16 GiB at most; unasked, the target takes a larger
    // table_size (16 reaches 256 GiB), so 4 KiB stays a candidate; asked for 4, it says why it cannot.
    expect(problems({ ...base, virtualSize: 32 * GiB }, 4 * KiB, { table_size: 4 })).toEqual([expect.stringMatching(/exceeds the 17179869184 bytes/)]);
    expect(problems({ ...base, virtualSize: 32 * GiB }, 4 * KiB, { table_size: 8 })).toEqual([]);
    expect(problems({ ...base, virtualSize: 32 * GiB }, 4 * KiB)).toEqual([]);
    expect(problems({ ...base, virtualSize: 256 * GiB }, 4 * KiB)).toEqual([]);
    expect(problems({ ...base, virtualSize: 512 * GiB }, 4 * KiB)).toEqual([expect.stringMatching(/exceeds/)]);
    expect([fittingTableSize(4 * KiB, 16 * GiB), fittingTableSize(4 * KiB, 17 * GiB), fittingTableSize(4 * KiB, 64 * GiB), fittingTableSize(4 * KiB, 65 * GiB), fittingTableSize(64 * KiB, 64 * GiB), fittingTableSize(4 * MiB, GiB)]).toEqual([4, 8, 8, 16, 4, 2]);
    expect(problems({ ...base, virtualSize: GiB + 100 })).toEqual([expect.stringMatching(/multiple of 512/)]);
    expect(problems({ ...base, backing: { name: 'n'.repeat(4096) } })).toEqual([expect.stringMatching(/shorter than 4096/)]);
    expect(problems({ ...base, backing: { name: 'n'.repeat(4033) } }, 4 * KiB)).toEqual([expect.stringMatching(/does not fit/)]);
    expect(problems({ ...base, backing: { name: 'n'.repeat(4032) } }, 4 * KiB)).toEqual([]);
    // qemu 7.2's size arithmetic wraps at 4 MiB clusters with table_size 4: refused up front, naming the way out.
    expect(problems({ ...base, virtualSize: GiB, clusterSize: 4 * MiB }, 4 * MiB, { table_size: 4 })).toEqual([expect.stringMatching(/overflows 64 bits.*use table_size=2$/)]);
    expect(problems({ ...base, virtualSize: GiB, clusterSize: 4 * MiB }, 4 * MiB)).toEqual([]);
    expect(problems({ ...base, virtualSize: GiB, clusterSize: 4 * MiB }, 4 * MiB, { table_size: 2 })).toEqual([]);
    expect(problems({ ...base, virtualSize: GiB, clusterSize: 2 * MiB }, 2 * MiB, { table_size: 16 })).toEqual([expect.stringMatching(/overflows 64 bits.*use table_size=2$/)]);
    // Advertised: what qemu can use for a non-empty image (4 MiB with table_size=2; 8 to 64 MiB never).
    expect(qedDriver.inPlace!.clusterSizes).toEqual({ min: 4096, max: 4 * MiB });
  });

  it('a mapping that breaks the contract is refused (INTERNAL), not built', async () => {
    const target = qedDriver.inPlace!.create({ source: { virtualSize: MiB, clusterSize: 4096 }, clusterSize: 4096, options: {} });
    const bad: Extent[][] = [
      [{ kind: 'data', guestOffset: 0, length: MiB, hostOffset: 0 }], // inside the header region
      [{ kind: 'data', guestOffset: 0, length: MiB, hostOffset: 4096 + 512 }], // unaligned
      [{ kind: 'unallocated', guestOffset: 0, length: MiB - 4096 }], // short
      [{ kind: 'compressed', guestOffset: 0, length: MiB }],
      // (Two data extents sharing a host cluster are refused by the engine before any target sees them.)
    ];
    for (const mapping of bad) {
      await expect(runTargetBuild(target, mapping, bumpAllocator(4 * MiB, 4096))).rejects.toMatchObject({ code: 'INTERNAL' });
    }
  });
});
