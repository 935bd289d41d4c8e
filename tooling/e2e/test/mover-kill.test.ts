/**
 * The real executable killed with SIGKILL after every write of `ic defrag` and `ic compact --zero-scan`
 * (IC_TEST_KILL_AFTER_WRITES=N), on qemu-made images. After each kill, alternately: `ic recover` then the oracle
 * (qemu-img check clean, qemu-img compare identical with the untouched image) then the command again; or the
 * command again straight away (it recovers first). Every rerun must finish the job. Under IC_KIT_COVERAGE=covering
 * (`npm test`'s default) every third write is a kill point, each case starting at another one; full: every write.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { coverageOf } from '@ic/conformance';
import { icCli, qemuCheck, qemuCompare, requireBuiltIc, requireQemu, tempDir } from '@ic/test-utils';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

interface Case {
  image: MoverImage;
  stride: number;
  command: string[];
}

const cases: Case[] = [
  { image: { label: 'qed 64k reverse', format: 'qed', size: '16M', clusterSize: 65536, order: reverse(8) }, stride: 1, command: ['defrag'] },
  { image: { label: 'qed 4k, 2 L2 tables, random', format: 'qed', o: 'cluster_size=4k,table_size=4', size: '32M', clusterSize: 4096, order: shuffled(8, 21) }, stride: 400, command: ['defrag'] },
  { image: { label: 'vmdk random', format: 'vmdk', size: '16M', clusterSize: 65536, order: shuffled(8, 22) }, stride: 1, command: ['defrag'] },
  { image: { label: 'qed zeros over data', format: 'qed', size: '16M', clusterSize: 65536, order: reverse(16), after: ['write -z 128k 384k'] }, stride: 1, command: ['compact', '--zero-scan'] },
  { image: { label: 'vmdk zeros over data', format: 'vmdk', size: '16M', clusterSize: 65536, order: shuffled(16, 23), after: ['write -z 0 256k', 'write -P 0 640k 128k'] }, stride: 1, command: ['compact', '--zero-scan'] },
  { image: { label: 'qcow2 v3 64k reverse, zeros', format: 'qcow2', o: 'compat=1.1', size: '16M', clusterSize: 65536, order: reverse(8), after: ['write -z 64k 64k'] }, stride: 1, command: ['defrag'] },
  { image: { label: 'qcow2 v2 4k, 3 L2 tables, random', format: 'qcow2', o: 'compat=0.10,cluster_size=4k', size: '6M', clusterSize: 4096, order: shuffled(8, 24) }, stride: 180, command: ['defrag'] },
  { image: { label: 'qcow2 v3 zeros over data', format: 'qcow2', o: 'compat=1.1', size: '16M', clusterSize: 65536, order: shuffled(16, 25), after: ['write -z 0 256k', 'write -P 0 640k 128k'] }, stride: 1, command: ['compact', '--zero-scan'] },
];

const STRIDE = coverageOf(undefined) === 'full' ? 1 : 3;
const kill = (n: number) => ({ env: { IC_TEST_KILL_AFTER_WRITES: String(n) } });

describe('SIGKILL at every write of ic defrag / ic compact, then recover or rerun', () => {
  const scratch = tempDir('ic-mover-kill-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  for (const [n, { image, stride, command }] of cases.entries()) {
    it(`${command.join(' ')} on ${image.label}`, { timeout: 900_000 }, () => {
      const dir = scratch.path(`case-${n}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${image.format}`);
      makeFragmented(pristine, image, stride);
      const file = join(dir, `image.${image.format}`);
      const oracle = (what: string) => {
        const check = qemuCheck(file, image.format);
        expect(check.code, `${what}: ${check.text}`).toBe(0);
        expect(qemuCompare(file, image.format, pristine, image.format).code, what).toBe(0);
      };
      const finish = (what: string) => {
        const rerun = icCli([...command, file]);
        expect(rerun.status, `${what}: ${rerun.stderr}`).toBe(0);
        if (command[0] === 'defrag') expect(rerun.stdout, what).toMatch(/after: +0\/\d+ = 0\.00% fragmented/);
        oracle(`${what}, then rerun`);
      };
      const counts = { killed: 0, recovered: 0, rerunDirectly: 0, recoveryFound: 0 };
      let finished = false;
      for (let writes = 1 + (n % STRIDE); !finished && writes < 1000; writes += STRIDE) {
        copyFileSync(pristine, file);
        const run = icCli([...command, file], kill(writes));
        if (run.status === 0) {
          finished = true;
          oracle('uninterrupted');
          break;
        }
        expect(run.signal, run.stderr).toBe('SIGKILL');
        counts.killed++;
        const what = `killed after ${writes} writes`;
        if (counts.killed % 2 === 1) {
          const recovered = icCli(['recover', file]);
          expect(recovered.status, `${what}: ${recovered.stderr}`).toBe(0);
          if (!/no interrupted conversion/.test(recovered.stdout)) counts.recoveryFound++;
          oracle(`${what}, then recover`);
          counts.recovered++;
        } else {
          counts.rerunDirectly++;
        }
        finish(what);
      }
      console.log(`${command.join(' ')} on ${image.label}: ${JSON.stringify(counts)}`);
      expect(finished).toBe(true);
      expect(counts.killed).toBeGreaterThan(Math.floor(5 / STRIDE));
      expect(counts.recoveryFound).toBeGreaterThan(0);
    });
  }
});
