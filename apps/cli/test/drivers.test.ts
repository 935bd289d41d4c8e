/** Third-party drivers: --driver MODULE, IC_DRIVERS, main()'s options; which wins; what `ic formats` says. */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DRIVER_API_VERSION, type Driver } from '@ic/core';
import { tempDir } from '@ic/test-utils';
import { bundledDrivers, driverModulesFromArgv, driverModulesFromEnv } from '../src/drivers.js';
import { resolveModule } from '../src/resolve.js';
import { ERROR_LINE, runIc } from './helpers.js';

const work = tempDir('ic-cli-drivers-');
afterAll(() => work.cleanup());

/** The source of a module exporting one toy driver: files starting with MAGIC are its images. */
function toyModule(name: string, options: { magic?: string; apiVersion?: number; version?: string } = {}): string {
  const magic = options.magic ?? 'TOY!';
  return `
const MAGIC = ${JSON.stringify(magic)};
export const ${name.replace(/\W/g, '_')}Driver = {
  name: ${JSON.stringify(name)}, description: 'a toy format for tests', version: ${JSON.stringify(options.version ?? '9.9.9')},
  apiVersion: ${options.apiVersion ?? DRIVER_API_VERSION}, capabilities: { read: true },
  probe(head) { return [...MAGIC].every((c, i) => head[i] === c.charCodeAt(0)) ? 100 : 0; },
  async open(io) {
    const size = await io.size();
    return {
      format: ${JSON.stringify(name)},
      info: () => ({ format: ${JSON.stringify(name)}, virtualSize: size, dirty: false }),
      async *map() { yield { kind: 'data', guestOffset: 0, length: size, hostOffset: 0 }; },
      read: (offset, length) => io.read(offset, length),
      async close() {},
    };
  },
};
`;
}

let toyPath: string;
let toyImage: string;
beforeAll(() => {
  toyPath = work.path('toy-driver.mjs');
  writeFileSync(toyPath, toyModule('toy'));
  toyImage = work.path('disk.toy');
  writeFileSync(toyImage, Buffer.concat([Buffer.from('TOY!'), Buffer.alloc(4092)]));
  // A package, found from a directory under the one holding node_modules, through its "exports" (import only).
  const pkg = work.path('project/node_modules/@acme/ic-driver-toy');
  mkdirSync(join(pkg, 'dist'), { recursive: true });
  writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: '@acme/ic-driver-toy', type: 'module', exports: { '.': { types: './x.d.ts', import: './dist/index.js' } } }));
  writeFileSync(join(pkg, 'dist/index.js'), toyModule('acme', { magic: 'ACME' }));
  mkdirSync(work.path('project/sub/dir'), { recursive: true });
  writeFileSync(work.path('broken.mjs'), "throw new Error('broken on purpose\\nsecond line');\n");
  writeFileSync(work.path('nothing.mjs'), 'export const answer = 42;\n');
  writeFileSync(work.path('future.mjs'), toyModule('future', { apiVersion: DRIVER_API_VERSION + 1 }));
  writeFileSync(work.path('newer-qed.mjs'), toyModule('qed', { magic: 'NOTQED', version: '99.0.0' }));
});

interface FormatsJson {
  drivers: { name: string; version: string; source: string; replaces?: string }[];
  problems?: string[];
}

async function formats(args: string[], options: Parameters<typeof runIc>[1] = {}): Promise<FormatsJson> {
  const result = await runIc([...args, 'formats', '--output=json'], options);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as FormatsJson;
}

describe('loading', () => {
  test('--driver PATH loads a module; its images are probed like any other; formats says where it came from', async () => {
    const json = await formats(['--driver', toyPath]);
    expect(json.drivers.map((d) => d.name)).toEqual([...bundledDrivers().map((d) => d.name), 'toy']);
    expect(json.drivers.find((d) => d.name === 'toy')!.source).toBe(toyPath);
    expect(json.drivers.filter((d) => d.name !== 'toy').every((d) => d.source === 'bundled')).toBe(true);
    const info = await runIc([`--driver=${toyPath}`, 'info', '--output=json', toyImage]);
    expect(info.code, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout).format).toBe('toy');
    const human = await runIc(['--driver', toyPath, 'formats']);
    expect(human.stdout).toMatch(new RegExp(`^ +from: ${toyPath.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`, 'm'));
    expect(human.stdout).toMatch(/^ +from: bundled$/m);
  });

  test('a package name is resolved from the current directory up, through its exports, as import() from there would', async () => {
    const cwd = work.path('project/sub/dir');
    const json = await formats(['--driver', '@acme/ic-driver-toy'], { cwd });
    expect(json.drivers.find((d) => d.name === 'acme')!.source).toBe(work.path('project/node_modules/@acme/ic-driver-toy/dist/index.js'));
    // IC_DRIVERS: comma-separated, the same meaning.
    const fromEnv = await formats([], { cwd, env: { IC_DRIVERS: ` @acme/ic-driver-toy , ${toyPath}` } });
    expect(fromEnv.drivers.map((d) => d.name).slice(-2)).toEqual(['acme', 'toy']);
    const missing = await runIc(['--driver', '@acme/not-installed', 'formats'], { cwd });
    expect(missing.code).toBe(0);
    expect(missing.stderr).toMatch(/^ic: warning: driver module '@acme\/not-installed' could not be loaded: cannot find package '@acme\/not-installed' [^\n]*; ignored\n$/);
  });

  test('a module that fails, exports no driver or speaks another API version: one warning line naming it, ic carries on', async () => {
    for (const [file, says] of [
      ['broken.mjs', /could not be loaded: broken on purpose; ignored/],
      ['nothing.mjs', /exports no driver/],
      ['future.mjs', new RegExp(`driver future speaks driver API ${DRIVER_API_VERSION + 1}, this ic speaks ${DRIVER_API_VERSION}; ignored`)],
      ['does-not-exist.mjs', /could not be loaded: .*no such file/],
    ] as const) {
      const result = await runIc(['--driver', work.path(file), 'info', '--output=json', toyImage.replace('disk.toy', 'plain.qcow2')]);
      expect(result.stderr.split('\n')[0]).toMatch(new RegExp(`^ic: warning: driver module '${work.path(file).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}'`));
      expect(result.stderr.split('\n')[0]).toMatch(says);
      // ... and then the command itself runs (here: a missing file, one error line of its own).
      expect(result.stderr.split('\n')[1] + '\n').toMatch(ERROR_LINE);
      expect(result.stderr).toContain('[NOT_FOUND]');
    }
    const withGood = await formats(['--driver', work.path('broken.mjs'), '--driver', toyPath]);
    expect(withGood.drivers.map((d) => d.name)).toContain('toy');
  });
});

describe('which driver wins', () => {
  test('a loaded driver replaces the bundled one of the same name, in its place, and formats says so', async () => {
    const json = await formats(['--driver', work.path('newer-qed.mjs')]);
    const names = json.drivers.map((d) => d.name);
    expect(names).toEqual(bundledDrivers().map((d) => d.name)); // same order: the replacement takes its place
    const qed = json.drivers.find((d) => d.name === 'qed')!;
    expect(qed.version).toBe('99.0.0');
    expect(qed.source).toBe(work.path('newer-qed.mjs'));
    expect(qed.replaces).toMatch(/^the bundled qed \d+\.\d+\.\d+$/);
    const human = await runIc(['--driver', work.path('newer-qed.mjs'), 'formats']);
    expect(human.stdout).toMatch(/from: .*newer-qed\.mjs \(replaces the bundled qed /);
  });

  test('--driver wins over IC_DRIVERS, which wins over main() options; each says what it replaced', async () => {
    const second = work.path('toy-second.mjs');
    writeFileSync(second, toyModule('toy', { version: '2.0.0' }));
    const given: Driver = { ...(bundledDrivers()[0] as Driver), name: 'toy', version: '0.0.1' };
    const json = await formats(['--driver', second], { drivers: [given], env: { IC_DRIVERS: toyPath } });
    const toy = json.drivers.find((d) => d.name === 'toy')!;
    expect(toy.version).toBe('2.0.0');
    expect(toy.replaces).toBe(`the one from ${toyPath}, toy 9.9.9`);
    const programmatic = await formats([], { drivers: [given] });
    expect(programmatic.drivers.find((d) => d.name === 'toy')!.source).toBe('main() options');
  });
});

test('--driver values are found anywhere before --, and an option-less --driver is left to commander', () => {
  expect(driverModulesFromArgv(['info', '--driver', 'a', 'x', '--driver=b', '--', '--driver', 'c'])).toEqual(['a', 'b']);
  expect(driverModulesFromArgv(['info', '--driver'])).toEqual([]);
  expect(driverModulesFromEnv(' a,, b ,')).toEqual(['a', 'b']);
});

describe('module resolution (import() from the current directory)', () => {
  const root = work.path('resolve');
  beforeAll(() => {
    const write = (path: string, text: string) => {
      mkdirSync(join(root, path, '..'), { recursive: true });
      writeFileSync(join(root, path), text);
    };
    write('node_modules/plain/package.json', JSON.stringify({ name: 'plain', main: 'lib/main' }));
    write('node_modules/plain/lib/main.js', '');
    write('node_modules/bare/index.js', '');
    write('node_modules/conds/package.json', JSON.stringify({ exports: { '.': { require: './c.cjs', node: { import: './n.mjs' }, default: './d.js' }, './sub/*': './lib/*.js', './sub/x/*': './special/*.js' } }));
    for (const file of ['c.cjs', 'n.mjs', 'd.js', 'lib/a.js', 'special/b.js']) write(`node_modules/conds/${file}`, '');
    write('node_modules/string/package.json', JSON.stringify({ exports: './only.js' }));
    write('node_modules/string/only.js', '');
    write('local.mjs', '');
  });

  test('main, index.js, conditions in order, patterns (longest prefix), a plain string; paths and file: URLs', () => {
    expect(resolveModule('plain', root)).toBe(join(root, 'node_modules/plain/lib/main.js'));
    expect(resolveModule('bare', join(root, 'node_modules'))).toBe(join(root, 'node_modules/bare/index.js'));
    expect(resolveModule('conds', root)).toBe(join(root, 'node_modules/conds/n.mjs'));
    expect(resolveModule('conds/sub/a', root)).toBe(join(root, 'node_modules/conds/lib/a.js'));
    expect(resolveModule('conds/sub/x/b', root)).toBe(join(root, 'node_modules/conds/special/b.js'));
    expect(resolveModule('string', root)).toBe(join(root, 'node_modules/string/only.js'));
    expect(() => resolveModule('string/other', root)).toThrow(/does not export/);
    expect(resolveModule('./local.mjs', root)).toBe(join(root, 'local.mjs'));
    expect(resolveModule(`file://${join(root, 'local.mjs')}`, '/')).toBe(join(root, 'local.mjs'));
    expect(() => resolveModule('nope', root)).toThrow(/cannot find package 'nope'/);
  });
});
