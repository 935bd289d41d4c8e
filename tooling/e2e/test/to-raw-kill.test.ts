/**
 * The real executable killed with SIGKILL after every write of `ic convert-inplace IMAGE raw`
 * (IC_TEST_KILL_AFTER_WRITES=N), on small qemu-made images. After each kill, alternately: `ic recover` then the
 * oracle (the file is the source format, qemu-img check clean, or raw of the virtual size; qemu-img compare
 * identical with the untouched image either way) then the command again; or the command again straight away (it
 * recovers first). Every rerun must end with the raw file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { coverageOf } from '@ic/conformance';
import { icCli, qemuCheck, qemuCompare, qemuInfo, requireBuiltIc, requireQemu, tempDir } from '@ic/test-utils';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

const images: (MoverImage & { stride: number })[] = [
  { label: 'qed 64k, reverse, partial last cluster', format: 'qed', size: '1064K', clusterSize: 65536, order: reverse(6), stride: 2, after: ['write -z 64k 64k', 'write -P 0x77 1030k 34k'] },
  { label: 'vmdk, random', format: 'vmdk', size: '1M', clusterSize: 65536, order: shuffled(6, 31), stride: 2 },
  { label: 'qcow2 v3 64k, reverse, zeros, partial last cluster', format: 'qcow2', o: 'compat=1.1', size: '1064K', clusterSize: 65536, order: reverse(6), stride: 2, after: ['write -z 64k 64k', 'write -P 0x77 1030k 34k'] },
  { label: 'qcow2 v2 4k, random over 2 L2 tables', format: 'qcow2', o: 'compat=0.10,cluster_size=4k', size: '4M', clusterSize: 4096, order: shuffled(8, 32), stride: 120 },
];

// Covering (npm test's default): every second write is a kill point, each image starting at another; full: every write.
const STRIDE = coverageOf(undefined) === 'full' ? 1 : 2;
const kill = (n: number) => ({ env: { IC_TEST_KILL_AFTER_WRITES: String(n) } });

describe('SIGKILL at every write of ic convert-inplace IMAGE raw, then recover or rerun', () => {
  const scratch = tempDir('ic-to-raw-kill-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  for (const [n, image] of images.entries()) {
    it(image.label, { timeout: 900_000 }, () => {
      const dir = scratch.path(`case-${n}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${image.format}`);
      makeFragmented(pristine, image, image.stride);
      const virtualSize = qemuInfo(pristine, image.format)['virtual-size'];
      const file = join(dir, 'image');
      const formatNow = () => JSON.parse(icCli(['info', '--output', 'json', '-U', file]).stdout || '{}').format as string | undefined;
      const oracle = (what: string): 'old' | 'raw' => {
        if (formatNow() === image.format) {
          const check = qemuCheck(file, image.format);
          expect(check.code, `${what}: ${check.text}`).toBe(0);
          expect(qemuCompare(pristine, image.format, file, image.format).code, what).toBe(0);
          return 'old';
        }
        expect(statSync(file).size, what).toBe(virtualSize);
        expect(qemuCompare(pristine, image.format, file, 'raw').code, what).toBe(0);
        return 'raw';
      };
      const counts = { killed: 0, recovered: 0, rerunDirectly: 0, recoveredToOld: 0, recoveredToRaw: 0, completeWhenKilled: 0 };
      let finished = false;
      for (let writes = 1 + (n % STRIDE); !finished && writes < 2000; writes += STRIDE) {
        copyFileSync(pristine, file);
        const run = icCli(['convert-inplace', file, 'raw'], kill(writes));
        if (run.status === 0) {
          finished = true;
          expect(oracle('uninterrupted')).toBe('raw');
          break;
        }
        expect(run.signal, run.stderr).toBe('SIGKILL');
        counts.killed++;
        const what = `killed after ${writes} writes`;
        if (counts.killed % 2 === 1) {
          const recovered = icCli(['recover', file]);
          expect(recovered.status, `${what}: ${recovered.stderr}`).toBe(0);
          const side = oracle(`${what}, then recover`);
          if (side === 'old') counts.recoveredToOld++;
          else counts.recoveredToRaw++;
          counts.recovered++;
          if (side === 'raw') continue;
        } else {
          // Killed after its last write (the cut to the virtual size): nothing is left to do, and nothing says so.
          if (statSync(file).size === virtualSize && formatNow() !== image.format) {
            expect(oracle(`${what}, complete`)).toBe('raw');
            counts.completeWhenKilled++;
            continue;
          }
          counts.rerunDirectly++;
        }
        const rerun = icCli(['convert-inplace', file, 'raw']);
        expect(rerun.status, `${what}: ${rerun.stderr}`).toBe(0);
        expect(oracle(`${what}, then rerun`)).toBe('raw');
      }
      console.log(`convert-inplace raw on ${image.label}: ${JSON.stringify(counts)}`);
      expect(finished).toBe(true);
      expect(counts.killed).toBeGreaterThan(Math.floor(5 / STRIDE));
      expect(counts.recoveredToOld).toBeGreaterThan(0);
      expect(counts.recoveredToRaw).toBeGreaterThan(0);
    });
  }
});
