import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync, truncateSync, openSync, writeSync, closeSync } from 'node:fs';
import { collectExtents, mergeQemuMapEntries, MemoryIO, toQemuMapEntry } from '@ic/core';
import { FileIO, posix } from '@ic/core/node';
import { qemuMap, requireQemu, tempDir } from '@ic/test-utils';
import { rawDriver } from '../src/index.js';

describe('raw', () => {
  const scratch = tempDir('ic-raw-');
  afterAll(() => scratch.cleanup());

  function sparseFile(name: string, size: number, pieces: [number, number][]): string {
    const path = scratch.path(name);
    writeFileSync(path, new Uint8Array(0));
    truncateSync(path, size);
    const fd = openSync(path, 'r+');
    for (const [offset, length] of pieces) writeSync(fd, new Uint8Array(length).fill(0x5c), 0, length, offset);
    closeSync(fd);
    return path;
  }

  it('maps the holes of a sparse file the way qemu-img does', async () => {
    requireQemu();
    expect(posix(), 'lseek(SEEK_DATA) through koffi must load on Linux').not.toBeNull();
    const path = sparseFile('sparse.raw', 64 << 20, [[0, 4096], [10 << 20, 1 << 20], [(64 << 20) - 4096, 4096]]);
    const io = await FileIO.open(path);
    const image = await rawDriver.open(io);
    const ours = mergeQemuMapEntries((await collectExtents(image.map())).map((e) => toQemuMapEntry(e)));
    expect(ours).toEqual(qemuMap(path, 'raw'));
    await io.close();
  });

  it('pads an odd-sized file to whole sectors for conversion, reading zeros there', async () => {
    const io = new MemoryIO(new Uint8Array(1001).fill(7));
    const image = await rawDriver.open(io);
    expect(image.info().virtualSize).toBe(1001);
    expect((await image.conversionSource!()).options.virtualSize).toBe(1024);
    const tail = await image.read(1000, 24);
    expect([...tail]).toEqual([7, ...new Array(23).fill(0)]);
  });
});
