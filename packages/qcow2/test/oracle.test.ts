/**
 * The oracle: images made by qemu-img / qemu-io, described by our driver and by qemu-img (map, info,
 * convert -O raw, check) must agree.
 */
import { metadataRangesOf } from '@ic/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, openSync, readSync } from 'node:fs';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { asQemuRows, closeAll, mapOf, openQcow2, ourCheckNumbers, qemuCheckNumbers, qemuRows } from './helpers.js';

const tmp = tempDir('ic-qcow2-oracle-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const K = 1024;
const M = 1024 * K;
const G = 1024 * M;

interface OracleShape {
  name: string;
  size: number;
  options?: string;
  commands: string[];
  /** Make the image with `qemu-img convert -c` from a raw file written with these commands instead. */
  compressed?: boolean;
  /** Extended L2: qemu shows host offsets for unallocated subclusters, which Extent cannot carry. */
  subclusters?: boolean;
  /** Extent kinds the map must contain (so that the comparison covers them). */
  expectKinds: ('data' | 'zero' | 'zero-allocated' | 'compressed' | 'unallocated')[];
}

const shapes: OracleShape[] = [
  {
    name: 'compat=0.10, 64k clusters, unaligned writes, two L2 tables, last cluster, write -z and discard',
    size: G + 1536,
    options: 'compat=0.10',
    expectKinds: ['data', 'unallocated'],
    commands: ['write -P 0x11 1000 3000', 'write -P 0x22 65000 2000', 'write -P 0x33 600M 192k', 'write -z 600M 64k', 'discard 640k 64k', `write -P 0x44 ${G + 1024} 512`],
  },
  {
    name: 'compat=1.1, 64k clusters, zero clusters with and without host cluster, discard',
    expectKinds: ['data', 'zero', 'zero-allocated', 'unallocated'],
    size: G + 1536,
    commands: [
      'write -P 0x11 1000 3000',
      'write -P 0x22 65000 2000',
      'write -P 0x33 600M 256k',
      'write -z 600M 64k',
      'write -z 5M 128k',
      `discard ${600 * M + 128 * K} 64k`,
      `write -P 0x44 ${G + 1024} 512`,
    ],
  },
  {
    name: 'cluster_size=512, many L2 tables',
    size: 4 * M,
    options: 'cluster_size=512',
    expectKinds: ['data', 'zero', 'unallocated'],
    commands: ['write -P 1 0 5k', 'write -P 2 100k 1k', `write -P 3 ${M + 300} 70k`, 'write -z 2M 33k', `write -P 4 ${2 * M + K} 512`, `write -P 5 ${4 * M - 512} 512`],
  },
  {
    name: 'cluster_size=4k, partial last cluster, L2 boundary',
    size: 16 * M + 512,
    options: 'cluster_size=4k',
    expectKinds: ['data', 'zero', 'unallocated'],
    commands: [`write -P 1 ${2 * M - 6 * K} 12k`, `write -P 2 ${7 * M + 100} 50`, 'write -z 9M 8k', 'discard 2M 4k', `write -P 3 ${16 * M} 512`],
  },
  {
    name: 'cluster_size=2M on a sparse 1 TiB disk, several L2 tables',
    size: 1024 * G,
    options: 'cluster_size=2M',
    expectKinds: ['data', 'zero', 'unallocated'],
    commands: ['write -P 1 0 4k', 'write -P 2 600G 64k', 'write -z 700G 2M', `write -P 3 ${1024 * G - 512} 512`],
  },
  {
    name: 'refcount_bits=1, lazy refcounts',
    size: 64 * M,
    options: 'refcount_bits=1,lazy_refcounts=on',
    expectKinds: ['data', 'unallocated'],
    commands: ['write -P 7 0 1M', 'write -P 8 33M 4k'],
  },
  {
    name: 'refcount_bits=64, cluster_size=16k',
    size: 64 * M,
    options: 'refcount_bits=64,cluster_size=16k',
    expectKinds: ['data', 'zero', 'unallocated'],
    commands: ['write -P 7 0 100k', 'write -z 1M 32k', 'write -P 8 63M 4k'],
  },
  {
    name: 'cluster_size=512, refcount_bits=64: qemu grows and moves the refcount table',
    size: 16 * M,
    options: 'cluster_size=512,refcount_bits=64',
    expectKinds: ['data', 'unallocated'],
    commands: ['write -P 1 0 6M', `write -P 2 ${12 * M + 512} 1k`],
  },
  {
    name: 'compressed clusters (qemu-img convert -c)',
    size: 4 * M,
    compressed: true,
    expectKinds: ['compressed', 'unallocated'],
    commands: ['write -P 5 0 128k', 'write -P 0 128k 64k', 'write -P 7 300k 10k', 'write -P 9 2M 1M'],
  },
  {
    name: 'extended_l2=on, subclusters',
    size: 8 * M,
    options: 'extended_l2=on',
    subclusters: true,
    expectKinds: ['data', 'zero', 'zero-allocated', 'unallocated'],
    commands: ['write -P 1 0 4k', 'write -z 8k 2k', 'write -z 64k 64k', 'write -P 3 130k 2k', 'write -P 4 1M 64k', `discard ${M + 16 * K} 4k`],
  },
];

function readRaw(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

describe('qemu-made images: map, info, read and check agree with qemu-img', () => {
  shapes.forEach((shape, index) => {
    describe(shape.name, () => {
      const file = tmp.path(`shape${index}.qcow2`);
      const raw = tmp.path(`shape${index}.raw`);
      beforeAll(() => {
        if (shape.compressed) {
          const source = tmp.path(`shape${index}-source.raw`);
          qemuCreate(source, 'raw', shape.size);
          qemuIo(source, 'raw', shape.commands);
          qemuCompressedConvert(source, file);
        } else {
          qemuCreate(file, 'qcow2', shape.size, shape.options ? { o: shape.options } : {});
          qemuIo(file, 'qcow2', shape.commands);
        }
        qemuConvert(file, 'qcow2', raw, 'raw');
      });

      it('map() equals qemu-img map', async () => {
        const image = await openQcow2(file);
        const extents = await mapOf(image);
        const kinds = new Set(extents.map((e) => (e.kind === 'zero' && e.hostOffset !== undefined ? 'zero-allocated' : e.kind)));
        for (const kind of shape.expectKinds) expect(kinds.has(kind), `map has ${kind} extents`).toBe(true);
        const ours = asQemuRows(extents);
        expect(ours).toEqual(qemuRows(file, { dropUnallocatedOffsets: shape.subclusters === true }));
        if (shape.subclusters) {
          // The mapping really is at subcluster granularity.
          expect(ours.some((row) => row.length % (64 * K) !== 0)).toBe(true);
        }
      });

      it('info() matches qemu-img info', async () => {
        const image = await openQcow2(file);
        const info = image.info();
        const theirs = qemuInfo(file, 'qcow2');
        expect(info.virtualSize).toBe(theirs['virtual-size']);
        expect(info.clusterSize).toBe(theirs['cluster-size']);
        expect(info.dirty).toBe(theirs['dirty-flag'] ?? false);
        expect(info.formatSpecific).toEqual(theirs['format-specific']);
      });

      it('read() returns what qemu-img convert -O raw wrote', async () => {
        const image = await openQcow2(file);
        const size = image.info().virtualSize;
        const windows: [number, number][] = [];
        if (size <= 32 * M) windows.push([0, size]);
        else {
          for (const row of qemuRows(file)) {
            const end = row.start + row.length;
            windows.push([row.start, Math.min(end, row.start + 256 * K)]);
            windows.push([Math.max(row.start, end - 256 * K), end]);
          }
        }
        for (const [start, end] of windows) {
          const ours = await image.read(start, end - start);
          const theirs = readRaw(raw, start, end - start);
          expect(Buffer.from(ours).equals(Buffer.from(theirs)), `bytes ${start}..${end}`).toBe(true);
        }
      });

      it('conversionSource() validates every table and names only the expected blockers', async () => {
        const image = await openQcow2(file);
        const source = await image.conversionSource();
        // Compressed clusters are found by the conversion's walk of the map, not listed as a blocker.
        const expected = shape.subclusters ? ['extended L2 (subclusters)'] : [];
        expect(source.blockers.map((blocker) => blocker.feature).sort()).toEqual(expected.sort());
        expect(source.options.virtualSize).toBe(image.info().virtualSize);
        for (const range of await metadataRangesOf(source)) expect(range.offset + range.length).toBeLessThanOrEqual(Math.max(image.state.fileSize, image.state.clusterSize));
      });

      it('check() reports what qemu-img check reports', async () => {
        const image = await openQcow2(file);
        const report = await image.check();
        expect(ourCheckNumbers(report)).toEqual(qemuCheckNumbers(file));
        expect(report.corruptions + report.leaks).toBe(0);
      });
    });
  });
});

import { run } from '@ic/test-utils';
function qemuCompressedConvert(source: string, target: string): void {
  const result = run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', source, target]);
  if (result.code !== 0) throw new Error(result.stderr);
}
