/**
 * The repair killed at every write: its trace is recorded and every crash state the conformance kit's model
 * produces (a prefix of each epoch, one write left out, torn at 512/4096 bytes, every subset of an epoch,
 * extending writes that left only zeros, random mixes) is written to a file and judged by qemu-img:
 *  - guest content identical to the image qemu-img check -r all repaired (qemu-img compare);
 *  - never more corruptions or leaks than the damaged image had (qemu-img check), and no leak at all where the
 *    damaged image had none (the rebuild leaves none at any point);
 *  - accepted by qemu-img check as it is, or completed by a rerun of the same repair (then clean, same content).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import type { BlockIO } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { crashStatesOf, qemuCompare, qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { qcow2Driver } from '../src/index.js';
import { inflate, poke, qemuCheckVerdict } from './helpers.js';

const tmp = tempDir('ic-qcow2-repair-killed-');
beforeAll(() => requireQemu());
afterAll(() => tmp.cleanup());

const M = 1024 * 1024;

async function repairFile(file: string, mode: 'leaks' | 'all'): Promise<void> {
  const io = await FileIO.open(file, { writable: true });
  try {
    await (await qcow2Driver.open(io, { inflate })).check!({ repair: mode });
  } finally {
    await io.close();
  }
}

interface Tally {
  states: number;
  acceptedAsIs: number;
  completedByRerun: number;
}

/** Records ic's repair of `damaged`, then judges every crash state. */
async function killEverywhere(damaged: string, mode: 'leaks' | 'all', name: string): Promise<Tally> {
  const reference = tmp.path(`${name}-qemu.qcow2`);
  copyFileSync(damaged, reference);
  expect(run('qemu-img', ['check', '-r', mode, '-f', 'qcow2', reference]).code).toBe(0);
  const before = qemuCheckVerdict(damaged);

  const tally: Tally = { states: 0, acceptedAsIs: 0, completedByRerun: 0 };
  const file = tmp.path(`${name}-state.qcow2`);
  const repair = async (io: BlockIO) => (await qcow2Driver.open(io, { inflate })).check!({ repair: mode });
  for await (const { where, bytes } of crashStatesOf(new Uint8Array(readFileSync(damaged)), repair, { samples: 24, maxTearPoints: 3, maxSubsetOps: 6 })) {
    tally.states++;
    writeFileSync(file, bytes);
    expect(qemuCompare(file, 'qcow2', reference, 'qcow2').code, where).toBe(0);
    const verdict = qemuCheckVerdict(file);
    expect(verdict.numbers.corruptions, where).toBeLessThanOrEqual(before.numbers.corruptions);
    expect(verdict.numbers.leaks, where).toBeLessThanOrEqual(before.numbers.leaks);
    if (verdict.exit === 0) {
      tally.acceptedAsIs++;
      continue;
    }
    await repairFile(file, mode);
    expect(qemuCheckVerdict(file).exit, `rerun after ${where}`).toBe(0);
    expect(qemuCompare(file, 'qcow2', reference, 'qcow2').code, `rerun after ${where}`).toBe(0);
    tally.completedByRerun++;
  }
  // The trace reaches the repaired image, and the untouched one is among the states.
  expect(tally.acceptedAsIs).toBeGreaterThan(0);
  expect(tally.completedByRerun).toBeGreaterThan(0);
  return tally;
}

describe('repair killed at every write', { timeout: 600_000 }, () => {
  it('rebuild of a dirty image with lazy refcounts (-r all)', async () => {
    const dirty = tmp.path('dirty.qcow2');
    qemuCreate(dirty, 'qcow2', 64 * M, { o: 'lazy_refcounts=on' });
    qemuIo(dirty, 'qcow2', ['write -P 7 0 1M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'write -P 2 8M 192k', '-c', 'abort', dirty]);
    const tally = await killEverywhere(dirty, 'all', 'dirty');
    expect(qemuCheckVerdict(dirty).numbers.leaks).toBe(0);
    console.log(`dirty -r all: ${JSON.stringify(tally)}`);
  });

  it.each(['leaks', 'all'] as const)('leaks left by a killed qemu writer (-r %s)', async (mode) => {
    const leaky = tmp.path(`leaky-${mode}.qcow2`);
    qemuCreate(leaky, 'qcow2', 16 * M, { o: 'cluster_size=512' });
    qemuIo(leaky, 'qcow2', ['write -P 1 0 64k']);
    run('qemu-io', ['-t', 'writeback', '--image-opts', '-c', 'write -P 2 4M 1M', '-c', 'abort', `driver=qcow2,file.filename=${leaky},refcount-cache-size=2048,l2-cache-size=1048576`]);
    expect(qemuCheckVerdict(leaky).exit).toBe(3);
    const tally = await killEverywhere(leaky, mode, `leaky-${mode}`);
    console.log(`leaky -r ${mode}: ${JSON.stringify(tally)}`);
  });

  it('refcount too low on a snapshot-shared cluster, then its COPIED flag (-r all, in place)', async () => {
    const file = tmp.path('snapshots.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    qemuIo(file, 'qcow2', ['write -P 1 0 256k']);
    expect(run('qemu-img', ['snapshot', '-c', 'one', file]).code).toBe(0);
    poke(file, 0x20000 + 5 * 2, [0, 1]);
    const tally = await killEverywhere(file, 'all', 'snapshots');
    console.log(`snapshot refcount -r all: ${JSON.stringify(tally)}`);
  });
});
