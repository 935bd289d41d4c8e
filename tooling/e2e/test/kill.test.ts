/**
 * The real executable killed with SIGKILL after every write of a conversion (and of a recovery), then
 * `ic recover`, then the oracle: qemu-img check (clean: no corruption and no leaks) and qemu-img compare with the
 * untouched image.
 * The hook IC_TEST_KILL_AFTER_WRITES=N makes `ic` kill itself right after its N-th write, truncate or hole punch.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { qemuKnowsFormat } from '@ic/conformance/qemu';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
const icBin = join(repoRoot, 'apps/cli/bin/ic.js');

function ic(args: string[], killAfter?: number) {
  const env = { ...process.env };
  if (killAfter === undefined) delete env.IC_TEST_KILL_AFTER_WRITES;
  else env.IC_TEST_KILL_AFTER_WRITES = String(killAfter);
  return spawnSync(process.execPath, [icBin, ...args], { encoding: 'utf8', env });
}

function formatOf(image: string): string {
  const info = ic(['info', '--output=json', image]);
  expect(info.status, info.stderr).toBe(0);
  return (JSON.parse(info.stdout) as { format: string }).format;
}

interface Pair {
  from: string;
  to: string;
  writes: string[];
}

const pairs: Pair[] = [
  { from: 'qcow2', to: 'qed', writes: ['write -P 0x11 0 1M', 'write -P 0x12 30M 64k', 'write -z 40M 64k'] },
  { from: 'qed', to: 'qcow2', writes: ['write -P 0x21 0 512k', 'write -P 0x22 63M 64k'] },
  { from: 'qcow2', to: 'vmdk', writes: ['write -P 0x31 64k 128k', 'write -P 0x32 20M 4k'] },
  { from: 'vmdk', to: 'qed', writes: ['write -P 0x41 0 64k', 'write -P 0x42 33M 64k'] },
  { from: 'raw', to: 'qcow2', writes: ['write -P 0x51 0 64k', 'write -P 0x52 10M 128k'] },
  // The VMDK header is 10.5 KiB and overwrites raw guest data: the transitional commit.
  { from: 'raw', to: 'vmdk', writes: ['write -P 0x61 0 64k', 'write -P 0x62 10M 128k'] },
  // qemu's VDI blocks sit at 512-byte offsets: every cluster moves, and after the commit the release step punches
  // their old places (each punch, like the cut, is a kill point of the hook).
  { from: 'vdi', to: 'qcow2', writes: ['write -P 0x81 0 1M', 'write -P 0x82 20M 64k', 'write -P 0x83 40M 4k'] },
];

// Every other in-place target of the registry that qemu can make images of, killed on the way in and on the way out:
// the targets in a ring (each converted into from the one before it and out of into the one after it), so adding a
// driver grows this suite with no edit here.
const listed = new Set(pairs.flatMap((pair) => [pair.from, pair.to]));
const ring = registry.with('inPlaceTarget').map((driver) => driver.name).filter(qemuKnowsFormat);
ring.forEach((name, i) => {
  if (listed.has(name)) return;
  const before = ring[(i + ring.length - 1) % ring.length]!;
  const after = ring[(i + 1) % ring.length]!;
  const writes = ['write -P 0x71 0 1M', 'write -P 0x72 20M 64k', 'write -P 0x73 40M 4k'];
  for (const pair of [{ from: before, to: name, writes }, { from: name, to: after, writes }]) {
    if (!pairs.some((known) => known.from === pair.from && known.to === pair.to)) pairs.push(pair);
  }
});

describe('SIGKILL at every write of a real `ic` process, then `ic recover`', () => {
  const scratch = tempDir('ic-kill-');
  beforeAll(() => {
    requireQemu();
    if (!existsSync(join(repoRoot, 'apps/cli/dist/cli.js'))) throw new Error('build ic first (pnpm turbo run build)');
  });
  afterAll(() => scratch.cleanup());

  for (const pair of pairs) {
    it(`${pair.from} -> ${pair.to}`, { timeout: 300_000 }, () => {
      const dir = scratch.path(`${pair.from}-${pair.to}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${pair.from}`);
      qemuCreate(pristine, pair.from, '64M');
      qemuIo(pristine, pair.from, pair.writes);
      const image = join(dir, `image.${pair.from}`);
      const outcomes = { killed: 0, rolledBack: 0, rolledForward: 0, recoveryKilled: 0 };
      let finished = false;
      for (let killAfter = 1; !finished && killAfter < 400; killAfter++) {
        copyFileSync(pristine, image);
        // -f: a raw source is written only when named (no silent raw).
        const run = ic(['convert-inplace', '-f', pair.from, image, pair.to], killAfter);
        if (run.status === 0) {
          finished = true;
        } else {
          expect(run.signal, run.stderr).toBe('SIGKILL');
          outcomes.killed++;
          // Crash the recovery too, once, right after its first write, then recover for real.
          const interrupted = ic(['recover', image], 1);
          if (interrupted.signal === 'SIGKILL') outcomes.recoveryKilled++;
          else expect(interrupted.status, interrupted.stderr).toBe(0);
          const recovered = ic(['recover', image]);
          expect(recovered.status, recovered.stderr).toBe(0);
          // Recovery is idempotent.
          expect(ic(['recover', image]).stdout).toMatch(/no interrupted conversion/);
        }
        const format = formatOf(image);
        expect([pair.from, pair.to]).toContain(format);
        if (!finished) {
          if (format === pair.from) outcomes.rolledBack++;
          else outcomes.rolledForward++;
        }
        const check = qemuCheck(image, format);
        // Clean every time, leaks included: recovery finishes an interrupted packing step too. qemu-img cannot
        // check some formats at all (exit 63: raw, VHD).
        expect(check.code, `kill after ${killAfter} writes: ${check.text}`).toBe(check.code === 63 && /does not support checks/.test(check.text) ? 63 : 0);
        expect(qemuCompare(image, format, pristine, pair.from).code, `kill after ${killAfter} writes`).toBe(0);
      }
      expect(finished).toBe(true);
      expect(outcomes.killed).toBeGreaterThan(2);
      expect(outcomes.rolledBack).toBeGreaterThan(0);
      expect(outcomes.rolledForward).toBeGreaterThan(0);
      expect(outcomes.recoveryKilled).toBeGreaterThan(0);
    });
  }
});
