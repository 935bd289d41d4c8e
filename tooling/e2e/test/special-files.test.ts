/**
 * Hostile files, through the real CLI: a FIFO, a socket or a device where an image, a backing file or a VMDK
 * extent should be is refused in one line before anything is read and without blocking (opening a FIFO for
 * reading would wait for a writer forever; every run is capped, so a block fails the test as timedOut instead
 * of hanging it: no speed is asserted). Empty and truncated images give a typed error, never INTERNAL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { IC_ERROR_LINE, icCli, qemuCreate, qemuIo, requireBuiltIc, requireQemu, sha256File, tempDir, type IcRun } from '@ic/test-utils';

const scratch = tempDir('ic-special-');
let server: Server | undefined;
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => {
  server?.close();
  scratch.cleanup();
});

/** A run capped at 20 s: a blocking open never returns, anything that does not block ends long before. */
const ic = (args: string[]) => icCli(args, { timeoutMs: 20_000 });

function mkfifo(path: string): string {
  const made = spawnSync('mkfifo', [path]);
  expect(made.status).toBe(0);
  return path;
}

function expectOneLine(result: IcRun, code: string, mentions?: string): void {
  expect(result.timedOut, 'ic blocked').toBe(false);
  expect(result.status, result.stderr).toBe(1);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(IC_ERROR_LINE);
  expect(result.stderr).toContain(`[${code}]`);
  if (mentions) expect(result.stderr).toContain(mentions);
}

describe('non-regular files are refused without blocking', () => {
  it('a FIFO, a socket or a character device as the image, with and without --untrusted', async () => {
    const fifo = mkfifo(scratch.path('image.fifo'));
    const socket = scratch.path('image.sock');
    server = createServer();
    await new Promise<void>((resolve) => server!.listen(socket, resolve));
    for (const [path, kind] of [
      [fifo, 'FIFO'],
      [socket, 'socket'],
      ['/dev/zero', 'character device'],
    ] as const) {
      for (const mode of [[], ['--untrusted']]) {
        for (const command of [['info'], ['map'], ['check'], ['convert-inplace', '-f', 'qcow2'], ['convert-inplace'], ['recover']]) {
          const args = [...mode, ...command, path, ...(command[0] === 'convert-inplace' ? ['qed'] : [])];
          expectOneLine(ic(args), 'INVALID', kind);
        }
      }
      // ic create will not write into one either (qemu-img create would).
      expectOneLine(ic(['create', '-f', 'qcow2', path, '1M']), 'INVALID', kind);
    }
  });

  it('a FIFO as a qcow2 backing file: map refuses it, info only names it, untrusted mode refuses the reference', () => {
    const dir = scratch.path('backing');
    mkdirSync(dir);
    mkfifo(join(dir, 'base.fifo'));
    const top = join(dir, 'top.qcow2');
    // -u: qemu-img itself would block opening the FIFO to read its size.
    const made = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'base.fifo', '-F', 'raw', top, '16M'], { encoding: 'utf8' });
    expect(made.status, made.stderr).toBe(0);
    const before = sha256File(top);
    expectOneLine(ic(['map', top]), 'INVALID', 'FIFO');
    const info = ic(['info', top]);
    expect(info.status).toBe(0);
    expect(info.stdout).toContain('base.fifo');
    for (const command of ['info', 'map', 'check']) expectOneLine(ic(['--untrusted', command, top]), 'EXTERNAL_REF');
    expectOneLine(ic(['create', '-f', 'qcow2', '-b', join(dir, 'base.fifo'), '-F', 'raw', join(dir, 'new.qcow2')]), 'INVALID', 'FIFO');
    // A conversion reads the backing file only to describe it to the target: it warns and goes on.
    const converted = ic(['convert-inplace', top, 'qed']);
    expect(converted.timedOut).toBe(false);
    expect(converted.status, converted.stderr).toBe(0);
    expect(converted.stderr).toMatch(/^ic: warning: .*FIFO[^\n]*\n$/);
    expect(sha256File(top)).not.toBe(before);
  });

  it('a FIFO as a VMDK extent file: refused by info, map and check; untrusted mode refuses extent files outright', () => {
    const dir = scratch.path('extent');
    mkdirSync(dir);
    const descriptor = join(dir, 'flat.vmdk');
    qemuCreate(descriptor, 'vmdk', '1M', { o: 'subformat=monolithicFlat' });
    rmSync(join(dir, 'flat-flat.vmdk'));
    mkfifo(join(dir, 'flat-flat.vmdk'));
    expect(readFileSync(descriptor, 'utf8')).toContain('"flat-flat.vmdk"');
    for (const command of ['info', 'map', 'check']) {
      expectOneLine(ic([command, descriptor]), 'INVALID', 'FIFO');
      expectOneLine(ic(['--untrusted', command, descriptor]), 'EXTERNAL_REF');
    }
  });
});

describe('empty and truncated images give a typed error, never INTERNAL', () => {
  const typed = /\[(WRONG_FORMAT|CORRUPT|CHECK_FAILED)\]\n$/;

  it('a 0-byte file: WRONG_FORMAT for every -f; probed, reads warn (raw) and writes refuse', () => {
    const empty = scratch.path('empty.img');
    writeFileSync(empty, new Uint8Array(0));
    for (const format of ['qcow2', 'qed', 'vmdk']) {
      for (const command of [['info'], ['map'], ['check'], ['convert-inplace']]) {
        const args = [...command, '-f', format, empty, ...(command[0] === 'convert-inplace' ? [format === 'qcow2' ? 'qed' : 'qcow2'] : [])];
        expectOneLine(ic(args), 'WRONG_FORMAT');
      }
    }
    expectOneLine(ic(['convert-inplace', empty, 'qcow2']), 'WRONG_FORMAT', 'no installed driver recognised');
    expect(ic(['info', empty]).status).toBe(0);
    expect(sha256File(empty)).toBe(sha256File('/dev/null'));
  });

  it('truncated qcow2, QED and VMDK images', () => {
    for (const format of ['qcow2', 'qed', 'vmdk']) {
      const full = scratch.path(`full.${format}`);
      qemuCreate(full, format, '64M');
      qemuIo(full, format, ['write -P 0x71 0 4M', 'write -P 0x72 40M 64k']);
      const bytes = readFileSync(full);
      for (const length of [100, 70_000, bytes.length - 4096]) {
        const cut = scratch.path(`cut-${length}.${format}`);
        for (const command of [['info'], ['map'], ['check'], ['convert-inplace']]) {
          for (const named of [[], ['-f', format]]) {
            writeFileSync(cut, bytes.subarray(0, length));
            const before = sha256File(cut);
            const args = [...command, ...named, cut, ...(command[0] === 'convert-inplace' ? [format === 'qcow2' ? 'qed' : 'qcow2'] : [])];
            const result = ic(args);
            expect(result.timedOut).toBe(false);
            expect(result.stderr, `ic ${args.join(' ')}`).not.toContain('[INTERNAL]');
            expect(result.stderr).not.toMatch(/\n\s+at /);
            if (result.status !== 0 && !(command[0] === 'check' && [2, 3].includes(result.status ?? -1))) {
              expect(result.status, `ic ${args.join(' ')}: ${result.stderr}`).toBe(1);
              expect(result.stderr.split('\n').filter(Boolean).pop()! + '\n', `ic ${args.join(' ')}`).toMatch(typed);
            }
            if (result.status !== 0 || command[0] !== 'convert-inplace') expect(sha256File(cut), `ic ${args.join(' ')} changed the file`).toBe(before);
          }
        }
      }
    }
  });
});
