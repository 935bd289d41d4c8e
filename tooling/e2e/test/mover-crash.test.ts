/**
 * Crash campaigns (packages/conformance's machinery: every crash state a recorded run can leave under the
 * sector-atomic models: prefixes, a write omitted, torn writes, subsets of an epoch, random states, and crashes
 * of the recovery itself) for ic defrag and ic compact on qemu-made QED, VMDK and qcow2 images. Every state must read
 * the pristine guest content, as it is or after recover(); after a recovery the image must also be leak-free.
 * Under IC_KIT_COVERAGE=covering (`npm test`'s default) a third of the random states; full: 100 per case.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { compactImage, defragImage, MemoryIO, type BlockIO } from '@ic/core';
import { coverageOf, expectNoBadStates, runCrashCampaign, summariseCampaign, type GeneratorName } from '@ic/conformance';
import { requireQemu, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

const GENERATORS: GeneratorName[] = ['prefix', 'omit-one', 'tear-512', 'tear-4096', 'subsets', 'extension', 'random'];

interface Case {
  image: MoverImage;
  stride: number;
  operation: 'defrag' | 'defrag --max-moves 12' | 'compact --zero-scan';
}

const cases: Case[] = [
  { image: { label: 'qed 64k reverse', format: 'qed', size: '16M', clusterSize: 65536, order: reverse(8) }, stride: 1, operation: 'defrag' },
  { image: { label: 'qed 4k, 3 L2 tables, random', format: 'qed', o: 'cluster_size=4k,table_size=4', size: '32M', clusterSize: 4096, order: shuffled(10, 5) }, stride: 600, operation: 'defrag' },
  { image: { label: 'qed 64k random', format: 'qed', size: '16M', clusterSize: 65536, order: shuffled(12, 6) }, stride: 1, operation: 'defrag --max-moves 12' },
  { image: { label: 'vmdk random', format: 'vmdk', size: '16M', clusterSize: 65536, order: shuffled(10, 7) }, stride: 1, operation: 'defrag' },
  {
    image: { label: 'qed zeros over data', format: 'qed', size: '16M', clusterSize: 65536, order: reverse(12), after: ['write -z 128k 256k', 'write -P 0 512k 64k'] },
    stride: 1,
    operation: 'compact --zero-scan',
  },
  {
    image: { label: 'vmdk zeros over data', format: 'vmdk', size: '16M', clusterSize: 65536, order: shuffled(12, 8), after: ['write -z 0 256k', 'write -P 0 512k 64k'] },
    stride: 1,
    operation: 'compact --zero-scan',
  },
  // qcow2: every wave also sets the refcounts of the new places to 1 and of the old ones to 0, through the log.
  { image: { label: 'qcow2 v3 64k reverse, zeros', format: 'qcow2', o: 'compat=1.1', size: '16M', clusterSize: 65536, order: reverse(8), after: ['write -z 128k 64k'] }, stride: 1, operation: 'defrag' },
  { image: { label: 'qcow2 v2 4k, 4 L2 tables, random', format: 'qcow2', o: 'compat=0.10,cluster_size=4k', size: '8M', clusterSize: 4096, order: shuffled(10, 9) }, stride: 180, operation: 'defrag' },
  {
    image: { label: 'qcow2 v3 zeros over data', format: 'qcow2', o: 'compat=1.1', size: '16M', clusterSize: 65536, order: shuffled(12, 10), after: ['write -z 128k 256k', 'write -P 0 512k 64k'] },
    stride: 1,
    operation: 'compact --zero-scan',
  },
];

describe('crash campaigns: defrag and compact', () => {
  const scratch = tempDir('ic-mover-crash-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const [n, { image, stride, operation }] of cases.entries()) {
    it(`${operation} on ${image.label}: no silent corruption, no data loss; recovered states are leak-free`, { timeout: 600_000 }, async () => {
      const file = scratch.path(`case-${n}.${image.format}`);
      makeFragmented(file, image, stride);
      const bytes = new Uint8Array(readFileSync(file));
      const driver = registry.get(image.format);
      let leakyRecoveries = 0;
      let rolledForward = 0;
      const result = await runCrashCampaign({
        registry,
        sourceDriver: driver.name,
        targetDriver: driver.name,
        buildSource: async () => new MemoryIO(bytes.slice(), image.label),
        generators: GENERATORS,
        samples: coverageOf(undefined) === 'full' ? 100 : 33,
        recoveryCrashes: 3,
        seed: 11 + n,
        operation: async (io: BlockIO) => {
          if (operation === 'compact --zero-scan') return compactImage(io, driver, { zeroScan: true });
          const report = await defragImage(io, driver, operation === 'defrag' ? {} : { maxMoves: 12 });
          if (operation === 'defrag') expect(report.after.fragmentedClusters).toBe(0);
          return report;
        },
        onState: ({ classification }) => {
          if (classification.recovery !== 'rolled-forward') return;
          rolledForward++;
          if ((classification.leaks ?? 0) > 0) leakyRecoveries++;
        },
      });
      console.log(`${operation} on ${image.label}: ${summariseCampaign(result)}; ${rolledForward} states rolled forward`);
      expectNoBadStates(result);
      expect(rolledForward).toBeGreaterThan(0);
      expect(leakyRecoveries).toBe(0);
    });
  }
});
