import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuIo, qemuMap, requireQemu, tempDir } from '@ic/test-utils';
import { writeSparseVmdk } from '../src/index.js';
import { asQemuRows, closeAll, mapOf, openVmdk, pattern, qemuRowsAtDepth0 } from './helpers.js';

const tmp = tempDir('ic-vmdk-writer-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

async function writeCase(name: string, virtualSize: number, grainSize: number, guestGrains: number[], extra: { gapSectors?: number; zeroGrains?: number[] } = {}) {
  const file = tmp.path(`${name}.vmdk`);
  const expected = new Uint8Array(virtualSize);
  const grains = guestGrains.map((index, i) => {
    const guestOffset = index * grainSize;
    const data = pattern(Math.min(grainSize, virtualSize - guestOffset), i + 1);
    expected.set(data, guestOffset);
    return { guestOffset, data };
  });
  const io = await FileIO.create(file);
  const layout = await writeSparseVmdk(io, { capacity: virtualSize, grainSize, grains, ...extra });
  await io.close();
  writeFileSync(tmp.path(`${name}.raw`), expected);
  return { file, layout, expected, raw: tmp.path(`${name}.raw`) };
}

describe('writeSparseVmdk: grains at sector offsets that are not grain multiples', () => {
  it('64 KiB grains packed after the tables, reverse order, last (partial) grain: qemu reads them', async () => {
    const size = 40 * 1024 * 1024 + 3 * 512; // not a multiple of 32 MiB, nor of a grain
    const lastGrain = Math.floor((size - 1) / 65536);
    const { file, layout, raw } = await writeCase('packed', size, 65536, [lastGrain, 600, 3, 2, 0, 512], { gapSectors: 3 });
    const offsets = [...layout.hostOffsets.values()];
    expect(offsets.every((offset) => offset % 65536 !== 0)).toBe(true);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(file, 'vmdk', raw, 'raw').stdout).toContain('Images are identical');
    const map = qemuMap(file, 'vmdk');
    expect(map.filter((row) => row.data).map((row) => row.offset! % 512)).toEqual(map.filter((row) => row.data).map(() => 0));
    const image = await openVmdk(file);
    expect(asQemuRows(await mapOf(image))).toEqual(qemuRowsAtDepth0(file));
    const source = await image.conversionSource!();
    expect(source.blockers).toEqual([]);
    expect(source.options).toEqual({ virtualSize: size, clusterSize: 65536 });
  });

  it('4 KiB grains with zeroed grains; qemu can still write to the image', async () => {
    const size = 3 * 1024 * 1024;
    const { file, raw } = await writeCase('small', size, 4096, [5, 1, 700], { zeroGrains: [2 * 4096, 3 * 4096] });
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    expect(qemuCompare(file, 'vmdk', raw, 'raw').stdout).toContain('Images are identical');
    const image = await openVmdk(file);
    const extents = await mapOf(image);
    expect(asQemuRows(extents)).toEqual(qemuRowsAtDepth0(file));
    expect(extents.filter((e) => e.kind === 'zero')).toEqual([{ kind: 'zero', guestOffset: 8192, length: 8192 }]);
    qemuIo(file, 'vmdk', ['write -P 0x77 100k 4k']);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
  });
});
