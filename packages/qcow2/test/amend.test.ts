/**
 * amend (qemu-img amend's compat and lazy_refcounts), the feature model and demote, judged by qemu-img: info shows
 * what was asked and nothing else changed, compare finds the guest content unchanged, check finds the image clean;
 * the downgrade killed at every write (crash-state model) reads the same in every state.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import type { BlockIO } from '@ic/core';
import { crashStatesOf, qemuCompare, qemuCreate, qemuInfo, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { qcow2Driver } from '../src/index.js';
import { inflate, qemuCheckVerdict, withWritable } from './helpers.js';

const tmp = tempDir('ic-qcow2-amend-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;
let serial = 0;

/** A v3 image with data, zero clusters with and without a host cluster, optionally over a backing file. */
function makeImage(backing: boolean): { image: string; original: string } {
  const dir = tmp.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/image.qcow2`;
  if (backing) {
    const base = `${dir}/base.raw`;
    qemuCreate(base, 'raw', 16 * M);
    qemuIo(base, 'raw', ['write -P 0xbb 0 16M']);
    qemuCreate(image, 'qcow2', 16 * M, { backing: 'base.raw', backingFormat: 'raw', cwd: dir });
  } else {
    qemuCreate(image, 'qcow2', 16 * M);
  }
  // Zero with a host cluster (written first, then zeroed in place) and plain zero clusters.
  qemuIo(image, 'qcow2', ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 4M 128k', 'write -P 2 8M 64k']);
  const original = `${dir}/original.qcow2`;
  copyFileSync(image, original);
  return { image, original };
}

const formatSpecific = (file: string) => qemuInfo(file, 'qcow2')['format-specific']?.data ?? {};

describe('amend -o compat=0.10 and demote', () => {
  it.each([false, true])('zero clusters (backing file: %s): version 2, same content, clean', async (backing) => {
    const { image, original } = makeImage(backing);
    const before = await withWritable(image, async (opened) => (await opened.features()).map((feature) => feature.name));
    expect(before).toContain('zero_clusters');
    const report = await withWritable(image, (opened) => opened.amend({ compat: '0.10' }));
    expect(report.changes).toContain('compat 1.1 -> 0.10');
    expect(report.changes.some((change) => change.startsWith('zero clusters expanded'))).toBe(true);
    expect(formatSpecific(image).compat).toBe('0.10');
    expect(qemuCheckVerdict(image).exit).toBe(0);
    expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
    const out = qemuIo(image, 'qcow2', ['write -P 9 12M 64k', 'read -P 9 12M 64k', 'read -P 2 8M 64k', 'read -P 0 4M 128k']);
    expect(out).not.toMatch(/fail/i);
    expect(qemuCheckVerdict(image).exit).toBe(0);
    expect(await withWritable(image, (opened) => opened.features())).toEqual([]);
  });

  it('demote without --feature removes everything removable: the same as compat=0.10', async () => {
    const { image, original } = makeImage(true);
    const removable = await withWritable(image, async (opened) => (await opened.features()).filter((f) => f.removal.possible).map((f) => f.name));
    await withWritable(image, (opened) => opened.demote(removable));
    expect(formatSpecific(image).compat).toBe('0.10');
    expect(qemuCheckVerdict(image).exit).toBe(0);
    expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
  });

  it('demote --feature zero_clusters keeps version 3', async () => {
    const { image, original } = makeImage(false);
    await withWritable(image, (opened) => opened.demote(['zero_clusters']));
    expect(formatSpecific(image).compat).toBe('1.1');
    expect(qemuCheckVerdict(image).exit).toBe(0);
    expect(qemuCompare(image, 'qcow2', original, 'qcow2').code).toBe(0);
    expect((await withWritable(image, (opened) => opened.features())).map((f) => f.name)).toEqual(['v3']);
  });

  it('refuses what cannot be downgraded in place, writing nothing (here: 8-bit refcounts without refcount_bits=16)', async () => {
    const file = tmp.path('bits.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'refcount_bits=8' });
    const bytes = readFileSync(file);
    await expect(withWritable(file, (opened) => opened.amend({ compat: '0.10' }))).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/refcount_bits is 8/) });
    expect(readFileSync(file).equals(bytes)).toBe(true);
  });
});

describe('amend -o lazy_refcounts', () => {
  it('off keeps every other option; on sets it back', async () => {
    const file = tmp.path('lazy.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'lazy_refcounts=on,refcount_bits=32' });
    qemuIo(file, 'qcow2', ['write -P 1 0 64k']);
    const before = formatSpecific(file);
    expect(before['lazy-refcounts']).toBe(true);
    await withWritable(file, (opened) => opened.amend({ lazy_refcounts: false }));
    expect(formatSpecific(file)).toEqual({ ...before, 'lazy-refcounts': false });
    await withWritable(file, (opened) => opened.amend({ lazy_refcounts: true }));
    expect(formatSpecific(file)).toEqual(before);
    expect(qemuCheckVerdict(file).exit).toBe(0);
  });

  it('off on a dirty image rebuilds the refcounts first', async () => {
    const file = tmp.path('lazy-dirty.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'lazy_refcounts=on' });
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'abort', file]);
    expect(qemuCheckVerdict(file).exit).toBe(2);
    const report = await withWritable(file, (opened) => opened.amend({ lazy_refcounts: false }));
    expect(report.changes[0]).toMatch(/dirty bit resolved/);
    expect(qemuCheckVerdict(file).exit).toBe(0);
    expect(qemuInfo(file, 'qcow2')['dirty-flag']).toBe(false);
    expect(formatSpecific(file)['lazy-refcounts']).toBe(false);
  });

  it('on with compat=0.10 is refused like qemu-img refuses it', async () => {
    const file = tmp.path('lazy-v2.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'compat=0.10' });
    await expect(withWritable(file, (opened) => opened.amend({ lazy_refcounts: true }))).rejects.toMatchObject({ code: 'INVALID' });
    expect(run('qemu-img', ['amend', '-o', 'lazy_refcounts=on', file]).code).not.toBe(0);
  });
});

describe('compat=0.10 killed at every write', { timeout: 600_000 }, () => {
  it.each([false, true])('backing file: %s', async (backing) => {
    const { image, original } = makeImage(backing);
    const state = `${image}.state`;
    const tally = { states: 0, acceptedAsIs: 0, completedByRerun: 0, leaks: 0 };
    const amend = async (io: BlockIO) => (await qcow2Driver.open(io, { inflate })).amend!({ compat: '0.10' });
    // Over a backing file fewer generators than the kit's default (the downgrade then has many epochs and a refcount
    // rebuild): every prefix of every epoch and every single write lost. Torn writes of the rebuild are covered by
    // repair-killed.test.ts.
    const options = backing ? { generators: ['prefix', 'omit-one'] as const } : undefined;
    for await (const { where, bytes } of crashStatesOf(new Uint8Array(readFileSync(image)), amend, options)) {
      tally.states++;
      writeFileSync(state, bytes);
      expect(qemuCompare(state, 'qcow2', original, 'qcow2').code, where).toBe(0);
      const verdict = qemuCheckVerdict(state);
      // Leaks only between the rebuild that counts the new clusters of zeros and the switch of their entries.
      expect(verdict.numbers.corruptions, where).toBe(0);
      if (verdict.exit === 3) tally.leaks++;
      if (verdict.exit === 0 && formatSpecific(state).compat === '0.10') {
        tally.acceptedAsIs++;
        continue;
      }
      await withWritable(state, (opened) => opened.amend({ compat: '0.10' }));
      if (qemuCheckVerdict(state).exit === 3) await withWritable(state, (opened) => opened.check({ repair: 'leaks' }));
      expect(qemuCheckVerdict(state).exit, `rerun after ${where}`).toBe(0);
      expect(formatSpecific(state).compat, `rerun after ${where}`).toBe('0.10');
      expect(qemuCompare(state, 'qcow2', original, 'qcow2').code, `rerun after ${where}`).toBe(0);
      tally.completedByRerun++;
    }
    expect(tally.acceptedAsIs).toBeGreaterThan(0);
    if (!backing) expect(tally.leaks).toBe(0);
    console.log(`compat=0.10 (backing ${backing}): ${JSON.stringify(tally)}`);
  });
});
