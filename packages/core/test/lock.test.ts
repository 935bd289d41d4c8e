import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isIcError } from '../src/index.js';
import { FileIO, posix } from '../src/platform/index.js';

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


const dir = mkdtempSync(join(tmpdir(), 'ic-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hasQemu = spawnSync('qemu-img', ['--version']).status === 0;

describe('QEMU-compatible locking', () => {
  it('loads the native helpers on Linux', () => {
    expect(posix()).not.toBeNull();
  });

  it('two ic openers exclude each other, and the lock goes with close', async () => {
    const path = join(dir, 'two.img');
    writeFileSync(path, new Uint8Array(4096));
    const first = await FileIO.open(path, { writable: true, lock: true });
    expect(first.lock.held).toBe(true);
    const error = await FileIO.open(path, { writable: true, lock: true }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('LOCKED');
    await first.close();
    const again = await FileIO.open(path, { writable: true, lock: true });
    expect(again.lock.held).toBe(true);
    await again.close();
  });

  it.runIf(hasQemu)('qemu-img cannot open an image ic holds, and ic refuses one qemu-nbd holds', async () => {
    const path = join(dir, 'held.qcow2');
    expect(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M']).status).toBe(0);
    const held = await FileIO.open(path, { writable: true, lock: true });
    const info = spawnSync('qemu-img', ['info', path], { encoding: 'utf8' });
    expect(info.status).not.toBe(0);
    expect(info.stderr).toMatch(/lock/i);
    await held.close();
    expect(spawnSync('qemu-img', ['info', path]).status).toBe(0);

    const socket = join(dir, 'nbd.sock');
    const nbd = spawn('qemu-nbd', ['-k', socket, '-f', 'qcow2', path], { stdio: 'ignore' });
    try {
      // Wait until qemu-nbd holds the image.
      for (let i = 0; i < 400 && spawnSync('qemu-img', ['info', path]).status === 0; i++) await new Promise((r) => setTimeout(r, 50));
      const before = readFileSync(path);
      const error = await FileIO.open(path, { writable: true, lock: true }).catch((e: unknown) => e);
      expect(isIcError(error) && error.code).toBe('LOCKED');
      expect(readFileSync(path)).toEqual(before);
    } finally {
      nbd.kill('SIGTERM');
      await exited(nbd);
    }
  });
});
