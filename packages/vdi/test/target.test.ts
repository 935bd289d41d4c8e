import { runTargetBuild } from '@ic/conformance';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alignUp, collectExtents, type Extent, type SpaceAllocator, type TargetRequest } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { BLOCK_SIZE, HEADER_FIELDS, vdiDriver, vdiInPlace } from '../src/index.js';
import { pokeU32, withImage } from './helpers.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** The engine's simplest allocator: bump from `start`. */
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

function request(virtualSize: number, extra: Partial<TargetRequest> = {}): TargetRequest {
  return { source: { virtualSize, clusterSize: BLOCK_SIZE }, clusterSize: BLOCK_SIZE, options: {}, ...extra };
}

function blockContent(guestBlock: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (guestBlock * 29 + (i >> 9) + 3) & 0xff || 7;
  return out;
}

/**
 * Simulates the engine for a packed target: the blocks already at offset_data + k MiB (slot k holds guest block
 * `slots[k]`), old metadata junk past them and in the header region, then build(), the header region at 0 and the
 * file cut to the build's size.
 */
async function buildAround(dir: (name: string) => string, name: string, virtualSize: number, slots: number[], runOffset = 0) {
  const target = vdiInPlace.create(request(virtualSize));
  expect(target.problems).toEqual([]);
  const placement = target.layout.placement;
  if (placement?.kind !== 'packed') throw new Error('VDI targets are packed');
  expect(target.layout.headerRegionSize).toBe(placement.start);
  const start = placement.start + runOffset;
  const imagePath = dir(`${name}.vdi`);
  const expectedPath = dir(`${name}.raw`);
  const image = openSync(imagePath, 'w+');
  const expected = openSync(expectedPath, 'w+');
  try {
    ftruncateSync(expected, virtualSize);
    writeSync(image, new Uint8Array(start).fill(0xee), 0, start, 0); // the old header, and old data before the run
    const dataEnd = start + slots.length * BLOCK_SIZE;
    writeSync(image, new Uint8Array(3 * 65536).fill(0xcc), 0, 3 * 65536, dataEnd); // the old format's tables
    const mapping: Extent[] = [];
    slots.forEach((guestBlock, slot) => {
      const length = Math.min(BLOCK_SIZE, virtualSize - guestBlock * BLOCK_SIZE);
      const content = blockContent(guestBlock, BLOCK_SIZE);
      writeSync(image, content, 0, BLOCK_SIZE, start + slot * BLOCK_SIZE);
      writeSync(expected, content, 0, length, guestBlock * BLOCK_SIZE);
      mapping.push({ kind: 'data', guestOffset: guestBlock * BLOCK_SIZE, length, hostOffset: start + slot * BLOCK_SIZE });
    });
    mapping.sort((a, b) => a.guestOffset - b.guestOffset);
    const full: Extent[] = [];
    let guest = 0;
    for (const extent of mapping) {
      if (extent.guestOffset > guest) full.push({ kind: 'unallocated', guestOffset: guest, length: extent.guestOffset - guest });
      full.push(extent);
      guest = extent.guestOffset + extent.length;
    }
    if (guest < virtualSize) full.push({ kind: 'unallocated', guestOffset: guest, length: virtualSize - guest });
    const space = bumpAllocator(dataEnd + 3 * 65536);
    const build = await runTargetBuild(target, full, space);
    expect(build.writes).toEqual([]);
    expect(build.header.length).toBe(placement.start);
    writeSync(image, build.header, 0, build.header.length, 0);
    ftruncateSync(image, build.fileSize);
    return { imagePath, expectedPath, build, start };
  } finally {
    closeSync(image);
    closeSync(expected);
  }
}

describe('VDI in-place target: build() around blocks already packed from offset_data', () => {
  const tmp = tempDir('ic-vdi-target-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  const cases: { name: string; size: number; slots: number[]; runOffset?: number }[] = [
    { name: 'a run packed 8 MiB past the block map (offset_data follows it)', size: 64 * MiB, slots: [9, 1, 30], runOffset: 8 * MiB + 512 },
    { name: 'blocks in reverse guest order', size: 64 * MiB, slots: [63, 40, 7, 6, 5, 0] },
    { name: '5 GiB, blocks far apart', size: 5 * GiB, slots: [5 * 1024 - 1, 0, 2048, 1024] },
    { name: 'odd size, the last block partial', size: 10 * MiB + 512, slots: [10, 3] },
    { name: 'no data', size: 8 * MiB, slots: [] },
  ];
  for (const testCase of cases) {
    it(`${testCase.name}: qemu-img check clean, compare identical, qemu-io writes allocate at the next free index`, async () => {
      const { imagePath, expectedPath, start } = await buildAround(tmp.path, testCase.name.replace(/\W+/g, '_'), testCase.size, testCase.slots, testCase.runOffset);
      expect(qemuCheck(imagePath, 'vdi').code).toBe(0);
      expect(qemuCompare(imagePath, 'vdi', expectedPath, 'raw').code).toBe(0);
      await withImage(imagePath, async (image) => {
        expect(image.geometry.offsetData).toBe(start);
        expect(image.header.blocksAllocated).toBe(testCase.slots.length);
        expect((await image.check()).corruptions).toBe(0);
      });
      // New data in unallocated blocks (qemu puts them at index blocks_allocated), over old data, partly.
      const unallocated = [...Array(Math.ceil(testCase.size / BLOCK_SIZE)).keys()].filter((block) => !testCase.slots.includes(block));
      const writes = [`write -P 0x71 ${unallocated[0]! * BLOCK_SIZE + 4096} 8k`, `write -P 0x72 ${unallocated[unallocated.length - 1]! * BLOCK_SIZE} 512`];
      if (testCase.slots.length > 0) writes.push(`write -P 0x73 ${testCase.slots[0]! * BLOCK_SIZE} 512`);
      qemuIo(imagePath, 'vdi', writes);
      qemuIo(expectedPath, 'raw', writes);
      expect(qemuCheck(imagePath, 'vdi').code).toBe(0);
      const compare = qemuCompare(imagePath, 'vdi', expectedPath, 'raw');
      expect(compare.code, compare.stdout).toBe(0);
    });
  }

  it('why packed: qemu-img check passes a VDI with a gap in its data area, and qemu-io then overwrites guest data', () => {
    const path = tmp.path('gap.vdi');
    qemuCreate(path, 'vdi', 16 * MiB);
    qemuIo(path, 'vdi', ['write -P 0x11 0 1M', 'write -P 0x22 1M 1M', 'write -P 0x33 2M 1M']);
    // Guest block 1 (index 1) dropped, blocks_allocated 2: indexes 0 and 2 are in use, index 1 is a gap.
    pokeU32(path, 0x200 + 4, 0xffffffff);
    pokeU32(path, HEADER_FIELDS.blocksAllocated.offset, 2);
    expect(qemuCheck(path, 'vdi').code).toBe(0);
    qemuIo(path, 'vdi', ['write -P 0x44 5M 4k']);
    // The new block went to index blocks_allocated = 2, which guest block 2 still uses.
    expect(run('qemu-io', ['-f', 'vdi', '-c', 'read -P 0x33 2M 4k', path]).stdout).toMatch(/Pattern verification failed/);
    expect(readFileSync(path).readUInt32LE(0x200 + 4 * 5)).toBe(2);
  });

  it('a qemu-made VDI rebuilt from its own map: the same header (but the UUIDs) and block map bytes', async () => {
    const path = tmp.path('rebuild.vdi');
    qemuCreate(path, 'vdi', GiB);
    qemuIo(path, 'vdi', ['write -P 0x31 300M 4k', 'write -P 0x32 0 64k', 'write -P 0x33 7M 2M']);
    const original = readFileSync(path);
    const io = await FileIO.open(path);
    try {
      const image = await vdiDriver.open(io);
      const mapping = await collectExtents(image.map());
      const target = vdiInPlace.create(request(GiB));
      const build = await runTargetBuild(
        target,
        mapping.map((extent) => (extent.kind === 'zero' ? { kind: 'unallocated', guestOffset: extent.guestOffset, length: extent.length } : extent)),
        bumpAllocator(original.length),
      );
      const blank = (bytes: Uint8Array) => {
        const copy = Buffer.from(bytes);
        copy.fill(0, HEADER_FIELDS.uuidImage.offset, HEADER_FIELDS.uuidLastSnap.offset + 16);
        return copy;
      };
      expect(blank(build.header).equals(blank(original.subarray(0, build.header.length)))).toBe(true);
      expect(build.fileSize).toBe(original.length);
    } finally {
      await io.close();
    }
    const reference = tmp.path('rebuild.raw');
    qemuConvert(path, 'vdi', reference, 'raw');
  });

  it('a mapping with a gap in the data area, or a block off its slot, is refused (INTERNAL), not built', async () => {
    const target = vdiInPlace.create(request(16 * MiB));
    const start = target.layout.headerRegionSize;
    const bad: Extent[][] = [
      // Indexes 0 and 2: qemu would put the next block at index 2 and overwrite guest block 5.
      [
        { kind: 'data', guestOffset: 0, length: MiB, hostOffset: start },
        { kind: 'unallocated', guestOffset: MiB, length: 4 * MiB },
        { kind: 'data', guestOffset: 5 * MiB, length: MiB, hostOffset: start + 2 * MiB },
        { kind: 'unallocated', guestOffset: 6 * MiB, length: 10 * MiB },
      ],
      // Not a whole number of blocks apart.
      [
        { kind: 'data', guestOffset: 0, length: MiB, hostOffset: start },
        { kind: 'data', guestOffset: MiB, length: MiB, hostOffset: start + MiB + 512 },
        { kind: 'unallocated', guestOffset: 2 * MiB, length: 14 * MiB },
      ],
      // A run starting inside the block map.
      [
        { kind: 'data', guestOffset: 0, length: MiB, hostOffset: start - 512 },
        { kind: 'unallocated', guestOffset: MiB, length: 15 * MiB },
      ],
      [
        { kind: 'data', guestOffset: 0, length: MiB, hostOffset: start },
        { kind: 'data', guestOffset: MiB, length: MiB, hostOffset: start },
        { kind: 'unallocated', guestOffset: 2 * MiB, length: 14 * MiB },
      ],
      [{ kind: 'zero', guestOffset: 0, length: 16 * MiB }],
      [{ kind: 'unallocated', guestOffset: 0, length: 15 * MiB }],
    ];
    for (const mapping of bad) await expect(runTargetBuild(target, mapping, bumpAllocator(64 * MiB))).rejects.toMatchObject({ code: 'INTERNAL' });
  });

  it('problems: what qemu would not open as VDI', () => {
    const problems = (virtualSize: number, extra: Partial<TargetRequest> = {}) => vdiInPlace.create(request(virtualSize, extra)).problems;
    expect(problems(GiB)).toEqual([]);
    expect(problems(GiB, { clusterSize: 65536 })).toEqual([expect.stringMatching(/not 65536/)]);
    expect(problems(GiB + 100)).toEqual([expect.stringMatching(/multiple of 512/)]);
    expect(problems(GiB, { source: { virtualSize: GiB, clusterSize: MiB, backing: { name: 'base.vdi' } } })).toEqual([expect.stringMatching(/backing file/)]);
    expect(problems(2 ** 50)).toEqual([expect.stringMatching(/exceeds/)]);
    expect(vdiInPlace.clusterSizes).toEqual({ min: MiB, max: MiB });
    expect(vdiInPlace.create(request(GiB)).layout).toMatchObject({ clusterSize: MiB, hostAlignment: 512, headerRegionSize: 0x1200, placement: { kind: 'packed', start: 0x1200 }, zeroExtents: false });
  });
});
