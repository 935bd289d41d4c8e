/** Format detection by score: raw only as the last resort, ties and (untrusted) second claims refused. */
import { expect, test } from 'vitest';
import { DRIVER_API_VERSION, MemoryIO, Registry, isIcError, type Driver } from '@ic/core';
import type { Context } from '../src/context.js';
import { probeDriver } from '../src/images.js';

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
  return { registry: new Registry(drivers), registryProblems: [], out() {}, err() {}, isTTY: false, untrusted, lock: true, forceShare: false, debug: false };
}

async function probed(drivers: Driver[], untrusted = false): Promise<string> {
  try {
    return (await probeDriver(context(drivers, untrusted), new MemoryIO(new Uint8Array(4096)))).name;
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
