/**
 * A sparse raw file with holes between its data runs, converted in place to every bundled in-place target
 * (issue #12, "never leaving leaks"): `qemu-img check` exits 0 (VHD: qemu has no check), `qemu-img compare`
 * finds the source's content, and qemu-io can write afterwards (into a former hole, over data, into part of a
 * cluster) with check and compare still clean. Two shapes: few data (packing moves it into the holes: cheap)
 * and more data than packing may move (a target that counts unreferenced clusters as leaks then keeps the holes
 * as data clusters in place: nothing moves).
 *
 * 1 GiB disks, to keep qemu-img compare quick (a kept hole is data to it, read as zeros). A QED file of 65535
 * clusters or more would get one leak per 65535 clusters from qemu 7.2's own check (qed_bytes_to_clusters()
 * divides by cluster_size - 1), so a file below 4 GiB is judged by exit 0 alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { convertInPlace } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const SIZE = GiB;

interface Shape {
  name: string;
  writes: string[];
  /** Packing would move more than it may: leak-counting targets keep the holes instead. */
  holesKept: boolean;
}

const shapes: Shape[] = [
  {
    name: 'a few MiB of data between holes (packing is cheap)',
    writes: ['write -P 0x5a 1M 3M', 'write -P 0x5b 256M 1M', `write -P 0x5c ${512 * MiB + 12288} 2M`, `write -P 0x5d ${SIZE - 512 * 1024} 512k`],
    holesKept: false,
  },
  {
    name: '120 MiB of data in runs far apart (packing would move it all)',
    writes: [
      'write -P 0x5a 0 1M',
      'write -P 0x5b 256M 40M',
      // Unaligned to any cluster at both ends: the clusters it shares with holes stay as they are.
      `write -P 0x5c ${512 * MiB + 12288} ${40 * MiB - 8192}`,
      'write -P 0x5d 700M 64k',
      `write -P 0x5e ${SIZE - 40 * MiB} 40M`,
    ],
    holesKept: true,
  },
];

/** qemu-io writes after the conversion: into a former hole, over data, and into part of a hole cluster. */
const raw = () => registry.get('raw');

const later = ['write -P 0xa1 600M 64k', `write -P 0xa2 ${256 * MiB + 4096} 4k`, `write -P 0xa3 ${800 * MiB + 512} 512`];

function makeRaw(path: string, writes: readonly string[]): void {
  execFileSync('truncate', ['-s', String(SIZE), path]);
  qemuIo(path, 'raw', writes);
}

describe('a sparse raw file with holes between data runs, converted in place to every in-place target', () => {
  const scratch = tempDir('ic-raw-holes-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());
  const targets = registry.with('inPlaceTarget');

  it('has in-place targets to convert to', () => {
    expect(targets.length).toBeGreaterThan(0);
  });

  for (const shape of shapes) {
    const pristine = scratch.path(`${shape.holesKept ? 'many' : 'few'}-pristine.raw`);
    beforeAll(() => makeRaw(pristine, shape.writes));

    for (const target of targets) {
      it(`${shape.name} -> ${target.name}`, async () => {
        const image = scratch.path(`${shape.holesKept ? 'many' : 'few'}.${target.name}`);
        makeRaw(image, shape.writes);
        const io = await FileIO.open(image, { writable: true, lock: true });
        let report;
        let plan;
        try {
          plan = await convertInPlace({ io, source: raw(), target, dryRun: true });
          report = await convertInPlace({ io, source: raw(), target });
        } finally {
          await io.close();
        }
        expect(report.verified).toBe(true);
        if (report.compaction) {
          // A target that counts unreferenced clusters as leaks: besides what packing moves, only metadata is written.
          expect(report.io.bytesWritten - report.bytesRelocated - report.compaction.bytesMoved).toBeLessThan(16 * MiB);
          expect(report.compaction.leaksLeft, report.compaction.reason).toBe(0);
          if (shape.holesKept) {
            expect(report.compaction.holesKept ?? 0, report.compaction.reason).toBeGreaterThan(0);
            expect(report.compaction.bytesMoved).toBe(0);
            // The dry run says so beforehand.
            expect(plan.compaction?.holesKept).toBe(report.compaction.holesKept);
          } else expect(report.compaction.holesKept).toBeUndefined();
        }
        // The file stays sparse: what it allocates is the source's data, what was relocated and metadata, not the disk.
        expect(statSync(image).blocks * 512).toBeLessThan(statSync(pristine).blocks * 512 + report.bytesRelocated + 16 * MiB);

        const judge = (expected: string, when: string) => {
          const check = qemuCheck(image, target.name);
          // qemu-img check has nothing to check in some formats (VHD): it exits 63 saying so, and compare alone judges.
          const noCheck = check.code === 63 && /does not support checks/.test(check.text);
          if (!noCheck) expect(check.code, `qemu-img check ${when}:\n${check.text}`).toBe(0);
          const compared = qemuCompare(image, target.name, expected, 'raw');
          expect(compared.code, `qemu-img compare ${when}: ${compared.stdout}${compared.stderr}`).toBe(0);
        };
        judge(pristine, 'after the conversion');
        qemuIo(image, target.name, later);
        const expected = scratch.path(`${shape.holesKept ? 'many' : 'few'}-expected-${target.name}.raw`);
        makeRaw(expected, [...shape.writes, ...later]);
        judge(expected, 'after qemu-io wrote');
      });
    }
  }
});

describe('the holes kept as data: SIGKILL at every write of a real `ic` process, then `ic recover`', () => {
  const scratch = tempDir('ic-raw-holes-kill-');
  const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
  const icBin = join(repoRoot, 'apps/cli/bin/ic.js');
  const ic = (args: string[], killAfter?: number) => {
    const env = { ...process.env };
    if (killAfter === undefined) delete env.IC_TEST_KILL_AFTER_WRITES;
    else env.IC_TEST_KILL_AFTER_WRITES = String(killAfter);
    return spawnSync(process.execPath, [icBin, ...args], { encoding: 'utf8', env });
  };
  beforeAll(() => {
    requireQemu();
    if (!existsSync(join(repoRoot, 'apps/cli/dist/cli.js'))) throw new Error('build ic first (pnpm turbo run build)');
  });
  afterAll(() => scratch.cleanup());
  const shape = shapes.find((candidate) => candidate.holesKept)!;
  const pristine = scratch.path('pristine.raw');
  beforeAll(() => makeRaw(pristine, shape.writes));

  for (const target of registry.with('inPlaceTarget')) {
    it(`raw -> ${target.name}`, { timeout: 600_000 }, async (context) => {
      const image = scratch.path(`image-${target.name}.raw`);
      makeRaw(image, shape.writes);
      const io = await FileIO.open(image);
      const plan = await convertInPlace({ io, source: raw(), target, dryRun: true }).finally(() => io.close());
      // Only the targets that keep holes take this path.
      if (!plan.compaction?.holesKept) return context.skip();
      const outcomes = { killed: 0, rolledBack: 0, rolledForward: 0 };
      let finished = false;
      for (let killAfter = 1; !finished && killAfter < 100; killAfter++) {
        // A fresh sparse file each time (a copy would fill the holes on some file systems).
        makeRaw(image, shape.writes);
        const run = ic(['convert-inplace', '-f', 'raw', image, target.name], killAfter);
        if (run.status === 0) finished = true;
        else {
          expect(run.signal, run.stderr).toBe('SIGKILL');
          outcomes.killed++;
          const recovered = ic(['recover', image]);
          expect(recovered.status, recovered.stderr).toBe(0);
        }
        const info = ic(['info', '--output=json', image]);
        const format = (JSON.parse(info.stdout) as { format: string }).format;
        expect(['raw', target.name]).toContain(format);
        if (!finished) {
          if (format === 'raw') outcomes.rolledBack++;
          else outcomes.rolledForward++;
        }
        if (format !== 'raw') {
          const check = qemuCheck(image, format);
          expect(check.code, `kill after ${killAfter} writes: ${check.text}`).toBe(0);
        }
        expect(qemuCompare(image, format, pristine, 'raw').code, `kill after ${killAfter} writes`).toBe(0);
      }
      expect(finished).toBe(true);
      expect(outcomes.killed).toBeGreaterThan(2);
      expect(outcomes.rolledBack).toBeGreaterThan(0);
      expect(outcomes.rolledForward).toBeGreaterThan(0);
    });
  }
});
