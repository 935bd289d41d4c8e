/**
 * check({ repair }) for QED against `qemu-img check -r`: the need-check scan and flag, entries an interrupted
 * write leaves outside the file, and leaks (unreferenced file space, which qemu never frees and ic does). Every
 * repair is also killed at every write (the conformance kit's crash-state model) and each state judged by qemu-img.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, copyFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { BlockIO } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { crashStatesOf, qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { qedDriver, type QedImage } from '../src/index.js';
import { peekU64, pokeU64 } from './helpers.js';

const tmp = tempDir('ic-qed-repair-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;
const CLUSTER = 0x10000;
const L1 = 0x10000;
let serial = 0;

function copy(file: string, name: string): string {
  const out = tmp.path(`${serial++}-${name}.qed`);
  copyFileSync(file, out);
  return out;
}

async function icRepair(file: string, mode: 'leaks' | 'all') {
  const io = await FileIO.open(file, { writable: true });
  try {
    const image = (await qedDriver.open(io)) as QedImage;
    const report = await image.check({ repair: mode });
    return { report, again: await image.check(), needCheck: image.needCheck };
  } finally {
    await io.close();
  }
}

/** `qemu-img check --output=json` once: its exit status and report. */
function qemuCheckJson(file: string): { code: number; json: Record<string, unknown> | undefined } {
  const result = run('qemu-img', ['check', '-f', 'qed', '--output=json', file]);
  return { code: result.code, json: result.stdout.trim() ? (JSON.parse(result.stdout) as Record<string, unknown>) : undefined };
}

const needCheck = (file: string) => (peekU64(file, 16) & 2) !== 0;
const l2Of = (file: string, index = 0) => peekU64(file, L1 + index * 8);

/** A QED image with data in two L2 tables, written by qemu-io. */
function makeImage(name: string): string {
  const file = tmp.path(`${name}.qed`);
  qemuCreate(file, 'qed', 64 * M);
  qemuIo(file, 'qed', ['write -P 1 0 512k', 'write -P 2 1M 256k']);
  return file;
}

describe('need-check', () => {
  it('a writer killed with qemu-io abort: the scan finds nothing, the flag is cleared, nothing else changes', async () => {
    const file = makeImage('abort');
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 2M 128k', '-c', 'abort', file]);
    expect(needCheck(file)).toBe(true);
    const ours = copy(file, 'ours');
    const theirs = copy(file, 'theirs');
    const { report, needCheck: after } = await icRepair(ours, 'all');
    expect(run('qemu-img', ['check', '-r', 'all', '-f', 'qed', theirs]).code).toBe(0);
    expect(after).toBe(false);
    expect(needCheck(ours)).toBe(false);
    expect(report).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(qemuCheck(ours, 'qed').code).toBe(0);
    // qemu-img clears the same bit: the files are byte-identical.
    expect(sha256File(ours)).toBe(sha256File(theirs));
  });

  it('the feature model: need_check listed as removable; demote removes it by the same repair', async () => {
    const file = makeImage('demote');
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 2M 128k', '-c', 'abort', file]);
    const io = await FileIO.open(file, { writable: true });
    try {
      const image = (await qedDriver.open(io)) as QedImage;
      expect((await image.features()).map((feature) => [feature.name, feature.removal.possible])).toEqual([['need_check', true]]);
      expect((await image.demote(['need_check'])).changes).toEqual(['need-check flag cleared (tables checked)']);
      expect(await image.features()).toEqual([]);
    } finally {
      await io.close();
    }
    expect(needCheck(file)).toBe(false);
    expect(qemuCheck(file, 'qed').code).toBe(0);
  });

  it('an entry naming a cluster past the end (an allocating write whose data never arrived) is cleared, as qemu-img does', async () => {
    const file = makeImage('past-end');
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 2M 64k', '-c', 'abort', file]);
    const size = statSync(file).size;
    pokeU64(file, l2Of(file) + 40 * 8, size + 4 * CLUSTER);
    const ours = copy(file, 'ours');
    const theirs = copy(file, 'theirs');
    expect(qemuCheck(file, 'qed').code).toBe(2);
    const { report } = await icRepair(ours, 'all');
    const qemu = JSON.parse(run('qemu-img', ['check', '-r', 'all', '-f', 'qed', '--output=json', theirs]).stdout) as Record<string, number>;
    expect(report.corruptionsFixed).toBe(qemu['corruptions-fixed']);
    expect(report.corruptions).toBe(0);
    expect(qemuCheck(ours, 'qed').code).toBe(0);
    expect(qemuCompare(ours, 'qed', theirs, 'qed').code).toBe(0);
    expect(needCheck(ours)).toBe(false);
  });

  it('the same entry without the need-check flag is refused in one line, the file byte-identical', async () => {
    const file = makeImage('past-end-clean');
    pokeU64(file, l2Of(file) + 40 * 8, statSync(file).size + 4 * CLUSTER);
    expect(needCheck(file)).toBe(false);
    const before = sha256File(file);
    for (const mode of ['leaks', 'all'] as const) {
      await expect(icRepair(file, mode)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/need-check flag is clear[^\n]*nothing was written$/) });
    }
    expect(sha256File(file)).toBe(before);
  });

  it('a data cluster referenced twice is refused, the file byte-identical', async () => {
    const file = makeImage('shared');
    const l2 = l2Of(file);
    pokeU64(file, l2 + 3 * 8, peekU64(file, l2));
    const before = sha256File(file);
    await expect(icRepair(file, 'all')).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/referenced twice/) });
    expect(sha256File(file)).toBe(before);
  });
});

describe('leaks (qemu-img check -r never frees them)', () => {
  it('clusters past the last referenced one (a crash after the data write, before the L2 update): cut off', async () => {
    const file = makeImage('tail');
    appendFileSync(file, new Uint8Array(3 * CLUSTER).fill(0x5a));
    expect(qemuCheck(file, 'qed').code).toBe(3);
    const theirs = copy(file, 'theirs');
    expect(run('qemu-img', ['check', '-r', 'leaks', '-f', 'qed', theirs]).code).toBe(3);
    const ours = copy(file, 'ours');
    const { report } = await icRepair(ours, 'leaks');
    expect(report.leaksFixed).toBe(3);
    expect(qemuCheck(ours, 'qed').code).toBe(0);
    expect(qemuCompare(ours, 'qed', file, 'qed').code).toBe(0);
  });

  it('holes inside the file: data clusters and an L2 table above them move down, then the file is cut', async () => {
    const file = makeImage('holes');
    // Five data clusters of the first table unallocated: holes below the second L2 table and its data.
    const l2 = l2Of(file);
    for (let index = 1; index <= 5; index++) pokeU64(file, l2 + index * 8, 0);
    const damaged = copy(file, 'damaged');
    expect(qemuCheck(file, 'qed').code).toBe(3);
    const { report } = await icRepair(file, 'leaks');
    expect(report.leaksFixed).toBe(5);
    expect(report.messages.join('\n')).toMatch(/Moved \d+ units/);
    expect(qemuCheck(file, 'qed').code).toBe(0);
    expect(qemuCompare(file, 'qed', damaged, 'qed').code).toBe(0);
    expect(statSync(file).size).toBe(statSync(damaged).size - 5 * CLUSTER);
    // Still usable by qemu: new data written, old and new read back.
    const out = qemuIo(file, 'qed', ['write -P 9 4M 64k', 'read -P 9 4M 64k', 'read -P 2 1M 256k', 'read -P 1 0 64k']);
    expect(out).not.toMatch(/fail/i);
    expect(qemuCheck(file, 'qed').code).toBe(0);
  });

  it('a clean image is not written at all', async () => {
    const file = makeImage('clean');
    const before = sha256File(file);
    const { report } = await icRepair(file, 'all');
    expect(report).toMatchObject({ corruptions: 0, leaks: 0 });
    expect(report.leaksFixed).toBeUndefined();
    expect(sha256File(file)).toBe(before);
  });

  it('refuses an image opened read-only', async () => {
    const file = makeImage('read-only');
    const io = await FileIO.open(file);
    try {
      await expect((await qedDriver.open(io)).check!({ repair: 'all' })).rejects.toMatchObject({ code: 'INVALID' });
    } finally {
      await io.close();
    }
  });
});

describe('repair killed at every write', () => {
  /** Every crash state of ic's repair of `damaged`: same content as `reference`, never worse, clean or completed by a rerun. */
  async function killEverywhere(damaged: string, reference: string, name: string) {
    const before = qemuCheck(damaged, 'qed').json ?? {};
    const tally = { states: 0, acceptedAsIs: 0, completedByRerun: 0 };
    const file = tmp.path(`${name}-state.qed`);
    const repair = async (io: BlockIO) => (await qedDriver.open(io)).check!({ repair: 'all' });
    for await (const { where, bytes } of crashStatesOf(new Uint8Array(readFileSync(damaged)), repair)) {
      tally.states++;
      writeFileSync(file, bytes);
      const verdict = qemuCheckJson(file);
      // Until the entry naming a cluster past the end is cleared, qemu refuses to read through it (compare: error).
      if (qemuCompare(file, 'qed', reference, 'qed').code !== 0) expect(verdict.code, where).toBe(2);
      const count = (key: string) => (verdict.json?.[key] as number | undefined) ?? 0;
      expect(count('corruptions'), where).toBeLessThanOrEqual((before['corruptions'] as number | undefined) ?? 0);
      expect(count('leaks'), where).toBeLessThanOrEqual((before['leaks'] as number | undefined) ?? 0);
      if (verdict.code === 0 && !needCheck(file)) {
        tally.acceptedAsIs++;
        continue;
      }
      await icRepair(file, 'all');
      expect(qemuCheckJson(file).code, `rerun after ${where}`).toBe(0);
      expect(needCheck(file), `rerun after ${where}`).toBe(false);
      expect(qemuCompare(file, 'qed', reference, 'qed').code, `rerun after ${where}`).toBe(0);
      tally.completedByRerun++;
    }
    expect(tally.acceptedAsIs).toBeGreaterThan(0);
    expect(tally.completedByRerun).toBeGreaterThan(0);
    return tally;
  }

  it('need-check with an entry past the end, and holes that a table and data move into', { timeout: 600_000 }, async () => {
    const file = makeImage('killed');
    const l2 = l2Of(file);
    for (let index = 1; index <= 5; index++) pokeU64(file, l2 + index * 8, 0);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 3M 64k', '-c', 'abort', file]);
    pokeU64(file, l2 + 40 * 8, statSync(file).size + 4 * CLUSTER);
    const reference = copy(file, 'reference');
    expect(run('qemu-img', ['check', '-r', 'all', '-f', 'qed', reference]).code).toBe(3);
    const tally = await killEverywhere(file, reference, 'killed');
    console.log(`qed -r all killed: ${JSON.stringify(tally)}`);
  });
});
