/**
 * Sizes at the real limits, through the real executable, judged by qemu: a 2^32-cluster image (256 TiB at 64 KiB
 * clusters) converts qcow2 → QED → qcow2 in place, and a sparse VMDK target whose data lies more than two grain
 * table windows apart (a regression: the window flush sized a buffer by the gap, "Invalid typed array length").
 * Speed is the benchmark's business (tooling/bench --scale); these only assert that the results are right.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
const icBin = join(repoRoot, 'apps/cli/bin/ic.js');
const TiB = 2 ** 40;
const GiB = 2 ** 30;

function ic(args: string[]) {
  return spawnSync(process.execPath, [icBin, ...args], { encoding: 'utf8' });
}

describe('conversions at the real limits', () => {
  const scratch = tempDir('ic-scale-');
  beforeAll(() => {
    requireQemu();
    if (!existsSync(join(repoRoot, 'apps/cli/dist/cli.js'))) throw new Error('build ic first (pnpm turbo run build)');
  });
  afterAll(() => scratch.cleanup());

  it('2^32 clusters: a 256 TiB qcow2 with data at the start, the middle and the last cluster, to QED and back', { timeout: 300_000 }, () => {
    const pristine = scratch.path('pristine.qcow2');
    const last = 256 * TiB - 65536;
    qemuCreate(pristine, 'qcow2', '256T');
    qemuIo(pristine, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 128T 128k', `write -P 0x33 ${last} 64k`, 'write -z 200T 64k']);
    const image = scratch.path('image.qcow2');
    copyFileSync(pristine, image);
    // QED's default table_size=4 addresses 64 TiB at 64 KiB clusters; 16 addresses 1 PiB.
    const toQed = ic(['convert-inplace', '-o', 'table_size=16', image, 'qed']);
    expect(toQed.status, toQed.stderr).toBe(0);
    expect(qemuCheck(image, 'qed').code).toBe(0);
    // qemu-img compare and map abort on any QED this large (qemu 7.2: an assertion in bdrv_co_block_status, also
    // on a QED qemu-img made itself), so the QED is judged by qemu-io reads.
    const reads = qemuIo(image, 'qed', ['read -P 0x11 0 64k', 'read -P 0x22 128T 128k', `read -P 0x33 ${last} 64k`, 'read -P 0 200T 64k', 'read -P 0 64k 64k']);
    expect(reads).not.toMatch(/fail|error/i);
    const back = ic(['convert-inplace', image, 'qcow2']);
    expect(back.status, back.stderr).toBe(0);
    expect(qemuCheck(image, 'qcow2').code).toBe(0);
    expect(qemuCompare(image, 'qcow2', pristine, 'qcow2').code).toBe(0);
  });

  it('a VMDK target whose data lies more than two grain-table windows apart', { timeout: 300_000 }, () => {
    const pristine = scratch.path('gap.qcow2');
    qemuCreate(pristine, 'qcow2', '200G');
    qemuIo(pristine, 'qcow2', ['write -P 0x44 0 64k', `write -P 0x55 ${199 * GiB} 64k`]);
    const image = scratch.path('gap-image.qcow2');
    copyFileSync(pristine, image);
    const run = ic(['convert-inplace', image, 'vmdk']);
    expect(run.status, run.stderr).toBe(0);
    expect(qemuCheck(image, 'vmdk').code).toBe(0);
    expect(qemuCompare(image, 'vmdk', pristine, 'qcow2').code).toBe(0);
  });
});
