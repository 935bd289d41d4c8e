/**
 * Crash campaigns (packages/conformance's machinery: every crash state a recorded run can leave under the
 * sector-atomic models: prefixes, a write omitted, torn writes, subsets of an epoch, random states, and crashes
 * of the recovery itself) for the conversion to raw in place, on qemu-made QED, VMDK and qcow2 images. Every state must
 * read the pristine guest content, as the source or as raw, as it is or after recover(); a state recovery rolls
 * back must be leak-free.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { convertToIdentity, MemoryIO, type BlockIO } from '@ic/core';
import { coverageOf, expectNoBadStates, runCrashCampaign, summariseCampaign, type GeneratorName } from '@ic/conformance';
import { requireQemu, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';
import { makeFragmented, shuffled } from './mover-images.js';
import { toRawImages, type ToRawImage } from './to-raw-images.js';

const GENERATORS: GeneratorName[] = ['prefix', 'omit-one', 'tear-512', 'tear-4096', 'subsets', 'extension', 'random'];

describe('crash campaigns: convert-inplace to raw', () => {
  const scratch = tempDir('ic-to-raw-crash-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  // The two 4 MiB images, and 4 KiB clusters over three L2 tables on a smaller disk than the CLI test's.
  const images: ToRawImage[] = [
    ...toRawImages.slice(0, 2),
    { label: 'qed 4k clusters, random order over 3 L2 tables', format: 'qed', o: 'cluster_size=4k,table_size=4', size: '17M', clusterSize: 4096, order: shuffled(24, 12), stride: 180 },
    // qcow2 (refcounts follow the moves): the 64 KiB v3 image, and 4 KiB clusters over three L2 tables.
    ...toRawImages.filter((image) => image.format === 'qcow2' && image.clusterSize === 65536).slice(0, 1),
    { label: 'qcow2 v2 4k clusters, random order over 3 L2 tables', format: 'qcow2', o: 'compat=0.10,cluster_size=4k', size: '6M', clusterSize: 4096, order: shuffled(16, 15), stride: 90 },
  ];
  for (const [n, image] of images.entries()) {
    it(`${image.label}: no silent corruption, no data loss; both ends reached`, { timeout: 900_000 }, async () => {
      const file = scratch.path(`case-${n}.${image.format}`);
      makeFragmented(file, image, image.stride);
      const bytes = new Uint8Array(readFileSync(file));
      const source = registry.get(image.format);
      const raw = registry.get('raw');
      const sizes = new Map<string, number>();
      let leakyRollBacks = 0;
      const result = await runCrashCampaign({
        registry,
        sourceDriver: source.name,
        targetDriver: raw.name,
        buildSource: async () => new MemoryIO(bytes.slice(), image.label),
        generators: GENERATORS,
        samples: 30,
        // Covering (npm test's default): one interrupted recovery crashed per campaign; full: three.
        recoveryCrashes: coverageOf(undefined) === 'full' ? 3 : 1,
        seed: 21 + n,
        operation: async (io: BlockIO) => {
          const report = await convertToIdentity(io, source, raw);
          expect(report.unitsMoved).toBeGreaterThan(0);
          return report;
        },
        onState: ({ classification }) => {
          const key = `${classification.outcome}/${classification.recovery ?? 'none'}`;
          sizes.set(key, (sizes.get(key) ?? 0) + 1);
          if (classification.recovery === 'rolled-back' && (classification.leaks ?? 0) > 0) leakyRollBacks++;
        },
      });
      console.log(`${image.label}: ${summariseCampaign(result)}; by outcome/recovery: ${JSON.stringify(Object.fromEntries(sizes))}`);
      expectNoBadStates(result);
      // Both sides are reached: states that are (or recover to) the source, and to raw.
      expect(result.totals.OLD_INTACT + result.totals.RECOVERED_OLD).toBeGreaterThan(0);
      expect(result.totals.NEW_INTACT + result.totals.RECOVERED_NEW).toBeGreaterThan(0);
      expect(leakyRollBacks).toBe(0);
    });
  }
});
