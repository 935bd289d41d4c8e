/**
 * FileIO and QEMU's lock bytes: locks by default on every writable open, `exclusive` only while they are held,
 * qemu-img's read locks, refusal where locks cannot be taken, and no open of a non-regular file.
 * (Through the real CLI and against a running qemu-nbd: tooling/e2e/test/locking.test.ts.)
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isIcError } from '../src/index.js';
import { FileIO, PosixError, QEMU_LOCKS, posix, setKoffiLoader, setPosixForTests, type Posix } from '../src/platform/index.js';

const dir = mkdtempSync(join(tmpdir(), 'ic-lock-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => setKoffiLoader(undefined));

const hasQemu = spawnSync('qemu-img', ['--version']).status === 0;

function file(name: string, size = 4096): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(size).fill(0x5a));
  return path;
}

async function failure(promise: Promise<unknown>): Promise<{ code: string; message: string }> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isIcError(error)) throw new Error(`expected an IcError, got ${String(error)}`);
  return { code: error.code, message: error.message };
}

describe('QEMU-compatible locking', () => {
  it('loads the native helpers on Linux', () => {
    expect(posix()).not.toBeNull();
  });

  it('a writable open takes the locks by default and is exclusive only while it holds them', async () => {
    const path = file('default.img');
    const first = await FileIO.open(path, { writable: true });
    expect(first.lock.held).toBe(true);
    expect(first.exclusive).toBe(true);
    // OFD locks belong to the open file description: a second open, even in this process, is another holder.
    expect((await failure(FileIO.open(path, { writable: true }))).code).toBe('LOCKED');
    expect((await failure(FileIO.create(path))).code).toBe('LOCKED');
    expect(new Uint8Array(readFileSync(path))).toEqual(new Uint8Array(4096).fill(0x5a)); // create refused before truncating
    await first.close();
    expect(first.exclusive).toBe(false);
    const again = await FileIO.open(path, { writable: true });
    expect(again.exclusive).toBe(true);
    await again.close();
  });

  it('lock: false opens without them and is never exclusive; a read-only open locks nothing by default', async () => {
    const path = file('unlocked.img');
    const unlocked = await FileIO.open(path, { writable: true, lock: false });
    expect(unlocked.exclusive).toBe(false);
    expect(unlocked.lock).toEqual({ held: false, reason: 'not requested' });
    const reader = await FileIO.open(path);
    expect(reader.exclusive).toBe(false);
    // Neither holds a byte, so a locking writer gets in.
    const writer = await FileIO.open(path, { writable: true });
    expect(writer.exclusive).toBe(true);
    await Promise.all([unlocked.close(), reader.close(), writer.close()]);
  });

  it("read locks behave like qemu-img's: info and map share each other, a writer excludes both, -U reads anyway", async () => {
    const path = file('read.img');
    const info = await FileIO.open(path, { lock: QEMU_LOCKS.info });
    const map = await FileIO.open(path, { lock: QEMU_LOCKS.read });
    expect(info.lock.held && map.lock.held).toBe(true);
    expect(info.exclusive || map.exclusive).toBe(false);
    // Readers exclude a writer (they do not share write) ...
    expect((await failure(FileIO.open(path, { writable: true }))).message).toMatch(/another process .* (holds the "consistent read" lock|does not share "write")/);
    await Promise.all([info.close(), map.close()]);
    // ... and a writer excludes readers, except force-share ones that only need consistent read from it.
    const writer = await FileIO.open(path, { writable: true });
    const refused = await failure(FileIO.open(path, { lock: QEMU_LOCKS.info }));
    expect(refused.code).toBe('LOCKED');
    expect(refused.message).toMatch(/holds the "write" lock, byte 101/);
    expect((await failure(FileIO.open(path, { lock: QEMU_LOCKS.forceShareRead }))).message).toMatch(/does not share "consistent read", byte 200/);
    const forced = await FileIO.open(path, { lock: false });
    await Promise.all([forced.close(), writer.close()]);
  });

  it.runIf(hasQemu)('qemu-img cannot open an image ic holds', async () => {
    const path = join(dir, 'held.qcow2');
    expect(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, '16M']).status).toBe(0);
    const held = await FileIO.open(path, { writable: true });
    const info = spawnSync('qemu-img', ['info', path], { encoding: 'utf8' });
    expect(info.status).not.toBe(0);
    expect(info.stderr).toMatch(/Failed to get shared "write" lock/);
    await held.close();
    expect(spawnSync('qemu-img', ['info', path]).status).toBe(0);
    // While ic only reads (qemu-img map's locks), qemu-img info still works, as it does next to qemu-img map.
    const reader = await FileIO.open(path, { lock: QEMU_LOCKS.read });
    expect(spawnSync('qemu-img', ['info', path]).status).toBe(0);
    await reader.close();
  });
});

describe('where the locks cannot be taken', () => {
  const missingKoffi = () => {
    const error = new Error("Cannot find module 'koffi'\nRequire stack:\n- /usr/lib/node_modules/ic/dist/node.js");
    throw Object.assign(error, { code: 'MODULE_NOT_FOUND' });
  };

  it('without koffi a writable open is refused in one line, unless lock: false; reads go on', async () => {
    setKoffiLoader(missingKoffi);
    const path = file('nokoffi.img');
    const refused = await failure(FileIO.open(path, { writable: true }));
    expect(refused.code).toBe('UNSUPPORTED');
    expect(refused.message).toContain("Cannot find module 'koffi'");
    expect(refused.message).not.toMatch(/\n|Require stack/);
    expect((await failure(FileIO.create(join(dir, 'nokoffi-new.img')))).code).toBe('UNSUPPORTED');
    const unlocked = await FileIO.open(path, { writable: true, lock: false });
    expect(unlocked.exclusive).toBe(false);
    await unlocked.close();
    const reader = await FileIO.open(path, { lock: QEMU_LOCKS.info });
    expect(reader.lock.held).toBe(false);
    expect(reader.lock.held === false && reader.lock.reason).not.toMatch(/\n/);
    await reader.close();
  });

  it('IC_TEST_NO_KOFFI=1 simulates a machine without koffi (for the real executable)', async () => {
    process.env.IC_TEST_NO_KOFFI = '1';
    try {
      setKoffiLoader(undefined);
      const refused = await failure(FileIO.open(file('env.img'), { writable: true }));
      expect(refused.code).toBe('UNSUPPORTED');
      expect(refused.message).toMatch(/^[^\n]*Cannot find module[^\n]*$/);
    } finally {
      delete process.env.IC_TEST_NO_KOFFI;
      setKoffiLoader(undefined);
    }
  });

  it('a file system without OFD locks (EINVAL, ENOLCK, EOPNOTSUPP) is refused for writing, not reported as held', async () => {
    for (const errno of [22, 37, 95]) {
      const fake: Posix = {
        seekData: () => -1,
        seekHole: (_fd, offset) => offset,
        ofdTestLock: () => {
          throw new PosixError('fcntl(F_OFD_GETLK)', errno);
        },
        ofdSetLock: () => {
          throw new PosixError('fcntl(F_OFD_SETLK)', errno);
        },
      };
      setPosixForTests(fake);
      const refused = await failure(FileIO.open(file('nofs.img'), { writable: true }));
      expect(refused.code).toBe('UNSUPPORTED');
      expect(refused.message).toMatch(/the file system does not support OFD locks/);
      const reader = await FileIO.open(file('nofs.img'), { lock: QEMU_LOCKS.read });
      expect(reader.lock.held).toBe(false);
      await reader.close();
    }
  });
});

describe('non-regular files are refused before anything is read, without blocking', () => {
  it('FIFO, socket, character device, directory: INVALID for read, write and create', { timeout: 20_000 }, async () => {
    const fifo = join(dir, 'pipe');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    const socketPath = join(dir, 'sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      for (const [path, kind] of [
        [fifo, 'FIFO'],
        [socketPath, 'socket'],
        ['/dev/null', 'character device'],
        [dir, 'directory'],
      ] as const) {
        for (const attempt of [() => FileIO.open(path), () => FileIO.open(path, { writable: true }), () => FileIO.create(path)]) {
          const refused = await failure(attempt());
          expect(refused.code, path).toBe('INVALID');
          expect(refused.message).toContain(kind);
        }
      }
    } finally {
      server.close();
    }
  });
});
