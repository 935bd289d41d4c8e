/**
 * features() and demote() of zero clusters (L2 entries equal to 1, what `qemu-io write -z` leaves in a QED), judged
 * by qemu-img: with and without a backing file, and killed at every write.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { BlockIO } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { crashStatesOf, qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { qedDriver, type QedImage } from '../src/index.js';
import { peekU64, pokeU64 } from './helpers.js';

const tmp = tempDir('ic-qed-demote-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;
const L1 = 0x10000;
let serial = 0;

/** A QED made by qemu with data, zero writes over data and over nothing, over a raw backing file or not. */
function makeImage(backing: boolean, o?: string): { dir: string; image: string; original: string } {
  const dir = tmp.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/image.qed`;
  if (backing) {
    qemuCreate(`${dir}/base.raw`, 'raw', 8 * M);
    qemuIo(`${dir}/base.raw`, 'raw', ['write -P 0xbb 0 8M']);
    qemuCreate(image, 'qed', 8 * M, { backing: 'base.raw', backingFormat: 'raw', cwd: dir, ...(o ? { o } : {}) });
  } else {
    qemuCreate(image, 'qed', 8 * M, o ? { o } : {});
  }
  qemuIo(image, 'qed', ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 1M 128k', 'write -P 2 2M 64k', 'write -z 5M 64k']);
  const original = `${dir}/original.qed`;
  copyFileSync(image, original);
  return { dir, image, original };
}

/** Every L2 entry of the first table. */
function l2Entries(file: string): bigint[] {
  const l2 = peekU64(file, L1);
  const bytes = readFileSync(file).subarray(l2, l2 + 0x40000);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.byteLength / 8 }, (_, index) => view.getBigUint64(index * 8, true));
}

async function withWritable<T>(file: string, body: (image: QedImage) => Promise<T>): Promise<T> {
  const io = await FileIO.open(file, { writable: true });
  try {
    return await body((await qedDriver.open(io)) as QedImage);
  } finally {
    await io.close();
  }
}

describe('zero clusters', () => {
  it('qemu-io write -z over unallocated clusters writes L2 entries of 1; the map reads them as zeros', async () => {
    const { image } = makeImage(true);
    const entries = l2Entries(image);
    // 1M/64k = 16, 17; 5M = 80. The zero write over data (64k) keeps the data cluster, filled with zeros.
    expect([16, 17, 80].map((index) => entries[index])).toEqual([1n, 1n, 1n]);
    expect(entries.filter((entry) => entry === 1n)).toHaveLength(3);
    await withWritable(image, async (qed) => {
      const features = await qed.features();
      expect(features.map((feature) => feature.name)).toEqual(['zero_clusters', 'backing_file', 'backing_format_no_probe']);
      expect(features[0]).toMatchObject({ kind: 'incompatible', removal: { possible: true, cost: 'zeros' } });
      expect(features[0]!.description).toMatch(/^3 L2 entries are 1/);
      const zeroExtents = [];
      for await (const batch of qed.map()) for (const extent of batch) if (extent.kind === 'zero') zeroExtents.push([extent.guestOffset, extent.length]);
      expect(zeroExtents).toEqual([[M, 128 * 1024], [5 * M, 64 * 1024]]);
    });
  });

  it.each([false, true])('demote (backing file: %s): no entry 1 left, qemu-img check clean, compare identical, writes read back', async (backing) => {
    const { image, original } = makeImage(backing);
    const report = await withWritable(image, (qed) => qed.demote(['zero_clusters']));
    expect(report.changes).toEqual([backing ? 'zero clusters expanded: 3 (3 clusters of zeros written)' : 'zero clusters expanded: 3 (made unallocated)']);
    expect(l2Entries(image).filter((entry) => entry === 1n)).toHaveLength(0);
    expect(qemuCheck(image, 'qed').code).toBe(0);
    expect(qemuCompare(image, 'qed', original, 'qed').code).toBe(0);
    await withWritable(image, async (qed) => expect((await qed.features()).map((feature) => feature.name)).not.toContain('zero_clusters'));
    const io = qemuIo(image, 'qed', ['write -P 7 1M 64k', 'read -P 7 1M 64k', `read -P 0 ${M + 64 * 1024} 64k`, 'read -P 1 0 64k', 'read -P 0 64k 64k']);
    expect(io).not.toMatch(/fail|mismatch/i);
  });

  it('demote of an image without zero entries, or with need-check set: nothing written', async () => {
    const dir = tmp.path(`${serial++}`);
    run('mkdir', ['-p', dir]);
    const plain = `${dir}/plain.qed`;
    qemuCreate(plain, 'qed', 8 * M);
    qemuIo(plain, 'qed', ['write -P 1 0 64k']);
    await withWritable(plain, async (qed) => expect((await qed.features()).map((feature) => feature.name)).toEqual([]));
    const { image } = makeImage(false);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 3M 64k', '-c', 'abort', image]);
    const before = sha256File(image);
    await expect(withWritable(image, (qed) => qed.demote(['zero_clusters']))).rejects.toThrow(/need-check flag is set/);
    expect(sha256File(image)).toBe(before);
    const both = await withWritable(image, (qed) => qed.demote(['need_check', 'zero_clusters']));
    expect(both.changes).toEqual(['need-check flag cleared (tables checked)', 'zero clusters expanded: 3 (made unallocated)']);
    expect(qemuCheck(image, 'qed').code).toBe(0);
  });
});

describe('features() of a damaged image', () => {
  it('an L1 entry outside the file with need-check set: need_check and zero_clusters still listed, demote of both repairs', async () => {
    const { image, original } = makeImage(false);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 3M 64k', '-c', 'abort', image]);
    copyFileSync(image, original);
    // L1 entry 1 maps guest 2 GiB on, past this 8 MiB disk: the content stays, the table offset is invalid.
    pokeU64(image, L1 + 8, statSync(image).size + 0x100000);
    const names = await withWritable(image, async (qed) => (await qed.features()).map((feature) => feature.name));
    expect(names).toEqual(['need_check', 'zero_clusters']);
    const report = await withWritable(image, (qed) => qed.demote(['need_check', 'zero_clusters']));
    expect(report.changes).toEqual(['need-check flag cleared (tables checked)', 'zero clusters expanded: 3 (made unallocated)']);
    expect(qemuCheck(image, 'qed').code).toBe(0);
    expect(qemuCompare(image, 'qed', original, 'qed').code).toBe(0);
  });
});

describe('demote killed at every write', () => {
  // 4 KiB clusters, table_size 2: an L2 table maps 4 MiB, so the zero entries at 1M and 5M lie in two tables,
  // switched by two writes that a crash can split (leaving new clusters unreferenced).
  it.each([
    [false, undefined],
    [true, undefined],
    [true, 'cluster_size=4096,table_size=2'],
  ] as const)('backing file: %s, -o %s — each state accepted as is or completed by a rerun, the content always the original', { timeout: 600_000 }, async (backing, o) => {
    const { dir, image, original } = makeImage(backing, o);
    const tally = { states: 0, acceptedAsIs: 0, completedByRerun: 0, leaked: 0, holesPackedFirst: 0 };
    const state = `${dir}/state.qed`;
    const demote = async (io: BlockIO) => (await qedDriver.open(io)).demote!(['zero_clusters']);
    const zeroEntries = async (file: string) => withWritable(file, async (qed) => (await qed.features()).some((feature) => feature.name === 'zero_clusters'));
    for await (const { where, bytes } of crashStatesOf(new Uint8Array(readFileSync(image)), demote, { samples: 24, maxTearPoints: 3, maxSubsetOps: 6 })) {
      tally.states++;
      writeFileSync(state, bytes);
      // Old entries (1) and new ones read the same: every state has the original content.
      expect(qemuCompare(state, 'qed', original, 'qed').code, where).toBe(0);
      const verdict = qemuCheck(state, 'qed');
      expect([0, 3], where).toContain(verdict.code);
      if (verdict.code === 3) tally.leaked++;
      if (verdict.code === 0 && !(await zeroEntries(state))) {
        tally.acceptedAsIs++;
        continue;
      }
      const rerun = await withWritable(state, (qed) => qed.demote(['zero_clusters']));
      if (rerun.changes.includes('unreferenced clusters freed first (check -r leaks)')) tally.holesPackedFirst++;
      expect(qemuCheck(state, 'qed').code, `rerun after ${where}`).toBe(0);
      expect(await zeroEntries(state), `rerun after ${where}`).toBe(false);
      expect(qemuCompare(state, 'qed', original, 'qed').code, `rerun after ${where}`).toBe(0);
      tally.completedByRerun++;
    }
    expect(tally.acceptedAsIs).toBeGreaterThan(0);
    expect(tally.completedByRerun).toBeGreaterThan(0);
    if (o) expect(tally.holesPackedFirst).toBeGreaterThan(0);
    console.log(`qed demote zero_clusters (backing ${backing}, -o ${o ?? 'default'}) killed: ${JSON.stringify(tally)}`);
  });
});
