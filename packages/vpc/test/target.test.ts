import { runTargetBuild } from '@ic/conformance';
import { closeSync, copyFileSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alignUp, collectExtents, type DataExtent, type Extent, type SpaceAllocator, type TargetRequest } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { DEFAULT_BLOCK_SIZE, vpcDriver, vpcInPlace, type VpcImage } from '../src/index.js';
import { withImage } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const BS = DEFAULT_BLOCK_SIZE;

function bumpAllocator(start: number): SpaceAllocator {
  let end = start;
  return {
    allocate(length: number, alignment = 512): number {
      const at = alignUp(end, alignment);
      end = at + length;
      return at;
    },
    get end() {
      return end;
    },
  };
}

function request(virtualSize: number, options: Record<string, string | boolean> = {}, clusterSize = BS): TargetRequest {
  return { source: { virtualSize, clusterSize }, clusterSize, options };
}

function content(seed: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (seed * 37 + (i >> 9) + 5) & 0xff || 9;
  return out;
}

/** Fills gaps of a sorted list of data extents with unallocated ones, over [0, virtualSize). */
function withGaps(data: Extent[], virtualSize: number): Extent[] {
  const out: Extent[] = [];
  let guest = 0;
  for (const extent of [...data].sort((a, b) => a.guestOffset - b.guestOffset)) {
    if (extent.guestOffset > guest) out.push({ kind: 'unallocated', guestOffset: guest, length: extent.guestOffset - guest });
    out.push(extent);
    guest = extent.guestOffset + extent.length;
  }
  if (guest < virtualSize) out.push({ kind: 'unallocated', guestOffset: guest, length: virtualSize - guest });
  return out;
}

describe('VHD in-place targets: build() around data already in the file', () => {
  const tmp = tempDir('ic-vpc-target-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const dynamicCases: { name: string; size: number; blocks: number[]; clusterSize?: number; o?: Record<string, boolean> }[] = [
    { name: 'qemu size 1073995776, blocks in reverse order', size: 1073995776, blocks: [511, 200, 3, 2, 0] },
    { name: 'a size no CHS geometry reaches (creator qem2)', size: 100 * MiB + 512, blocks: [50, 0] },
    { name: 'force_size on a CHS size', size: 1073995776, blocks: [1], o: { force_size: true } },
    { name: '64 KiB blocks', size: 64 * MiB, blocks: [1023, 5, 4], clusterSize: 65536 },
    { name: 'no data', size: 16 * MiB, blocks: [] },
  ];
  for (const testCase of dynamicCases) {
    it(`dynamic, ${testCase.name}: qemu reads it, compare identical, qemu-io keeps working`, async () => {
      const clusterSize = testCase.clusterSize ?? BS;
      const target = vpcInPlace.create(request(testCase.size, testCase.o ?? {}, clusterSize));
      expect(target.problems).toEqual([]);
      const placement = target.layout.placement;
      if (placement?.kind !== 'prefixed') throw new Error('a dynamic VHD target is prefixed');
      const name = testCase.name.replace(/\W+/g, '_');
      const imagePath = tmp.path(`${name}.vhd`);
      const expectedPath = tmp.path(`${name}.raw`);
      const image = openSync(imagePath, 'w+');
      const expected = openSync(expectedPath, 'w+');
      const data: DataExtent[] = [];
      let host = 64 * 1024;
      try {
        ftruncateSync(expected, testCase.size);
        writeSync(image, new Uint8Array(64 * 1024).fill(0xee), 0, 64 * 1024, 0);
        for (const block of testCase.blocks) {
          // Each block: a stale prefix (old metadata), then its data.
          writeSync(image, new Uint8Array(placement.prefix).fill(0x5c), 0, placement.prefix, host);
          const length = Math.min(clusterSize, testCase.size - block * clusterSize);
          const bytes = content(block, clusterSize);
          writeSync(image, bytes, 0, clusterSize, host + placement.prefix);
          writeSync(expected, bytes, 0, length, block * clusterSize);
          data.push({ kind: 'data', guestOffset: block * clusterSize, length, hostOffset: host + placement.prefix });
          host += placement.prefix + clusterSize + 4096; // a gap between blocks: the old format's leftovers
        }
        const space = bumpAllocator(host);
        const build = await runTargetBuild(target, withGaps(data, testCase.size), space);
        for (const write of build.writes) {
          const isPrefix = data.some((extent) => write.offset === extent.hostOffset - placement.prefix && write.data.length === placement.prefix);
          expect(isPrefix || write.offset >= host, `write at ${write.offset}`).toBe(true);
          writeSync(image, write.data, 0, write.data.length, write.offset);
        }
        expect(build.header.length).toBe(1536);
        expect(build.fileSize).toBe(space.end);
        writeSync(image, build.header, 0, build.header.length, 0);
        ftruncateSync(image, build.fileSize);
      } finally {
        closeSync(image);
        closeSync(expected);
      }
      const bytes = readFileSync(imagePath);
      expect(bytes.subarray(0, 512).equals(bytes.subarray(bytes.length - 512))).toBe(true);
      expect(qemuInfo(imagePath, 'vpc')['virtual-size']).toBe(testCase.size);
      expect(qemuCompare(imagePath, 'vpc', expectedPath, 'raw').code).toBe(0);
      await withImage(imagePath, async (vhd: VpcImage) => {
        expect(vhd.layout.kind).toBe('dynamic');
        expect((await collectExtents(vhd.map())).filter((e) => e.kind === 'data')).toEqual(data.filter((e) => e.length > 0).sort((a, b) => a.guestOffset - b.guestOffset));
        // Every bitmap is all ones.
        for (const extent of data) expect(bytes.subarray(extent.hostOffset - 512, extent.hostOffset).every((b) => b === 0xff)).toBe(true);
      });
      const writes = [`write -P 0x61 ${testCase.size - 4096} 4096`, 'write -P 0x62 4096 4096'];
      if (testCase.blocks.length > 0) writes.push(`write -P 0x63 ${testCase.blocks[0]! * clusterSize} 512`);
      qemuIo(imagePath, 'vpc', writes);
      qemuIo(expectedPath, 'raw', writes);
      expect(qemuCompare(imagePath, 'vpc', expectedPath, 'raw').code).toBe(0);
      await withImage(imagePath, async (vhd) => expect((await collectExtents(vhd.map())).length).toBeGreaterThan(0));
    });
  }

  it('a qemu-made dynamic VHD rebuilt in place from its own map: data stays, the new BAT and footer go to the end', async () => {
    const path = tmp.path('rebuild.vhd');
    const pristine = tmp.path('rebuild-pristine.vhd');
    qemuCreate(path, 'vpc', GiB);
    qemuIo(path, 'vpc', ['write -P 0x31 300M 4k', 'write -P 0x32 0 64k', 'write -P 0x33 7M 3M']);
    copyFileSync(path, pristine);
    const io = await FileIO.open(path, { writable: true, lock: false });
    try {
      const image = await vpcDriver.open(io);
      const source = await image.conversionSource!();
      const mapping = (await collectExtents(image.map())).map((extent): Extent => (extent.kind === 'zero' ? { kind: 'unallocated', guestOffset: extent.guestOffset, length: extent.length } : extent));
      const target = vpcInPlace.create({ source: source.options, clusterSize: source.options.clusterSize, options: {} });
      const build = await runTargetBuild(target, mapping, bumpAllocator(await io.size()), io);
      await io.write(0, build.header);
      await io.truncate(build.fileSize);
      await io.flush();
    } finally {
      await io.close();
    }
    expect(qemuCompare(path, 'vpc', pristine, 'vpc').code).toBe(0);
    await withImage(path, async (vhd) => {
      const layout = vhd.layout;
      if (layout.kind !== 'dynamic') throw new Error('dynamic expected');
      expect(layout.tableOffset).toBeGreaterThanOrEqual(readFileSync(pristine).length);
    });
    qemuIo(path, 'vpc', ['write -P 0x41 800M 1M', 'write -P 0x42 300M 512']);
    qemuIo(pristine, 'vpc', ['write -P 0x41 800M 1M', 'write -P 0x42 300M 512']);
    expect(qemuCompare(path, 'vpc', pristine, 'vpc').code).toBe(0);
  });

  it('fixed: a raw file becomes a fixed VHD by one footer at the virtual size; nothing else is written', async () => {
    const size = 24 * MiB;
    const target = vpcInPlace.create(request(size, { subformat: 'fixed' }, 65536));
    expect(target.layout).toMatchObject({ headerRegionSize: 512, headerOffset: size, placement: { kind: 'identity' }, maxHostOffset: size });
    const imagePath = tmp.path('fixed.vhd');
    const expectedPath = tmp.path('fixed.raw');
    const bytes = new Uint8Array(size);
    bytes.set(content(1, MiB), 0);
    bytes.set(content(2, 65536), 10 * MiB);
    bytes.set(content(3, 512), size - 512);
    const fd = openSync(imagePath, 'w+');
    try {
      writeSync(fd, bytes, 0, size, 0);
      const mapping = withGaps(
        [
          { kind: 'data', guestOffset: 0, length: MiB, hostOffset: 0 },
          { kind: 'data', guestOffset: 10 * MiB, length: 65536, hostOffset: 10 * MiB },
          { kind: 'data', guestOffset: size - 65536, length: 65536, hostOffset: size - 65536 },
        ],
        size,
      );
      const build = await runTargetBuild(target, mapping, bumpAllocator(size));
      expect(build.writes).toEqual([]);
      expect(build.header.length).toBe(512);
      expect(build.fileSize).toBe(size + 512);
      writeSync(fd, build.header, 0, 512, size);
    } finally {
      closeSync(fd);
    }
    const raw = openSync(expectedPath, 'w');
    writeSync(raw, bytes, 0, size, 0);
    closeSync(raw);
    expect(qemuInfo(imagePath, 'vpc')['virtual-size']).toBe(size);
    expect(qemuCompare(imagePath, 'vpc', expectedPath, 'raw').code).toBe(0);
    qemuIo(imagePath, 'vpc', ['write -P 0x71 20M 64k', 'write -P 0x72 0 512']);
    qemuIo(expectedPath, 'raw', ['write -P 0x71 20M 64k', 'write -P 0x72 0 512']);
    expect(qemuCompare(imagePath, 'vpc', expectedPath, 'raw').code).toBe(0);
    await withImage(imagePath, async (vhd) => expect(vhd.layout).toMatchObject({ kind: 'fixed', virtualSize: size }));
  });

  it('a mapping that breaks the layout is refused (INTERNAL), not built', async () => {
    const dynamic = vpcInPlace.create(request(16 * MiB));
    const fixed = vpcInPlace.create(request(16 * MiB, { subformat: 'fixed' }, 65536));
    const cases: [typeof dynamic, Extent[]][] = [
      [dynamic, withGaps([{ kind: 'data', guestOffset: 0, length: BS, hostOffset: 1024 }], 16 * MiB)], // bitmap inside the header region
      [dynamic, withGaps([{ kind: 'data', guestOffset: 0, length: BS, hostOffset: 8 * MiB + 100 }], 16 * MiB)], // unaligned
      [dynamic, [{ kind: 'zero', guestOffset: 0, length: 16 * MiB }]],
      [fixed, withGaps([{ kind: 'data', guestOffset: 0, length: 65536, hostOffset: 65536 }], 16 * MiB)],
      [fixed, [{ kind: 'unallocated', guestOffset: 0, length: 8 * MiB }]],
    ];
    for (const [target, mapping] of cases) await expect(runTargetBuild(target, mapping, bumpAllocator(32 * MiB))).rejects.toMatchObject({ code: 'INTERNAL' });
    // The engine's space starts past the footer's region (rounded to the cluster size) and stays unused: the footer
    // still ends the file.
    const built = await runTargetBuild(fixed, [{ kind: 'unallocated', guestOffset: 0, length: 16 * MiB }], bumpAllocator(16 * MiB + 65536));
    expect(built.fileSize).toBe(16 * MiB + 512);
  });

  it('problems: what qemu would refuse or VHD cannot hold', () => {
    const problems = (virtualSize: number, options = {}, clusterSize = BS) => vpcInPlace.create(request(virtualSize, options, clusterSize)).problems;
    expect(problems(GiB)).toEqual([]);
    expect(problems(GiB + 100)).toEqual([expect.stringMatching(/multiple of 512/)]);
    expect(problems(2041 * GiB)).toEqual([expect.stringMatching(/2040 GiB/)]);
    expect(problems(GiB, {}, 3 * 4096)).toEqual([expect.stringMatching(/power of two/)]);
    expect(problems(GiB, {}, 2048)).toEqual([expect.stringMatching(/power of two from 4096/)]);
    // 2040 GiB of 4 KiB blocks is 534773760 BAT entries, below qemu's limit (INT_MAX / 4): every size fits.
    expect(problems(2040 * GiB, {}, 4096)).toEqual([]);
    expect(vpcInPlace.create({ source: { virtualSize: GiB, clusterSize: BS, backing: { name: 'parent.vhd' } }, clusterSize: BS, options: {} }).problems).toEqual([expect.stringMatching(/differencing/)]);
    expect(problems(GiB, { subformat: 'fixed' }, 65536)).toEqual([]);
  });
});
