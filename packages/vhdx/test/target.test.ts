/**
 * The in-place target's build(), run the way the engine runs it (runTargetBuild), around data already in a file;
 * the header section written last, as the commit would. Judged by qemu: check, compare, and read-write use
 * (qemu-io writes through the log) with nothing to replay.
 */
import { copyFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runTargetBuild } from '@ic/conformance';
import { alignUp, collectExtents, type Extent, type SpaceAllocator } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { icCli, qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, requireBuiltIc, requireQemu, run, tempDir } from '@ic/test-utils';
import { vhdxInPlace, HEADER_SECTION_SIZE } from '../src/index.js';
import { qemuCheckJson, withImage } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

function bumpAllocator(start: number): SpaceAllocator & { owns(offset: number, length: number): boolean } {
  let end = start;
  const given: [number, number][] = [];
  return {
    allocate(length: number, alignment = MiB): number {
      const at = alignUp(end, alignment);
      end = at + length;
      given.push([at, end]);
      return at;
    },
    get end() {
      return end;
    },
    owns: (offset, length) => given.some(([from, to]) => offset >= from && offset + length <= to),
  };
}

/** Builds a VHDX around `mapping` in the file at `path` (data already in place) and commits its header section. */
async function buildInPlace(path: string, virtualSize: number, blockSize: number, mapping: Extent[]): Promise<{ metadataBytes: number; headerBytes: number }> {
  const target = vhdxInPlace.create({ source: { virtualSize, clusterSize: blockSize }, clusterSize: blockSize, options: {} });
  expect(target.problems).toEqual([]);
  expect(target.layout).toMatchObject({ clusterSize: blockSize, hostAlignment: MiB, headerRegionSize: HEADER_SECTION_SIZE, zeroExtents: false });
  const space = bumpAllocator(alignUp(statSync(path).size, MiB));
  const io = await FileIO.open(path, { writable: true, lock: true });
  try {
    const build = await runTargetBuild(target, mapping, space, io);
    await io.truncate(build.fileSize);
    const region = new Uint8Array(HEADER_SECTION_SIZE);
    region.set(build.header);
    await io.write(0, region);
    await io.flush();
    return { metadataBytes: build.metadataBytes, headerBytes: build.header.length };
  } finally {
    await io.close();
  }
}

/** A map from `ic map --output=json` (qemu-img's rows) as extents. */
function mapOf(path: string, format: string): Extent[] {
  const result = icCli(['map', '-f', format, '--output=json', path]);
  expect(result.status, result.stderr).toBe(0);
  const rows = JSON.parse(result.stdout) as { start: number; length: number; zero: boolean; data: boolean; present: boolean; offset?: number }[];
  return rows.map((row): Extent => {
    if (row.data && row.offset !== undefined) return { kind: 'data', guestOffset: row.start, length: row.length, hostOffset: row.offset };
    if (row.present && row.zero) return { kind: 'zero', guestOffset: row.start, length: row.length };
    return { kind: 'unallocated', guestOffset: row.start, length: row.length };
  });
}

/** qemu finds the image clean, identical to `expected`, writes into it without replaying anything, and stays clean. */
function expectUsable(path: string, expected: string, size: number): void {
  const check = qemuCheckJson(path);
  expect([check.code, check.json?.['corruptions-fixed'] ?? 0], check.stderr).toEqual([0, 0]);
  expect(qemuCompare(path, 'vhdx', expected, 'raw').code).toBe(0);
  const writes = [`write -P 0xd1 ${size - 3 * MiB} 2M`, 'write -P 0xd2 1000 3000', `write -P 0xd3 ${Math.floor(size / 2)} 100k`];
  qemuIo(path, 'vhdx', writes);
  qemuIo(expected, 'raw', writes);
  const after = qemuCheckJson(path);
  expect([after.code, after.json?.['corruptions-fixed'] ?? 0]).toEqual([0, 0]);
  expect(qemuCompare(path, 'vhdx', expected, 'raw').code).toBe(0);
}

describe('VHDX in-place target: build() around data in the file, judged by qemu', () => {
  const tmp = tempDir('ic-vhdx-target-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  for (const blockSize of [MiB, 32 * MiB]) {
    it(`a qemu-made VHDX rebuilt from its own map with ${blockSize / MiB} MiB blocks: the old metadata is left unreferenced`, async () => {
      const image = tmp.path(`rebuild-${blockSize}.vhdx`);
      const size = 512 * MiB;
      qemuCreate(image, 'vhdx', size, { o: `block_size=${blockSize}` });
      qemuIo(image, 'vhdx', ['write -P 0x31 0 100k', `write -P 0x32 ${blockSize * 3 + 5000} 64k`, `write -P 0x33 ${size - 512} 512`]);
      const expected = tmp.path(`rebuild-${blockSize}.raw`);
      qemuConvert(image, 'vhdx', expected, 'raw');
      const mapping = await withImage(image, (vhdx) => collectExtents(vhdx.map()));
      const { metadataBytes } = await buildInPlace(image, size, blockSize, mapping);
      expect(metadataBytes).toBeLessThan(2 * MiB + 8192);
      await withImage(image, async (vhdx) => expect(await collectExtents(vhdx.map())).toEqual(mapping));
      expectUsable(image, expected, size);
    });
  }

  it('zero extents become "zero" blocks, unallocated ones "not present"; a partial last block', async () => {
    const image = tmp.path('zero.vhdx');
    const size = 20 * MiB + 512;
    // Data for guest blocks 0 and 20 at host 4 MiB and 5 MiB, the rest of the file holes.
    writeFileSync(image, new Uint8Array(0));
    truncateSync(image, 6 * MiB);
    qemuIo(image, 'raw', ['write -P 0x41 4M 1M', 'write -P 0x42 5M 512']);
    const expected = tmp.path('zero.raw');
    writeFileSync(expected, new Uint8Array(0));
    truncateSync(expected, size);
    qemuIo(expected, 'raw', ['write -P 0x41 0 1M', `write -P 0x42 ${20 * MiB} 512`]);
    const mapping: Extent[] = [
      { kind: 'data', guestOffset: 0, length: MiB, hostOffset: 4 * MiB },
      { kind: 'zero', guestOffset: MiB, length: 3 * MiB },
      { kind: 'unallocated', guestOffset: 4 * MiB, length: 16 * MiB },
      { kind: 'data', guestOffset: 20 * MiB, length: 512, hostOffset: 5 * MiB },
    ];
    await buildInPlace(image, size, MiB, mapping);
    await withImage(image, async (vhdx) => {
      expect(vhdx.info()).toMatchObject({ virtualSize: size, clusterSize: MiB });
      // Without a parent, "zero" and "not present" both read as zeros: the map shows them as one unallocated run.
      expect(await collectExtents(vhdx.map())).toEqual([mapping[0], { kind: 'unallocated', guestOffset: MiB, length: 19 * MiB }, mapping[3]]);
    });
    expectUsable(image, expected, size);
  });

  it('back from qcow2: a VHDX converted by ic to qcow2 becomes VHDX again around the same data', async () => {
    const image = tmp.path('round.img');
    const size = GiB;
    qemuCreate(image, 'vhdx', size, { o: 'block_size=1M' });
    qemuIo(image, 'vhdx', ['write -P 0x51 0 64k', 'write -P 0x52 300M 3M', `write -P 0x53 ${size - 4096} 4096`]);
    const expected = tmp.path('round.raw');
    qemuConvert(image, 'vhdx', expected, 'raw');
    const forward = icCli(['convert-inplace', '-o', 'cluster_size=64k', '--output=json', image, 'qcow2']);
    expect(forward.status, forward.stderr).toBe(0);
    expect(JSON.parse(forward.stdout).bytesRelocated).toBe(0);
    expect(qemuCompare(image, 'qcow2', expected, 'raw').code).toBe(0);
    // The qcow2 map, merged to 1 MiB blocks: every block is host-contiguous and 1 MiB-aligned, so nothing moves.
    const mapping = mapOf(image, 'qcow2');
    for (const extent of mapping) if (extent.kind === 'data') expect(extent.hostOffset % MiB).toBe(extent.guestOffset % MiB);
    const pristine = tmp.path('round-qcow2.img');
    copyFileSync(image, pristine);
    const blocks: Extent[] = [];
    for (const extent of mapping) {
      // qemu merges the rows; blocks are whole 1 MiB guest ranges with data at 1 MiB-aligned hosts.
      if (extent.kind === 'data') blocks.push({ ...extent });
      else blocks.push({ kind: 'unallocated', guestOffset: extent.guestOffset, length: extent.length });
    }
    await buildInPlace(image, size, MiB, blocks);
    expectUsable(image, expected, size);
    expect(run('qemu-img', ['info', '-f', 'vhdx', image]).code).toBe(0);
  });

  it('problems and refusals', () => {
    const problems = (source: { virtualSize: number; clusterSize: number; backing?: { name: string } }) => vhdxInPlace.create({ source, clusterSize: MiB, options: {} }).problems;
    expect(problems({ virtualSize: GiB, clusterSize: MiB })).toEqual([]);
    expect(problems({ virtualSize: GiB + 100, clusterSize: MiB })).toEqual([expect.stringMatching(/512-byte logical sector/)]);
    expect(problems({ virtualSize: GiB, clusterSize: MiB, backing: { name: 'base.qcow2' } })).toEqual([expect.stringMatching(/differencing/)]);
    expect(() => vhdxInPlace.create({ source: { virtualSize: GiB, clusterSize: 65536 }, clusterSize: 65536, options: {} })).toThrow(/1 MiB to 256 MiB/);
    const target = vhdxInPlace.create({ source: { virtualSize: GiB, clusterSize: MiB }, clusterSize: MiB, options: {} });
    // The log, the BAT (1 MiB for 1 GiB at 1 MiB blocks) and the metadata region, with room for alignment.
    const estimate = target.estimate({ virtualSize: GiB, clusterSize: MiB, dataClusters: 0, zeroClusters: 0, relocatedClusters: 0, tablesUsed: 0, spaceStart: 0, keptDataEnd: 0 });
    expect(estimate.metadataBytes).toBeGreaterThanOrEqual(3 * MiB);
  });
});
