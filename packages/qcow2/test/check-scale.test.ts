/**
 * check() on images with hundreds of clusters, so that the word-at-a-time paths (32 clusters per bitmap word
 * and per group of refcount entries) meet damage in the middle of a group, at every refcount width and table
 * layout: the counts must stay qemu-img check's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, statSync } from 'node:fs';
import { qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { getRefcountEntry, setRefcountEntry } from '../src/refcount.js';
import { closeAll, openQcow2, ourCheckNumbers, peek, poke, qemuCheckNumbers, u64be } from './helpers.js';

const tmp = tempDir('ic-qcow2-check-scale-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const M = 1024 * 1024;

/** Where the structures of a fresh image lie, read with our own parser. */
interface Layout {
  clusterSize: number;
  l2Offset: number;
  l2EntrySize: number;
  refcountBlock: number;
  order: number;
  maxRefcount: number;
  fileSize: number;
  /** Host offset of the data cluster of L2 entry `index`. */
  dataOffset(index: number): number;
}

async function layoutOf(file: string): Promise<Layout> {
  const { state } = await openQcow2(file);
  const l2Offset = Number(state.l1.getBigUint64(0) & 0x00fffffffffffe00n);
  const refcountTable = peek(file, state.header.refcountTableOffset, 8);
  const refcountBlock = Number(new DataView(refcountTable.buffer).getBigUint64(0) & ~0x1ffn);
  const l2EntrySize = state.geometry.l2EntrySize;
  return {
    clusterSize: state.clusterSize,
    l2Offset,
    l2EntrySize,
    refcountBlock,
    order: state.refcounts.order,
    maxRefcount: state.refcounts.maxValue,
    fileSize: state.fileSize,
    dataOffset: (index) => Number(new DataView(peek(file, l2Offset + index * l2EntrySize, 8).buffer).getBigUint64(0) & 0x00fffffffffffe00n),
  };
}

/** Sets the stored refcount of host cluster `cluster` (in refcount block 0). */
function setRefcount(file: string, layout: Layout, cluster: number, value: number): void {
  const block = peek(file, layout.refcountBlock, layout.clusterSize);
  setRefcountEntry(block, cluster, layout.order, value);
  poke(file, layout.refcountBlock, block);
}

function entryAt(file: string, layout: Layout, index: number): bigint {
  return new DataView(peek(file, layout.l2Offset + index * layout.l2EntrySize, 8).buffer).getBigUint64(0);
}

function setEntry(file: string, layout: Layout, index: number, value: bigint): void {
  poke(file, layout.l2Offset + index * layout.l2EntrySize, u64be(value));
}

interface Damage {
  name: string;
  /** Returns false when the damage cannot be expressed in this image (then the case is the undamaged one). */
  poke: (file: string, layout: Layout) => boolean;
}

const damages: Damage[] = [
  { name: 'undamaged', poke: () => true },
  { name: 'refcount of a data cluster lowered to 0', poke: (f, l) => (setRefcount(f, l, l.dataOffset(40) / l.clusterSize, 0), true) },
  {
    name: 'refcount of a data cluster raised to 2',
    poke: (f, l) => l.maxRefcount >= 2 && (setRefcount(f, l, l.dataOffset(41) / l.clusterSize, 2), true),
  },
  { name: 'COPIED cleared on a data entry', poke: (f, l) => (setEntry(f, l, 42, entryAt(f, l, 42) & ~(1n << 63n)), true) },
  { name: 'two entries sharing a cluster', poke: (f, l) => (setEntry(f, l, 43, entryAt(f, l, 44)), true) },
  {
    name: 'two entries sharing a cluster with refcount 2 (two COPIED errors)',
    poke: (f, l) => l.maxRefcount >= 2 && (setEntry(f, l, 47, entryAt(f, l, 48)), setRefcount(f, l, l.dataOffset(48) / l.clusterSize, 2), true),
  },
  {
    name: 'two entries without COPIED sharing a cluster with refcount 1',
    poke: (f, l) => {
      const shared = entryAt(f, l, 50) & ~(1n << 63n);
      setEntry(f, l, 49, shared);
      setEntry(f, l, 50, shared);
      return true;
    },
  },
  { name: 'entry not cluster-aligned', poke: (f, l) => (setEntry(f, l, 45, entryAt(f, l, 45) + 0x200n), true) },
  { name: 'entry past the end of the file', poke: (f, l) => (setEntry(f, l, 46, (1n << 63n) | BigInt(l.fileSize + 4 * l.clusterSize)), true) },
  {
    name: 'refcount of the L2 table raised (COPIED of the L1 entry)',
    poke: (f, l) => l.maxRefcount >= 2 && (setRefcount(f, l, l.l2Offset / l.clusterSize, 2), true),
  },
  {
    name: 'a free cluster inside the file with refcount 1 (leak)',
    poke: (f, l) => {
      const block = peek(f, l.refcountBlock, l.clusterSize);
      for (let cluster = 1; cluster < Math.min(l.fileSize / l.clusterSize, (l.clusterSize * 8) >> l.order); cluster++) {
        if (getRefcountEntry(block, cluster, l.order) === 0) return (setRefcount(f, l, cluster, 1), true);
      }
      return false;
    },
  },
  {
    name: 'several at once',
    poke: (f, l) => {
      setRefcount(f, l, l.dataOffset(70) / l.clusterSize, 0);
      setEntry(f, l, 71, entryAt(f, l, 71) & ~(1n << 63n));
      setEntry(f, l, 100, entryAt(f, l, 101));
      return true;
    },
  },
];

interface Shape {
  name: string;
  size: number;
  options?: (dir: string) => string;
  writes: string[];
  snapshot?: string[];
  /** Then write clusters until the file ends on a 32-cluster boundary (the last group is a full word). */
  alignEnd?: boolean;
}

const shapes: Shape[] = [
  { name: '64k clusters, 16-bit refcounts', size: 64 * M, writes: ['write -P 1 0 12M', 'discard 3M 128k'] },
  { name: '4k clusters, 1-bit refcounts', size: 16 * M, options: () => 'cluster_size=4096,refcount_bits=1', writes: ['write -P 1 0 2M', 'discard 1M 8k'] },
  { name: '4k clusters, 8-bit refcounts', size: 16 * M, options: () => 'cluster_size=4096,refcount_bits=8', writes: ['write -P 1 0 2M', 'discard 1M 8k'] },
  { name: '4k clusters, 64-bit refcounts', size: 16 * M, options: () => 'cluster_size=4096,refcount_bits=64', writes: ['write -P 1 0 2M', 'discard 1M 8k'] },
  { name: '64k clusters, the file ending on a 32-cluster boundary', size: 64 * M, writes: ['write -P 1 0 12M'], alignEnd: true },
  { name: 'extended L2', size: 64 * M, options: () => 'extended_l2=on', writes: ['write -P 1 0 12M', 'write -P 2 20M 4k'] },
  { name: 'preallocation=metadata', size: 256 * M, options: () => 'preallocation=metadata', writes: ['write -P 1 0 1M'] },
  { name: 'external data file', size: 64 * M, options: (dir) => `data_file=${dir}/data.raw`, writes: ['write -P 1 0 12M'] },
  { name: 'internal snapshot sharing clusters', size: 64 * M, writes: ['write -P 1 0 12M'], snapshot: ['write -P 2 0 1M', 'write -P 3 9M 64k'] },
];

describe.each(shapes)('check() with many clusters: $name', (shape) => {
  let base: string;
  let dir: string;
  beforeAll(() => {
    dir = tmp.path(shape.name.replace(/[^a-z0-9]+/gi, '-'));
    run('mkdir', ['-p', dir]);
    base = `${dir}/base.qcow2`;
    qemuCreate(base, 'qcow2', shape.size, shape.options ? { o: shape.options(dir) } : {});
    qemuIo(base, 'qcow2', shape.writes);
    if (shape.snapshot) {
      expect(run('qemu-img', ['snapshot', '-c', 'first', base]).code).toBe(0);
      qemuIo(base, 'qcow2', shape.snapshot);
    }
    if (shape.alignEnd) {
      const clusters = statSync(base).size / 65536;
      const missing = (32 - (clusters % 32)) % 32;
      if (missing > 0) qemuIo(base, 'qcow2', [`write -P 9 32M ${missing * 64}k`]);
      expect((statSync(base).size / 65536) % 32).toBe(0);
    }
  });

  damages.forEach((damage, index) => {
    it(damage.name, async () => {
      const file = `${dir}/damage${index}.qcow2`;
      copyFileSync(base, file);
      const layout = await layoutOf(file);
      if (!damage.poke(file, layout)) return;
      const report = await (await openQcow2(file)).check();
      expect(ourCheckNumbers(report), report.messages.slice(0, 20).join('\n')).toEqual(qemuCheckNumbers(file));
    });
  });
});
