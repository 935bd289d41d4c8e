/**
 * features() and demote() of zeroed grains (monolithicSparse made with zeroed_grain=on, GTEs of 1 left by
 * `qemu-io write -z`), judged by qemu-img: with and without a parent, and killed at every write.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import type { BlockIO } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { crashStatesOf, qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { vmdkDriver, type SparseVmdkImage } from '../src/index.js';

requireQemu();
const tmp = tempDir('ic-vmdk-demote-');
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;
let serial = 0;

/** A zeroed_grain=on monolithicSparse with data, zero writes over data and over nothing, over a VMDK parent or not. */
/** With `twoTables`, a 64 MiB disk with one more zero write at 40M, in the second grain table (a GT maps 32 MiB). */
function makeImage(parent: boolean, twoTables = false): { dir: string; image: string; original: string } {
  const size = twoTables ? 64 * M : 8 * M;
  const dir = tmp.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/image.vmdk`;
  if (parent) {
    qemuCreate(`${dir}/base.vmdk`, 'vmdk', size);
    qemuIo(`${dir}/base.vmdk`, 'vmdk', ['write -P 0xbb 0 8M', ...(twoTables ? ['write -P 0xbc 40M 1M'] : [])]);
    qemuCreate(image, 'vmdk', size, { o: 'zeroed_grain=on', backing: 'base.vmdk', backingFormat: 'vmdk', cwd: dir });
  } else {
    qemuCreate(image, 'vmdk', size, { o: 'zeroed_grain=on' });
  }
  qemuIo(image, 'vmdk', ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 1M 128k', 'write -P 2 2M 64k', 'write -z 5M 64k', ...(twoTables ? ['write -z 40M 64k'] : [])]);
  const original = `${dir}/original.vmdk`;
  copyFileSync(image, original);
  return { dir, image, original };
}

/** Header version and flags, and the GTEs of the primary and the redundant tables (in GD order). */
function layout(file: string): { version: number; flags: number; primary: number[]; redundant: number[] } {
  const bytes = readFileSync(file);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const gtes = view.getUint32(44, true);
  const capacity = Number(view.getBigUint64(12, true));
  const grain = Number(view.getBigUint64(20, true));
  const gdEntries = Math.ceil(capacity / (gtes * grain));
  const tables = (gdSector: number): number[] => {
    const out: number[] = [];
    for (let index = 0; index < gdEntries; index++) {
      const gt = view.getUint32(gdSector * 512 + index * 4, true);
      for (let entry = 0; entry < gtes; entry++) out.push(gt === 0 ? 0 : view.getUint32(gt * 512 + entry * 4, true));
    }
    return out;
  };
  return { version: view.getUint32(4, true), flags: view.getUint32(8, true), primary: tables(Number(view.getBigUint64(56, true))), redundant: tables(Number(view.getBigUint64(48, true))) };
}

async function withWritable<T>(file: string, body: (image: SparseVmdkImage) => Promise<T>): Promise<T> {
  const io = await FileIO.open(file, { writable: true });
  try {
    return await body((await vmdkDriver.open(io)) as SparseVmdkImage);
  } finally {
    await io.close();
  }
}

const demoted = (file: string): boolean => {
  const { flags, primary, redundant } = layout(file);
  return (flags & 4) === 0 && !primary.includes(1) && !redundant.includes(1);
};

describe('zeroed grains', () => {
  it('qemu writes version 2, flags bit 2 and GTEs of 1 in both table copies; features() lists them', async () => {
    const { image } = makeImage(false);
    const { version, flags, primary, redundant } = layout(image);
    expect(version).toBe(2);
    expect(flags & 6).toBe(6); // redundant GD and zeroed grain
    // 64k/64k = 1, 1M/64k = 16, 17, 5M = 80 (a zero write over data sets its GTE to 1 too).
    expect(primary.flatMap((gte, index) => (gte === 1 ? [index] : []))).toEqual([1, 16, 17, 80]);
    expect(redundant).toEqual(primary);
    await withWritable(image, async (vmdk) => {
      const features = await vmdk.features();
      expect(features.map((feature) => feature.name)).toEqual(['zeroed_grains']);
      expect(features[0]).toMatchObject({ kind: 'incompatible', removal: { possible: true, cost: 'metadata' } });
      expect(features[0]!.description).toContain('4 grain table entries of 1');
    });
  });

  it.each([false, true])('demote (parent: %s): flag cleared, version 1, no GTE 1, qemu-img check clean, compare identical, writes read back', async (parent) => {
    const { image, original } = makeImage(parent);
    const report = await withWritable(image, (vmdk) => vmdk.demote(['zeroed_grains']));
    expect(report.changes).toEqual([`zeroed grains expanded: 4 (${parent ? '4 grains of zeros written' : 'made unallocated'}); zeroed-grain flag cleared`]);
    const after = layout(image);
    expect(after.version).toBe(1);
    expect(after.flags & 4).toBe(0);
    expect(demoted(image)).toBe(true);
    expect(after.redundant).toEqual(after.primary);
    expect(qemuCheck(image, 'vmdk').code).toBe(0);
    expect(qemuCompare(image, 'vmdk', original, 'vmdk').code).toBe(0);
    await withWritable(image, async (vmdk) => {
      expect(await vmdk.features()).toEqual([]);
      expect((await vmdk.check()).corruptions).toBe(0);
    });
    const io = qemuIo(image, 'vmdk', ['write -P 7 1M 64k', 'read -P 7 1M 64k', `read -P 0 ${M + 64 * 1024} 64k`, 'read -P 1 0 64k', 'read -P 0 64k 64k', 'read -P 0 5M 64k']);
    expect(io).not.toMatch(/fail|mismatch/i);
  });

  it('a flag without any GTE 1 costs one header write; a damaged image is refused byte-identical', async () => {
    const dir = tmp.path(`${serial++}`);
    run('mkdir', ['-p', dir]);
    const flagOnly = `${dir}/flag.vmdk`;
    qemuCreate(flagOnly, 'vmdk', 8 * M, { o: 'zeroed_grain=on' });
    qemuIo(flagOnly, 'vmdk', ['write -P 1 0 64k']);
    await withWritable(flagOnly, async (vmdk) => expect((await vmdk.features())[0]).toMatchObject({ name: 'zeroed_grains', removal: { possible: true, cost: 'header' } }));
    await withWritable(flagOnly, (vmdk) => vmdk.demote(['zeroed_grains']));
    expect(layout(flagOnly)).toMatchObject({ version: 1 });
    expect(demoted(flagOnly)).toBe(true);
    expect(qemuCheck(flagOnly, 'vmdk').code).toBe(0);

    const { image } = makeImage(false);
    // The redundant table disagrees with the primary one on a data grain: damage nothing can settle.
    const bytes = readFileSync(image);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const rgtSector = view.getUint32(Number(view.getBigUint64(48, true)) * 512, true);
    view.setUint32(rgtSector * 512, 12345, true);
    writeFileSync(image, bytes);
    const before = sha256File(image);
    await expect(withWritable(image, (vmdk) => vmdk.demote(['zeroed_grains']))).rejects.toThrow(/^vmdk: ERROR: .*not removed from a damaged image; nothing was written/);
    expect(sha256File(image)).toBe(before);
  });
});

describe('demote killed at every write', () => {
  it.each([
    [false, false],
    [true, false],
    [true, true],
  ])('parent: %s, two grain tables: %s — each state accepted as is or completed by a rerun, the content always the original', { timeout: 600_000 }, async (parent, twoTables) => {
    const { dir, image, original } = makeImage(parent, twoTables);
    const tally = { states: 0, acceptedAsIs: 0, completedByRerun: 0, tablesDisagree: 0 };
    const state = `${dir}/state.vmdk`;
    const demote = async (io: BlockIO) => (await vmdkDriver.open(io)).demote!(['zeroed_grains']);
    for await (const { where, bytes } of crashStatesOf(new Uint8Array(readFileSync(image)), demote, { samples: 24, maxTearPoints: 3, maxSubsetOps: 6 })) {
      tally.states++;
      writeFileSync(state, bytes);
      expect(qemuCompare(state, 'vmdk', original, 'vmdk').code, where).toBe(0);
      expect(qemuCheck(state, 'vmdk').code, where).toBe(0);
      const { primary, redundant } = layout(state);
      // Killed between the two copies of a table: ic's check calls that a corruption, the rerun settles it.
      if (primary.some((gte, index) => gte !== redundant[index])) tally.tablesDisagree++;
      if (demoted(state)) {
        tally.acceptedAsIs++;
        continue;
      }
      await withWritable(state, (vmdk) => vmdk.demote(['zeroed_grains']));
      expect(demoted(state), `rerun after ${where}`).toBe(true);
      expect(qemuCheck(state, 'vmdk').code, `rerun after ${where}`).toBe(0);
      expect(qemuCompare(state, 'vmdk', original, 'vmdk').code, `rerun after ${where}`).toBe(0);
      await withWritable(state, async (vmdk) => expect((await vmdk.check()).corruptions, `rerun after ${where}`).toBe(0));
      tally.completedByRerun++;
    }
    expect(tally.acceptedAsIs).toBeGreaterThan(0);
    expect(tally.completedByRerun).toBeGreaterThan(0);
    expect(tally.tablesDisagree).toBeGreaterThan(0);
    console.log(`vmdk demote zeroed_grains (parent ${parent}, two tables ${twoTables}) killed: ${JSON.stringify(tally)}`);
  });
});
