/** QEMU's image locks, through the real executable. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { qemuCompare, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { copyFileSync } from 'node:fs';

/** Resolves when the child has exited (at once if it already has), or after 5 s. */
function exited(child: import('node:child_process').ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 5000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}


const icBin = fileURLToPath(new URL('../../../apps/cli/bin/ic.js', import.meta.url));
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('locking', () => {
  const scratch = tempDir('ic-locks-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  it('refuses an image qemu-nbd holds writable, with one line, leaving it byte-identical', async () => {
    const image = scratch.path('held.qcow2');
    qemuCreate(image, 'qcow2', '64M');
    qemuIo(image, 'qcow2', ['write -P 0x5a 0 1M']);
    const nbd = spawn('qemu-nbd', ['-k', scratch.path('nbd.sock'), '-f', 'qcow2', image], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 400 && run('qemu-img', ['info', image]).code === 0; i++) await sleep(50);
      const before = sha256File(image);
      const result = spawnSync(process.execPath, [icBin, 'convert-inplace', image, 'qed'], { encoding: 'utf8' });
      expect(result.status).toBe(1);
      expect(result.stderr).toMatch(/^ic: .*another process.*\[LOCKED\]\n$/);
      expect(sha256File(image)).toBe(before);
    } finally {
      nbd.kill('SIGTERM');
      await exited(nbd);
    }
  });

  it('while ic converts, qemu-img cannot open the image (QEMU lock error); afterwards it can', async () => {
    const image = scratch.path('busy.qcow2');
    qemuCreate(image, 'qcow2', '256M');
    qemuIo(image, 'qcow2', ['write -P 0x6b 0 8M', 'write -P 0x6c 200M 1M']);
    const pristine = scratch.path('busy-pristine.qcow2');
    copyFileSync(image, pristine);
    // Stop ic right after its second write (in the middle of the build), inspect, then let it finish.
    const converter = spawn(process.execPath, [icBin, 'convert-inplace', image, 'qed'], {
      env: { ...process.env, IC_TEST_STOP_AFTER_WRITES: '2' },
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((resolve) => converter.once('exit', resolve));
    let info = run('qemu-img', ['info', image]);
    for (let i = 0; i < 200 && info.code === 0; i++) {
      await sleep(25);
      info = run('qemu-img', ['info', image]);
    }
    expect(info.code).not.toBe(0);
    expect(info.stderr).toMatch(/Failed to get .*lock/);
    // A second ic is refused too.
    const second = spawnSync(process.execPath, [icBin, 'convert-inplace', image, 'vmdk'], { encoding: 'utf8' });
    expect(second.stderr).toMatch(/\[LOCKED\]/);
    converter.kill('SIGCONT');
    expect(await exited).toBe(0);
    expect(run('qemu-img', ['info', image]).code).toBe(0);
    expect(qemuCompare(image, 'qed', pristine, 'qcow2').code).toBe(0);
  });
});
