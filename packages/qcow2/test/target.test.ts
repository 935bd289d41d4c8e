/**
 * The in-place target: data clusters already sit in a file at aligned offsets past the header region; the
 * target builds L2/L1/refcount structures around them and a header. qemu-img check must be clean (no
 * errors, no leaks) and qemu-img compare must find the expected content.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { AppendAllocator, assertCoverage, MemoryIO, pushExtent, type Extent } from '@ic/core';
import { runTargetBuild } from '@ic/conformance';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuInfo, requireQemu, tempDir } from '@ic/test-utils';
import { qcow2Driver } from '../src/index.js';
import { asQemuRows, closeAll, mapOf, openQcow2, pattern, qemuRows } from './helpers.js';

const tmp = tempDir('ic-qcow2-target-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const K = 1024;
const M = 1024 * K;

interface TargetCase {
  compat: '0.10' | '1.1';
  clusterSize: number;
  backing: boolean;
  refcountBits?: number;
}

const cases: TargetCase[] = [];
for (const compat of ['0.10', '1.1'] as const) {
  for (const clusterSize of [4 * K, 64 * K, 2 * M]) {
    for (const backing of [false, true]) cases.push({ compat, clusterSize, backing });
  }
}
cases.push({ compat: '1.1', clusterSize: 512, backing: false, refcountBits: 1 });
cases.push({ compat: '1.1', clusterSize: 4 * K, backing: true, refcountBits: 64 });

describe('in-place target builds images qemu-img accepts', () => {
  cases.forEach((testCase, index) => {
    const { compat, clusterSize, backing } = testCase;
    it(`compat=${compat}, ${clusterSize / K}k clusters${backing ? ', backing file' : ''}${testCase.refcountBits ? `, refcount_bits=${testCase.refcountBits}` : ''}`, async () => {
      const clusters = 40;
      const virtualSize = clusters * clusterSize + 512; // a partial last cluster
      const lastCluster = clusters; // index of the partial cluster
      const file = tmp.path(`target${index}.qcow2`);
      const expectedFile = tmp.path(`expected${index}.raw`);
      const baseName = `base${index}.raw`;

      // Guest content: the backing file (when there is one) under the image's own clusters.
      const expected = new Uint8Array(virtualSize);
      if (backing) {
        const base = pattern(virtualSize, 1000 + index);
        writeFileSync(tmp.path(baseName), base);
        expected.set(base);
      }
      const dataClusters = [1, 2, 3, 7, 20, lastCluster];
      const zeroClusters = compat === '1.1' ? [10, 11, 12, 21] : [];
      // Host slots: data in shuffled order with holes of stale bytes between them (old metadata, now free).
      const hostSlots = [4, 2, 9, 5, 1, 7];
      const target = qcow2Driver.inPlace!.create({
        source: { virtualSize, clusterSize, ...(backing ? { backing: { name: baseName, format: 'raw' } } : {}) },
        clusterSize,
        options: { compat, ...(testCase.refcountBits ? { refcount_bits: testCase.refcountBits } : {}) },
      });
      expect(target.problems).toEqual([]);
      expect(target.layout).toEqual({
        clusterSize,
        headerRegionSize: clusterSize,
        maxHostOffset: Number.MAX_SAFE_INTEGER,
        zeroExtents: compat === '1.1',
        tableCoverage: (clusterSize / 8) * clusterSize,
      });

      const io = await FileIO.create(file);
      const stale = new Uint8Array(clusterSize).fill(0xee);
      for (let slot = 1; slot <= 10; slot++) await io.write(slot * clusterSize, stale);
      const mapping: Extent[] = [];
      for (let cluster = 0; cluster <= lastCluster; cluster++) {
        const guestOffset = cluster * clusterSize;
        const length = Math.min(clusterSize, virtualSize - guestOffset);
        const dataIndex = dataClusters.indexOf(cluster);
        if (dataIndex >= 0) {
          const bytes = pattern(clusterSize, cluster + 1);
          const hostOffset = hostSlots[dataIndex]! * clusterSize;
          await io.write(hostOffset, bytes);
          expected.set(bytes.subarray(0, length), guestOffset);
          pushExtent(mapping, { kind: 'data', guestOffset, length, hostOffset });
        } else if (zeroClusters.includes(cluster)) {
          expected.fill(0, guestOffset, guestOffset + length);
          pushExtent(mapping, { kind: 'zero', guestOffset, length });
        } else {
          pushExtent(mapping, { kind: 'unallocated', guestOffset, length });
        }
      }
      assertCoverage(mapping, virtualSize);
      writeFileSync(expectedFile, expected);

      const space = new AppendAllocator(11 * clusterSize, clusterSize);
      const build = await runTargetBuild(target, mapping, space, io);
      expect(build.header.length).toBeLessThanOrEqual(512);
      const region = new Uint8Array(clusterSize);
      region.set(build.header);
      await io.write(0, region);
      expect(build.fileSize).toBeGreaterThanOrEqual(space.end);
      if ((await io.size()) < build.fileSize) await io.truncate(build.fileSize);
      await io.close();

      const check = qemuCheck(file, 'qcow2');
      expect(check.code, check.text).toBe(0);
      expect(check.json?.leaks ?? 0).toBe(0);
      const compare = qemuCompare(file, 'qcow2', expectedFile, 'raw');
      expect(compare.code, compare.stdout + compare.stderr).toBe(0);
      const info = qemuInfo(file, 'qcow2');
      expect(info['virtual-size']).toBe(virtualSize);
      expect(info['format-specific']?.data.compat).toBe(compat);
      if (backing) {
        expect(info['backing-filename']).toBe(baseName);
        expect(info['backing-filename-format']).toBe('raw');
      }

      // Our own driver reads back exactly the planned mapping, and so does qemu-img map (at depth 0).
      const image = await openQcow2(file);
      expect(await mapOf(image)).toEqual(mapping);
      expect(asQemuRows(await mapOf(image))).toEqual(qemuRows(file));
      const report = await image.check();
      expect(report.corruptions + report.leaks + report.checkErrors, report.messages.join('\n')).toBe(0);
      const source = await image.conversionSource();
      expect(source.blockers).toEqual([]);
      expect(source.options).toEqual({
        virtualSize,
        clusterSize,
        ...(backing ? { backing: { name: baseName, format: 'raw' } } : {}),
      });
    });
  });
});

describe('in-place target problems', () => {
  const make = (source: Record<string, unknown>, options: Record<string, string | number | boolean> = {}, clusterSize = 64 * K) =>
    qcow2Driver.inPlace!.create({ source: { virtualSize: M, clusterSize, ...source }, clusterSize, options });

  it('names a backing file name longer than 1023 bytes', () => {
    expect(make({ backing: { name: 'b'.repeat(1024), format: 'raw' } }).problems).toHaveLength(1);
    expect(make({ backing: { name: 'b'.repeat(1023), format: 'raw' } }).problems).toEqual([]);
  });

  it('names a backing file name that does not fit cluster 0', () => {
    expect(make({ backing: { name: 'b'.repeat(400) } }, {}, 512).problems).toHaveLength(1);
    expect(make({ backing: { name: 'b'.repeat(300) } }, {}, 512).problems).toEqual([]);
  });

  it('names a backing format it cannot record', () => {
    expect(make({ backing: { name: 'base', format: 'a-very-long-format' } }).problems).toHaveLength(1);
  });

  it('names a virtual size that is not whole sectors', () => {
    expect(make({ virtualSize: M + 100 }).problems).toHaveLength(1);
  });

  it('refuses invalid options with INVALID', () => {
    expect(() => make({}, { compat: '0.10', refcount_bits: 8 })).toThrow(expect.objectContaining({ code: 'INVALID' }));
  });

  it('the header stays within 512 bytes for ordinary names', async () => {
    const target = make({ backing: { name: 'images/base-image-2024.qcow2', format: 'qcow2' } });
    const build = await runTargetBuild(target, [{ kind: 'unallocated', guestOffset: 0, length: M }], new AppendAllocator(64 * K, 64 * K), new MemoryIO());
    expect(build.header.length).toBeLessThanOrEqual(512);
  });
});
