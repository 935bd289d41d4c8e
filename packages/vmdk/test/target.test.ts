import { runTargetBuild, metadataRangesOf } from '@ic/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { alignUp, mergeExtents, type Extent, type SpaceAllocator } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { HEADER_REGION_SIZE, vmdkDriver } from '../src/index.js';
import { closeAll, mapOf, openVmdk, pattern, qemuRaw } from './helpers.js';

const tmp = tempDir('ic-vmdk-target-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

/** The engine's role in miniature: hands out space past everything already in the file. */
function bumpAllocator(start: number, clusterSize: number): SpaceAllocator & { allocations: [number, number][] } {
  let next = start;
  const allocations: [number, number][] = [];
  return {
    allocations,
    allocate(length: number, alignment = clusterSize): number {
      const offset = alignUp(next, alignment);
      next = offset + length;
      allocations.push([offset, length]);
      return offset;
    },
    get end() {
      return next;
    },
  };
}

interface Plan {
  virtualSize: number;
  clusterSize: number;
  /** Guest cluster index → what it becomes. */
  clusters: Map<number, 'data' | 'zero'>;
  backing?: { name: string; format?: string };
  options?: Record<string, string | boolean>;
  /** Content of unallocated clusters (the parent's), default zeros. */
  parentContent?: Uint8Array;
}

/**
 * Writes the data clusters of `plan` into a file at cluster-aligned host offsets past the header region (in
 * reverse guest order, so the map is fragmented), builds the VMDK around them, and applies the build like the
 * engine does. Returns the file, the expected guest content and the mapping.
 */
async function convert(name: string, plan: Plan) {
  const { virtualSize, clusterSize } = plan;
  const file = tmp.path(`${name}.vmdk`);
  const expected = plan.parentContent ? plan.parentContent.slice(0, virtualSize) : new Uint8Array(virtualSize);
  const io = await FileIO.create(file);
  const dataClusters = [...plan.clusters].filter(([, kind]) => kind === 'data').map(([index]) => index).sort((a, b) => b - a);
  let host = alignUp(HEADER_REGION_SIZE, clusterSize);
  const hostOf = new Map<number, number>();
  for (const index of dataClusters) {
    const length = Math.min(clusterSize, virtualSize - index * clusterSize);
    const data = pattern(length, index + 7);
    expected.set(data, index * clusterSize);
    await io.write(host, data);
    hostOf.set(index, host);
    host += clusterSize;
  }
  for (const [index, kind] of plan.clusters) if (kind === 'zero') expected.fill(0, index * clusterSize, Math.min(virtualSize, (index + 1) * clusterSize));
  const mapping: Extent[] = [];
  const clusterCount = Math.ceil(virtualSize / clusterSize);
  for (let index = 0; index < clusterCount; index++) {
    const guestOffset = index * clusterSize;
    const length = Math.min(clusterSize, virtualSize - guestOffset);
    const kind = plan.clusters.get(index);
    if (kind === 'data') mapping.push({ kind: 'data', guestOffset, length, hostOffset: hostOf.get(index)! });
    else if (kind === 'zero') mapping.push({ kind: 'zero', guestOffset, length });
    else mapping.push({ kind: 'unallocated', guestOffset, length });
  }
  const merged = mergeExtents(mapping);
  const target = vmdkDriver.inPlace!.create({
    source: { virtualSize, clusterSize, ...(plan.backing ? { backing: plan.backing } : {}) },
    clusterSize,
    options: plan.options ?? {},
  });
  expect(target.problems).toEqual([]);
  const space = bumpAllocator(host, clusterSize);
  const build = await runTargetBuild(target, merged, space);
  for (const write of build.writes) {
    expect(space.allocations.some(([offset, length]) => write.offset >= offset && write.offset + write.data.length <= offset + length)).toBe(true);
    await io.write(write.offset, write.data);
  }
  expect(build.fileSize).toBeGreaterThanOrEqual(space.end);
  await io.truncate(build.fileSize);
  expect(build.header.length).toBeLessThanOrEqual(target.layout.headerRegionSize);
  await io.write(0, build.header);
  await io.close();
  writeFileSync(tmp.path(`${name}.expected.raw`), expected);
  return { file, expected, merged, raw: tmp.path(`${name}.expected.raw`) };
}

function clusters(entries: [number, 'data' | 'zero'][]): Map<number, 'data' | 'zero'> {
  return new Map(entries);
}

describe('in-place target', () => {
  it('64 KiB grains: data (fragmented), zero extents, odd virtual size with a partial last grain', async () => {
    const virtualSize = 100 * 1024 * 1024 + 3 * 512;
    const last = Math.floor((virtualSize - 1) / 65536);
    const plan = { virtualSize, clusterSize: 65536, clusters: clusters([[0, 'data'], [1, 'data'], [2, 'zero'], [10, 'data'], [511, 'data'], [512, 'zero'], [700, 'data'], [last, 'data']]) };
    const { file, raw, merged } = await convert('t64k', plan);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(file, 'vmdk', raw, 'raw').stdout).toContain('Images are identical');
    const image = await openVmdk(file);
    expect(await mapOf(image)).toEqual(merged);
    expect((await image.check!()).corruptions).toBe(0);
    const bytes = readFileSync(file);
    expect(bytes.readUInt32LE(4)).toBe(2); // version 2: zeroed grains in use
    expect(bytes.readUInt32LE(8)).toBe(7); // newline detection + redundant GD + zeroed grain
    // qemu can keep writing to the result (every grain table exists)
    qemuIo(file, 'vmdk', ['write -P 0x99 50M 128k', 'write -z 0 64k']);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
  });

  it('4 KiB grains without zero extents keep version 1 and flags 3', async () => {
    const plan = { virtualSize: 8 * 1024 * 1024, clusterSize: 4096, clusters: clusters([[0, 'data'], [3, 'data'], [2047, 'data'], [1000, 'data']]) };
    const { file, raw, merged } = await convert('t4k', plan);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(file, 'vmdk', raw, 'raw').stdout).toContain('Images are identical');
    expect(await mapOf(await openVmdk(file))).toEqual(merged);
    const bytes = readFileSync(file);
    expect([bytes.readUInt32LE(4), bytes.readUInt32LE(8)]).toEqual([1, 3]);
  });

  it('with a VMDK parent: parentFileNameHint + parent_cid; zero grains mask the parent', async () => {
    const base = tmp.path('base.vmdk');
    qemuCreate(base, 'vmdk', '16M');
    qemuIo(base, 'vmdk', ['write -P 0x44 0 4M']);
    const cid = /CID=([0-9a-f]+)/.exec(readFileSync(base, 'latin1'))![1]!;
    const parentContent = qemuRaw(base, tmp.path('base.raw'));
    const plan: Plan = {
      virtualSize: 16 * 1024 * 1024,
      clusterSize: 65536,
      clusters: clusters([[0, 'data'], [1, 'zero'], [2, 'zero'], [40, 'data'], [100, 'data']]),
      backing: { name: 'base.vmdk', format: 'vmdk' },
      options: { parent_cid: cid },
      parentContent,
    };
    const { file, raw, merged } = await convert('child', plan);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(file, 'vmdk', raw, 'raw').stdout).toContain('Images are identical');
    const image = await openVmdk(file);
    expect(image.info().backing).toEqual({ name: 'base.vmdk', format: 'vmdk' });
    expect(image.info().formatSpecific!.data['parent-cid']).toBe(Number.parseInt(cid, 16));
    expect(await mapOf(image)).toEqual(merged);
  });

  it('states what it cannot represent', () => {
    const problems = (source: Record<string, unknown>, options: Record<string, string | boolean> = {}, clusterSize = 65536) =>
      vmdkDriver.inPlace!.create({ source: { virtualSize: 1 << 20, clusterSize, ...source }, clusterSize, options }).problems;
    expect(problems({ backing: { name: 'base.qcow2', format: 'qcow2' } }, { parent_cid: '1' }).join()).toMatch(/VMDK can only have a VMDK parent/);
    expect(problems({ backing: { name: 'base.vmdk', format: 'vmdk' } }).join()).toMatch(/parent_cid/);
    expect(problems({ backing: { name: 'a"b', format: 'vmdk' } }, { parent_cid: '1' }).join()).toMatch(/cannot be stored/);
    expect(problems({ virtualSize: 1000 }).join()).toMatch(/whole 512-byte sectors/);
    expect(problems({}, { subformat: 'streamOptimized' }).join()).toMatch(/only monolithicSparse/);
    expect(problems({}, {}, 2048).join()).toMatch(/grain size/);
    expect(problems({})).toEqual([]);
  });
});

describe('VMDK to VMDK through the contract', () => {
  it('the map of a qemu-made image rebuilt in place by our target is identical for qemu', async () => {
    const file = tmp.path('roundtrip.vmdk');
    qemuCreate(file, 'vmdk', 70 * 1024 * 1024 + 512, { o: 'zeroed_grain=on' });
    qemuIo(file, 'vmdk', ['write -P 0x21 0 192k', 'write -z 1M 128k', 'write -P 0x22 40M 64k', `write -P 0x23 ${70 * 1024 * 1024} 512`]);
    const expected = qemuRaw(file, tmp.path('roundtrip.raw'));
    const image = await openVmdk(file);
    const source = await image.conversionSource!();
    expect(source.options).toEqual({ virtualSize: 70 * 1024 * 1024 + 512, clusterSize: 65536 });
    const mapping = await mapOf(image);
    const target = vmdkDriver.inPlace!.create({ source: source.options, clusterSize: 65536, options: {} });
    expect(target.problems).toEqual([]);
    const io = await FileIO.open(file, { writable: true, lock: true });
    const build = await runTargetBuild(target, mapping, bumpAllocator(await io.size(), 65536), io);
    await io.truncate(build.fileSize);
    await io.write(0, build.header);
    await io.close();
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    writeFileSync(tmp.path('roundtrip.expected.raw'), expected);
    expect(qemuCompare(file, 'vmdk', tmp.path('roundtrip.expected.raw'), 'raw').stdout).toContain('Images are identical');
    expect(await mapOf(await openVmdk(file))).toEqual(mapping);
  });

  it('metadataRanges name the header, the whole descriptor window, both directories and every table', async () => {
    const file = tmp.path('ranges.vmdk');
    qemuCreate(file, 'vmdk', '1G');
    const source = await (await openVmdk(file)).conversionSource!();
    expect(await metadataRangesOf(source)).toEqual([
      { offset: 0, length: 512, kind: 'header', role: 'header' },
      { offset: 0x200, length: 0x2800, kind: 'header', role: 'descriptor (qemu rewrites this whole window)' },
      { offset: 150 * 512, length: 32 * 4, kind: 'metadata', role: 'grain directory' },
      { offset: 151 * 512, length: 32 * 2048, kind: 'metadata', role: 'grain tables' },
      { offset: 21 * 512, length: 32 * 4, kind: 'metadata', role: 'redundant grain directory' },
      { offset: 22 * 512, length: 32 * 2048, kind: 'metadata', role: 'redundant grain tables' },
    ]);
  });
});
