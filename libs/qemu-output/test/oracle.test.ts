/** The formatters against qemu-img itself: an image qemu made, read through MemoryIO, printed as qemu-img prints it. */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { MemoryIO } from '@ic/core';
import { qcow2Driver } from '@ic/qcow2';
import { qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { checkJson, mapJson, qemuJson, qemuMapEntries } from '../src/index.js';

const scratch = tempDir('ic-qemu-output-');
const file = scratch.path('disk.qcow2');

beforeAll(() => {
  requireQemu();
  qemuCreate(file, 'qcow2', '64M', { o: 'cluster_size=65536' });
  // Data at a few places (one run crossing a cluster boundary, two adjacent writes that merge), a zero cluster.
  qemuIo(file, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 1M 192k', 'write -P 0x33 1216k 64k', 'write -z 8M 64k', 'write -P 0x44 60M 4k']);
});
afterAll(() => scratch.cleanup());

async function open() {
  return qcow2Driver.open(new MemoryIO(new Uint8Array(readFileSync(file)), file, { writable: false }));
}

test('mapJson(qemuMapEntries(image)) is the text of qemu-img map --output=json', async () => {
  const expected = run('qemu-img', ['map', '-f', 'qcow2', '--output=json', file]);
  expect(expected.code).toBe(0);
  const entries = await qemuMapEntries(await open());
  expect(entries.filter((e) => e.data).length).toBeGreaterThan(2);
  expect(mapJson(entries)).toBe(expected.stdout);
});

test('qemuMapEntries merges across map batches and reports the given depth', async () => {
  const extents = Array.from({ length: 10_000 }, (_, i) => ({ kind: 'data' as const, guestOffset: i * 512, length: 512, hostOffset: 65536 + i * 512 }));
  const batched = { map: () => [extents.slice(0, 4000), extents.slice(4000)] };
  expect(await qemuMapEntries(batched, 2)).toEqual([
    { start: 0, length: 10_000 * 512, depth: 2, present: true, zero: false, data: true, offset: 65536 },
  ]);
});

test('qemuJson(checkJson(report)) is the text of qemu-img check --output=json', async () => {
  const expected = run('qemu-img', ['check', '-f', 'qcow2', '--output=json', file]);
  expect(expected.code).toBe(0);
  const image = await open();
  expect(qemuJson(checkJson(await image.check!(), file, 'qcow2'))).toBe(expected.stdout);
});
