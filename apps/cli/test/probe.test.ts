/** Format detection by score: raw only as the last resort, ties and (untrusted) second claims refused. */
import { describe, expect, test } from 'vitest';
import { DRIVER_API_VERSION, MemoryIO, Registry, isIcError, type Driver } from '@ic/core';
import type { Context } from '../src/context.js';
import { probeDriver } from '../src/images.js';
import { Interrupts } from '../src/signals.js';

function toy(name: string, score: number): Driver {
  return {
    name,
    description: `${name} toy`,
    version: '0.0.0',
    apiVersion: DRIVER_API_VERSION,
    capabilities: { read: true },
    probe: () => score,
    open: async () => {
      throw new Error('not used');
    },
  };
}

function context(drivers: Driver[], untrusted = false): Context {
  return { registry: new Registry(drivers), registryProblems: [], driverSources: new Map(), out() {}, err() {}, isTTY: false, untrusted, lock: true, forceShare: false, debug: false,
    interrupts: new Interrupts(false, () => undefined),
    activity: { command: 'test', file: '', phase: 'starting', done: 0, total: 0 },
  };
}

async function probed(drivers: Driver[], untrusted = false): Promise<string> {
  try {
    return (await probeDriver(context(drivers, untrusted), new MemoryIO(new Uint8Array(4096)), 'read')).name;
  } catch (error) {
    if (isIcError(error)) return `${error.code}: ${error.message}`;
    throw error;
  }
}

test('the best score wins; the any-file driver only when nothing else claims the file', async () => {
  expect(await probed([toy('anyfile', 1), toy('magic', 100)])).toBe('magic');
  expect(await probed([toy('anyfile', 1), toy('magic', 0)])).toBe('anyfile');
  expect(await probed([toy('magic', 0)])).toMatch(/^WRONG_FORMAT: /);
});

test('two drivers equally sure are refused as ambiguous', async () => {
  const answer = await probed([toy('one', 100), toy('two', 100), toy('anyfile', 1)]);
  expect(answer).toMatch(/^WRONG_FORMAT: .*several formats claim this file: one \(score 100\), two \(score 100\); name one with -f/);
});

test('a weaker second claim is accepted normally but refused in untrusted mode', async () => {
  const drivers = [toy('strong', 100), toy('descriptor', 60), toy('anyfile', 1)];
  expect(await probed(drivers)).toBe('strong');
  expect(await probed(drivers, true)).toMatch(/^WRONG_FORMAT: .*several formats claim this file/);
  expect(await probed([toy('strong', 100), toy('anyfile', 1)], true)).toBe('strong');
});

describe('no silent raw', () => {
  const withMagic = (at: number, magic: string, size = 4096) => {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < magic.length; i++) bytes[at + i] = magic.charCodeAt(i);
    return new MemoryIO(bytes);
  };

  async function attempt(io: MemoryIO, purpose: 'read' | 'write'): Promise<{ result: string; warnings: string }> {
    let warnings = '';
    const ctx = { ...context([toy('magic', 0), toy('anyfile', 1)]), err: (text: string) => void (warnings += text) };
    try {
      return { result: (await probeDriver(ctx, io, purpose)).name, warnings };
    } catch (error) {
      if (isIcError(error)) return { result: `${error.code}: ${error.message}`, warnings };
      throw error;
    }
  }

  test('a write is refused when only the any-file driver claims the file; a read warns once and goes on', async () => {
    const write = await attempt(new MemoryIO(new Uint8Array(4096)), 'write');
    expect(write.result).toMatch(/^WRONG_FORMAT: .*no installed driver recognised the file; it is not treated as anyfile unless -f anyfile is given/);
    expect(write.warnings).toBe('');
    const read = await attempt(new MemoryIO(new Uint8Array(4096)), 'read');
    expect(read.result).toBe('anyfile');
    expect(read.warnings).toMatch(/^ic: warning: image format was not specified for '.*' and probing guessed anyfile: [^\n]*\n$/);
  });

  test.each([
    ['a VirtualBox VDI', withMagic(0x40, '\x7f\x10\xda\xbe')],
    ['a VHD', withMagic(4096 - 512, 'conectix')],
    ['a VHD', withMagic(0, 'conectix')],
    ['a VHDX', withMagic(0, 'vhdxfile')],
    ['a Parallels', withMagic(0, 'WithoutFreeSpace')],
    ['a Parallels', withMagic(0, 'WithouFreSpacExt')],
    ['a LUKS', withMagic(0, 'LUKS\xba\xbe')],
    ['a qcow \\(version 1\\)', withMagic(0, 'QFI\xfb\x00\x00\x00\x01')],
    ['a Bochs', withMagic(0, 'Bochs Virtual HD Image')],
    ['a cloop', withMagic(0, '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n')],
    ['an Apple disk image', withMagic(4096 - 512, 'koly')],
  ])('the message names a well-known format no driver handles: %s', async (title, io) => {
    const write = await attempt(io, 'write');
    expect(write.result).toMatch(new RegExp(`^WRONG_FORMAT: .*it looks like ${title}`));
    expect((await attempt(io, 'read')).warnings).toMatch(new RegExp(`it looks like ${title}`));
  });

  test('qcow version 2 and 3 magics are not qcow version 1, and a file too short for a trailer is not matched', async () => {
    expect((await attempt(withMagic(0, 'QFI\xfb\x00\x00\x00\x02'), 'write')).result).not.toContain('looks like');
    expect((await attempt(withMagic(0, 'koly', 100), 'write')).result).not.toContain('looks like');
  });
});
