/**
 * QEMU's image locks, through the real executable: writes are exclusive, reads take qemu-img's own read locks
 * (refused exactly when qemu-img refuses, -U reads anyway), backing files too, and where locks cannot be taken
 * a write is refused unless --no-lock.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import {
  IC_BIN,
  IC_ERROR_LINE,
  icCli,
  qemuCompare,
  qemuCreate,
  qemuIo,
  requireBuiltIc,
  requireQemu,
  run,
  serveWithQemuNbd,
  sha256File,
  tempDir,
  waitFor,
  type QemuNbd,
} from '@ic/test-utils';

const scratch = tempDir('ic-locks-');
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => scratch.cleanup());

/** One error line with this code, nothing on stdout. */
function expectRefusal(result: ReturnType<typeof icCli>, code: string): void {
  expect(result.timedOut).toBe(false);
  expect(result.status, result.stderr).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(IC_ERROR_LINE);
  expect(result.stderr).toContain(`[${code}]`);
}

async function withNbd(image: string, format: string, work: (server: QemuNbd) => Promise<void> | void, readOnly = false): Promise<void> {
  const server = await serveWithQemuNbd(image, format, scratch.path(`nbd-${Math.random().toString(36).slice(2)}.sock`), { readOnly });
  try {
    await work(server);
  } finally {
    await server.stop();
  }
}

describe('writes are exclusive', () => {
  it('refuses an image qemu-nbd holds writable, with one line, leaving it byte-identical', { timeout: 120_000 }, async () => {
    const image = scratch.path('held.qcow2');
    qemuCreate(image, 'qcow2', '64M');
    qemuIo(image, 'qcow2', ['write -P 0x5a 0 1M']);
    await withNbd(image, 'qcow2', () => {
      const before = sha256File(image);
      const result = icCli(['convert-inplace', image, 'qed']);
      expectRefusal(result, 'LOCKED');
      expect(result.stderr).toMatch(/another process/);
      expectRefusal(icCli(['recover', image]), 'LOCKED');
      // ic create over it is refused before anything is truncated, as qemu-img create is.
      expect(run('qemu-img', ['create', '-f', 'qcow2', image, '1M']).code).not.toBe(0);
      expectRefusal(icCli(['create', '-f', 'qcow2', image, '1M']), 'LOCKED');
      expect(sha256File(image)).toBe(before);
    });
  });

  it('refuses an image qemu-nbd exports read-only too (it reads it; a conversion would change it under it)', { timeout: 120_000 }, async () => {
    const image = scratch.path('ro.qcow2');
    qemuCreate(image, 'qcow2', '16M');
    await withNbd(
      image,
      'qcow2',
      () => {
        const before = sha256File(image);
        expectRefusal(icCli(['convert-inplace', image, 'qed']), 'LOCKED');
        expect(sha256File(image)).toBe(before);
        // Readers share it with a read-only export, as qemu-img does.
        expect(run('qemu-img', ['info', image]).code).toBe(0);
        expect(icCli(['info', image]).status).toBe(0);
        expect(icCli(['map', image]).status).toBe(0);
      },
      true,
    );
  });

  it('while ic converts, qemu-img cannot open the image (QEMU lock error); afterwards it can', { timeout: 120_000 }, async () => {
    const image = scratch.path('busy.qcow2');
    qemuCreate(image, 'qcow2', '256M');
    qemuIo(image, 'qcow2', ['write -P 0x6b 0 8M', 'write -P 0x6c 200M 1M']);
    const pristine = scratch.path('busy-pristine.qcow2');
    copyFileSync(image, pristine);
    // Stop ic right after its second write (in the middle of the build), inspect, then let it finish.
    const converter = spawn(process.execPath, [IC_BIN, 'convert-inplace', image, 'qed'], {
      env: { ...process.env, IC_TEST_STOP_AFTER_WRITES: '2' },
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((resolve) => converter.once('exit', resolve));
    await waitFor(
      () => run('qemu-img', ['info', image]).code !== 0,
      () => 'ic did not come to hold the image',
    );
    expect(run('qemu-img', ['info', image]).stderr).toMatch(/Failed to get .*lock/);
    // A second ic is refused too, and so are its readers (ic holds everything and shares nothing).
    expectRefusal(icCli(['convert-inplace', image, 'vmdk']), 'LOCKED');
    expectRefusal(icCli(['info', image]), 'LOCKED');
    converter.kill('SIGCONT');
    expect(await exited).toBe(0);
    expect(run('qemu-img', ['info', image]).code).toBe(0);
    expect(qemuCompare(image, 'qed', pristine, 'qcow2').code).toBe(0);
  });
});

describe("reads take qemu-img's read locks", () => {
  it('info, map and check are refused exactly when qemu-img refuses them; with -U both read, and print the same', { timeout: 120_000 }, async () => {
    const image = scratch.path('served.qcow2');
    qemuCreate(image, 'qcow2', '64M');
    qemuIo(image, 'qcow2', ['write -P 0x11 0 1M', 'write -P 0x12 5M 64k']);
    await withNbd(image, 'qcow2', () => {
      const before = sha256File(image);
      for (const command of ['info', 'map', 'check']) {
        const qemu = run('qemu-img', [command, image]);
        expect(qemu.code, `qemu-img ${command}`).not.toBe(0);
        expect(qemu.stderr).toMatch(/Failed to get shared "write" lock/);
        const ours = icCli([command, image]);
        expectRefusal(ours, 'LOCKED');
        expect(ours.stderr).toContain('-U');
      }
      for (const command of ['info', 'map']) {
        const qemu = run('qemu-img', [command, '-U', '--output=json', image]);
        expect(qemu.code, qemu.stderr).toBe(0);
        const ours = icCli([command, '-U', '--output=json', image]);
        expect(ours.status, ours.stderr).toBe(0);
        expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(qemu.stdout));
      }
      const qemuCheck = run('qemu-img', ['check', '-U', image]);
      expect(icCli(['check', '-U', image]).status).toBe(qemuCheck.code);
      // --no-lock takes and checks nothing at all.
      expect(icCli(['--no-lock', 'info', image]).status).toBe(0);
      expect(sha256File(image)).toBe(before);
    });
  });

  it('map opens backing files with the same read locks: refused while qemu-nbd writes the base, like qemu-img map', { timeout: 120_000 }, async () => {
    const base = scratch.path('base.qcow2');
    const top = scratch.path('top.qcow2');
    qemuCreate(base, 'qcow2', '16M');
    qemuIo(base, 'qcow2', ['write -P 0x21 0 1M']);
    qemuCreate(top, 'qcow2', '16M', { backing: base, backingFormat: 'qcow2' });
    qemuIo(top, 'qcow2', ['write -P 0x22 4M 64k']);
    await withNbd(base, 'qcow2', () => {
      expect(run('qemu-img', ['map', top]).code).not.toBe(0);
      const map = icCli(['map', top]);
      expectRefusal(map, 'LOCKED');
      expect(map.stderr).toContain('base.qcow2');
      // info names the backing file without opening it, as qemu-img info does.
      expect(run('qemu-img', ['info', top]).code).toBe(0);
      expect(icCli(['info', top]).status).toBe(0);
      const qemu = run('qemu-img', ['map', '-U', '--output=json', top]);
      expect(qemu.code, qemu.stderr).toBe(0);
      const ours = icCli(['map', '-U', '--output=json', top]);
      expect(ours.status, ours.stderr).toBe(0);
      expect(JSON.parse(ours.stdout)).toEqual(JSON.parse(qemu.stdout));
    });
  });

  it('-U is for reading only', () => {
    const image = scratch.path('usage.qcow2');
    qemuCreate(image, 'qcow2', '16M');
    const result = icCli(['convert-inplace', '-U', image, 'qed']);
    expect(result.status).toBe(2);
    expect(result.stderr).toMatch(IC_ERROR_LINE);
    expect(result.stderr).toContain('[USAGE]');
  });
});

describe('where QEMU locks cannot be taken (no koffi, simulated with IC_TEST_NO_KOFFI=1)', () => {
  const noKoffi = { IC_TEST_NO_KOFFI: '1' };

  it('writing commands refuse in one line, the image byte-identical; --no-lock writes with one warning', { timeout: 120_000 }, () => {
    const image = scratch.path('nokoffi.qcow2');
    qemuCreate(image, 'qcow2', '16M');
    qemuIo(image, 'qcow2', ['write -P 0x31 0 64k']);
    const pristine = scratch.path('nokoffi-pristine.qcow2');
    copyFileSync(image, pristine);
    const before = sha256File(image);
    for (const args of [
      ['convert-inplace', image, 'qed'],
      ['recover', image],
      ['create', '-f', 'qcow2', image, '1M'],
    ]) {
      const result = icCli(args, { env: noKoffi });
      expectRefusal(result, 'UNSUPPORTED');
      expect(result.stderr).toContain('--no-lock');
      expect(result.stderr).not.toMatch(/Require stack/);
      expect(sha256File(image)).toBe(before);
    }
    // Reads go on without locks, as qemu-img does where locking is unsupported.
    expect(icCli(['info', image], { env: noKoffi }).status).toBe(0);
    const converted = icCli(['--no-lock', 'convert-inplace', image, 'qed'], { env: noKoffi });
    expect(converted.status, converted.stderr).toBe(0);
    expect(converted.stderr).toMatch(/^ic: warning: --no-lock: [^\n]*\n$/);
    expect(qemuCompare(image, 'qed', pristine, 'qcow2').code).toBe(0);
  });
});
