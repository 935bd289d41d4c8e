/**
 * What a user of the published packages gets. Every publishable workspace package is packed with `pnpm pack`
 * (which rewrites workspace: ranges) and installed with plain npm into a fresh CommonJS project outside the
 * workspace (`npm init -y`); the @ic/* packages come only from the tarballs, third-party ones (commander, koffi,
 * vitest for the kit) from the registry. There: the root README's library example runs as the README tells,
 * on a qemu-made qcow2, and qemu-img judges the result; so does @ic/qemu-output's README example; `npx ic`
 * works; every entry point loads with import and with require (Node 20.19+). A driver template under
 * templates/driver, when the checkout has one, is packed too, loaded into the installed CLI with --driver and
 * IC_DRIVERS, and converted to qcow2, QED and VMDK and back.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { qemuCreate, qemuIo, requireBuiltIc, requireQemu, serveWithQemuNbd, sha256File, tempDir } from '@ic/test-utils';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const rootManifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { repository: { url: string } };
const templateDir = process.env['IC_TEMPLATE_DRIVER_DIR'] ?? join(root, 'templates/driver');
const hasTemplate = existsSync(join(templateDir, 'package.json'));
const LONG = 15 * 60_000;

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  type?: string;
  license?: string;
  repository?: { type?: string; url?: string; directory?: string };
  homepage?: string;
  bugs?: { url?: string };
  keywords?: string[];
  files?: string[];
  bin?: Record<string, string>;
  exports?: Record<string, unknown>;
  scripts?: Record<string, string>;
  [field: string]: unknown;
}

/** The workspace packages that are published: under packages/, libs/ and apps/, not private. */
function publishable(): { dir: string; manifest: Manifest }[] {
  const out: { dir: string; manifest: Manifest }[] = [];
  for (const group of ['packages', 'libs', 'apps']) {
    if (!existsSync(join(root, group))) continue;
    for (const entry of readdirSync(join(root, group))) {
      const file = join(root, group, entry, 'package.json');
      if (!existsSync(file)) continue;
      const manifest = JSON.parse(readFileSync(file, 'utf8')) as Manifest;
      if (manifest.private !== true) out.push({ dir: join(root, group, entry), manifest });
    }
  }
  return out;
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command with this process's environment minus what pnpm and npm put there for scripts (npm_config_*,
 * npm_package_*, pnpm's own), so that `npm` in the fresh project is plain npm with the user's settings.
 */
function sh(command: string, args: readonly string[], cwd: string, env: Record<string, string> = {}, timeout = 10 * 60_000): Run {
  const clean: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !/^(npm_|pnpm_|PNPM_)/i.test(name) && name !== 'NODE_OPTIONS' && name !== 'INIT_CWD') clean[name] = value;
  }
  const result = spawnSync(command, args, { cwd, env: { ...clean, ...env }, encoding: 'utf8', timeout, killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024 });
  if (result.error) throw new Error(`${command} ${args.join(' ')}: ${result.error.message}`);
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function ok(command: string, args: readonly string[], cwd: string, env: Record<string, string> = {}): string {
  const result = sh(command, args, cwd, env);
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} (in ${cwd}) exited ${result.status}:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** The first ```js block of the README section under `heading`, and the file name the section says to save it as. */
function readmeExample(readme: string, heading: string): { file: string; code: string } {
  const start = readme.indexOf(`\n${heading}\n`);
  if (start < 0) throw new Error(`README has no section "${heading}"`);
  const next = readme.indexOf('\n## ', start + heading.length + 2);
  const section = readme.slice(start, next < 0 ? undefined : next);
  const code = section.match(/```js\n([\s\S]*?)```/)?.[1];
  if (!code) throw new Error(`README section "${heading}" has no \`\`\`js block`);
  const file = section.match(/[Ss]ave (?:it|the example) as `([^`]+\.m?js)`/)?.[1];
  if (!file) throw new Error(`README section "${heading}" does not say what file to save the example as`);
  return { file, code };
}

const scratch = tempDir('ic-pack-');
const tarballs = join(scratch.dir, 'tarballs');
const unpacked = join(scratch.dir, 'unpacked');
const project = join(scratch.dir, 'project');

interface Installed {
  packed: { dir: string; manifest: Manifest; tarball: string; contents: string }[];
  template?: { name: string; tarball: string };
}

/** Pack and install, once, on first use inside a test (so that a failure counts as a failed test). */
let installing: Promise<Installed> | undefined;
function installed(): Promise<Installed> {
  installing ??= (async () => {
    mkdirSync(tarballs, { recursive: true });
    mkdirSync(unpacked, { recursive: true });
    mkdirSync(project, { recursive: true });
    const packed: Installed['packed'] = [];
    const pack = (dir: string): string => {
      const before = new Set(readdirSync(tarballs));
      ok('pnpm', ['pack', '--pack-destination', tarballs], dir);
      const made = readdirSync(tarballs).filter((name) => !before.has(name) && name.endsWith('.tgz'));
      if (made.length !== 1) throw new Error(`pnpm pack in ${dir} made ${made.length} tarballs`);
      return join(tarballs, made[0]!);
    };
    for (const { dir, manifest } of publishable()) {
      const tarball = pack(dir);
      const contents = join(unpacked, manifest.name.replace('/', '+'));
      mkdirSync(contents, { recursive: true });
      ok('tar', ['-xzf', tarball, '-C', contents], root);
      packed.push({ dir, manifest, tarball, contents: join(contents, 'package') });
    }
    let template: Installed['template'];
    if (hasTemplate) {
      const manifest = JSON.parse(readFileSync(join(templateDir, 'package.json'), 'utf8')) as Manifest;
      if (manifest.scripts?.['build'] && !existsSync(join(templateDir, 'dist'))) ok('pnpm', ['run', 'build'], templateDir);
      template = { name: manifest.name, tarball: pack(templateDir) };
    }
    ok('npm', ['init', '-y'], project);
    const all = [...packed.map((p) => p.tarball), ...(template ? [template.tarball] : [])];
    ok('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', ...all], project);
    return { packed, ...(template ? { template } : {}) };
  })();
  return installing;
}

const MiB = 1024 * 1024;
/** A qcow2 made by qemu-img with data at a few places and a zero cluster, and a pristine copy of it. */
function makeQcow2(name: string): { file: string; original: string } {
  const file = join(project, name);
  const original = join(scratch.dir, `${name}.original`);
  qemuCreate(file, 'qcow2', 64 * MiB, { o: 'cluster_size=65536' });
  qemuIo(file, 'qcow2', ['write -P 0x5a 0 64k', 'write -P 0x6b 1M 200k', 'write -z 4M 64k', 'write -P 0x7c 63M 4k']);
  copyFileSync(file, original);
  return { file, original };
}

beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => scratch.cleanup());

describe('published packages', () => {
  test('every publishable package packs with pnpm into a tarball with no workspace: range, LICENSE, metadata and an ESM README', async () => {
    const { packed } = await installed();
    const names = packed.map((p) => p.manifest.name).sort();
    expect(names).toEqual(expect.arrayContaining(['@ic/cli', '@ic/conformance', '@ic/core', '@ic/qcow2', '@ic/qed', '@ic/qemu-output', '@ic/raw', '@ic/vmdk']));
    const license = readFileSync(join(root, 'LICENSE'), 'utf8');
    expect(license).toMatch(/^MIT License/);
    for (const { dir, manifest: source, contents } of packed) {
      const manifest = JSON.parse(readFileSync(join(contents, 'package.json'), 'utf8')) as Manifest;
      const what = manifest.name;
      for (const field of ['dependencies', 'peerDependencies', 'optionalDependencies', 'devDependencies']) {
        expect(JSON.stringify(manifest[field] ?? {}), `${what} ${field}`).not.toMatch(/workspace:/);
      }
      expect(manifest.version, what).toBe(source.version);
      expect(manifest.type, what).toBe('module');
      expect(manifest.license, what).toBe('MIT');
      expect(readFileSync(join(contents, 'LICENSE'), 'utf8'), `${what} LICENSE`).toBe(license);
      expect(manifest.repository, what).toEqual({ type: 'git', url: rootManifest.repository.url, directory: relative(root, dir) });
      expect(manifest.homepage, what).toMatch(/^https:\/\//);
      expect(manifest.bugs?.url, what).toMatch(/^https:\/\/.*\/issues$/);
      expect(manifest.keywords?.length, what).toBeGreaterThan(0);
      expect(manifest.files, what).toContain('dist');
      expect(existsSync(join(contents, 'dist')), `${what} dist`).toBe(true);
      expect(readdirSync(contents).filter((name) => !['dist', 'bin', 'package.json', 'README.md', 'LICENSE'].includes(name)), what).toEqual([]);
      const readme = readFileSync(join(contents, 'README.md'), 'utf8');
      expect(readme, `${what} README says it is ESM`).toMatch(/ES module|ESM/);
      expect(readme, `${what} README shows the import`).toContain(`from '${what}'`);
    }
    // npm resolved every @ic/* package from the tarballs, never from a registry.
    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8')) as { packages: Record<string, { resolved?: string }> };
    const fromRegistry = Object.entries(lock.packages).filter(([path, entry]) => /node_modules\/@ic\//.test(path) && !entry.resolved?.startsWith('file:'));
    expect(fromRegistry).toEqual([]);
  }, LONG);

  test('npm pack and npm publish refuse, pointing at pnpm', () => {
    for (const command of [['pack', '--dry-run'], ['publish', '--dry-run']]) {
      const result = sh('npm', command, join(root, 'packages/core'));
      expect(result.status, command.join(' ')).not.toBe(0);
      expect(result.stderr, command.join(' ')).toMatch(/@ic\/core: refusing to (pack|publish) with npm.*use `pnpm (pack|publish)`/);
    }
  });

  test("the root README's library example runs as written there and converts a qemu-made qcow2 to QED", async () => {
    await installed();
    const example = readmeExample(readFileSync(join(root, 'README.md'), 'utf8'), '## Library use');
    expect(example.code).toContain("'disk.qcow2'");
    writeFileSync(join(project, example.file), example.code);
    const { file, original } = makeQcow2('disk.qcow2');
    const result = sh('node', [example.file], project);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^\d+ clusters kept, \d+ bytes written\n$/);
    const info = JSON.parse(ok('qemu-img', ['info', '--output=json', file], project)) as { format: string };
    expect(info.format).toBe('qed');
    const check = sh('qemu-img', ['check', '-f', 'qed', file], project);
    expect(check.status, check.stdout + check.stderr).toBe(0);
    const compare = sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qed', original, file], project);
    expect(compare.status, compare.stdout + compare.stderr).toBe(0);
  }, LONG);

  test("the root README's library example, as written there, refuses an image qemu-nbd holds: LOCKED, byte-identical", async () => {
    await installed();
    const example = readmeExample(readFileSync(join(root, 'README.md'), 'utf8'), '## Library use');
    const sub = join(project, 'held');
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, example.file), example.code);
    const file = join(sub, 'disk.qcow2');
    qemuCreate(file, 'qcow2', 64 * MiB);
    qemuIo(file, 'qcow2', ['write -P 0x5a 0 1M', 'write -P 0xa5 40M 64k']);
    const server = await serveWithQemuNbd(file, 'qcow2', join(scratch.dir, 'held-nbd.sock'));
    try {
      const before = sha256File(file);
      // It runs in a folder of the installed project, so its imports resolve to the packed packages.
      const result = sh('node', [example.file], sub);
      expect(result.status, result.stdout + result.stderr).not.toBe(0);
      expect(result.stderr).toMatch(/LOCKED/);
      expect(sha256File(file)).toBe(before);
    } finally {
      await server.stop();
    }
  }, LONG);

  test("@ic/qemu-output's README example prints what qemu-img info, map and check print", async () => {
    await installed();
    const readme = readFileSync(join(root, 'libs/qemu-output/README.md'), 'utf8');
    const code = readme.match(/## Use\n[\s\S]*?```js\n([\s\S]*?)```/)?.[1];
    expect(code).toBeDefined();
    const sub = join(project, 'qemu-output-example');
    mkdirSync(sub, { recursive: true });
    writeFileSync(join(sub, 'example.mjs'), code!);
    const image = join(sub, 'disk.qcow2');
    qemuCreate(image, 'qcow2', 64 * MiB);
    qemuIo(image, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 3M 128k', 'write -z 10M 64k']);
    const result = sh('node', ['example.mjs'], sub);
    expect(result.status, result.stderr).toBe(0);
    const info = JSON.parse(ok('qemu-img', ['info', '-f', 'qcow2', '--output=json', 'disk.qcow2'], sub)) as Record<string, unknown>;
    delete info['actual-size']; // the example has no file system to ask (MemoryIO), so it leaves actual-size out
    const expected =
      ok('qemu-img', ['map', '-f', 'qcow2', '--output=json', 'disk.qcow2'], sub) +
      `${JSON.stringify(info, null, 4)}\n` +
      ok('qemu-img', ['check', '-f', 'qcow2', '--output=json', 'disk.qcow2'], sub);
    expect(result.stdout).toBe(expected);
  }, LONG);

  test('npx ic works in the fresh project: --version, info (text, and JSON equal to qemu-img info)', async () => {
    const { packed } = await installed();
    const cli = packed.find((p) => p.manifest.name === '@ic/cli')!;
    const version = sh('npx', ['--no-install', 'ic', '--version'], project);
    expect(version.status, version.stderr).toBe(0);
    expect(version.stdout).toMatch(new RegExp(`^ic ${cli.manifest.version.replace(/\./g, '\\.')}\n`));
    makeQcow2('info.qcow2');
    const human = sh('npx', ['--no-install', 'ic', 'info', 'info.qcow2'], project);
    expect(human.status, human.stderr).toBe(0);
    expect(human.stdout).toContain('image: info.qcow2\nfile format: qcow2\nvirtual size: 64 MiB (67108864 bytes)\n');
    const json = sh('npx', ['--no-install', 'ic', 'info', '--output=json', 'info.qcow2'], project);
    expect(json.status, json.stderr).toBe(0);
    expect(json.stdout).toBe(ok('qemu-img', ['info', '--output=json', 'info.qcow2'], project));
  }, LONG);

  test('every entry point loads in the CommonJS project with require() (Node 20.19+) and with import()', async () => {
    const { packed } = await installed();
    const [major, minor] = process.versions.node.split('.').map(Number) as [number, number];
    expect(major > 22 || (major === 22 && minor >= 12) || (major === 20 && minor >= 19), `Node ${process.versions.node}: the README names 20.19+/22.12+`).toBe(true);
    const specifiers = packed.flatMap(({ manifest }) =>
      Object.keys(manifest.exports ?? { '.': null })
        .filter((subpath) => subpath !== './package.json')
        .map((subpath) => (subpath === '.' ? manifest.name : `${manifest.name}/${subpath.slice(2)}`)),
    );
    expect(specifiers).toEqual(expect.arrayContaining(['@ic/core', '@ic/core/sdk', '@ic/core/node']));
    const script = `
      const specifiers = ${JSON.stringify(specifiers)};
      (async () => {
        const out = {};
        // require(esm) adds __esModule to the namespace it returns; the exports are otherwise the same.
        const names = (namespace) => Object.keys(namespace).filter((key) => key !== '__esModule').sort().join(',');
        for (const s of specifiers) out[s] = { required: names(require(s)), imported: names(await import(s)) };
        const core = require('@ic/core');
        out.core = [typeof core.convertInPlace, typeof core.Registry, typeof core.MemoryIO, typeof require('@ic/core/node').FileIO];
        console.log(JSON.stringify(out));
      })().catch((error) => { console.error(error); process.exit(1); });`;
    writeFileSync(join(project, 'load-all.cjs'), script);
    expect(JSON.parse(readFileSync(join(project, 'package.json'), 'utf8')).type ?? 'commonjs').toBe('commonjs');
    const result = sh('node', ['load-all.cjs'], project);
    expect(result.status, result.stderr).toBe(0);
    expect(result.stderr).not.toMatch(/ExperimentalWarning|ERR_REQUIRE/);
    const out = JSON.parse(result.stdout) as Record<string, { required: string; imported: string }> & { core: string[] };
    for (const s of specifiers) {
      expect(out[s]!.required, s).not.toBe('');
      expect(out[s]!.required, s).toBe(out[s]!.imported);
    }
    expect(out.core).toEqual(['function', 'function', 'function', 'function']);
    // The one-liner the task names.
    const oneLiner = sh('node', ['-e', "require('@ic/core')"], project);
    expect(oneLiner.status, oneLiner.stderr).toBe(0);
  }, LONG);
});

describe.skipIf(!hasTemplate)(`the driver template (${relative(root, templateDir)})`, () => {
  test('packs, installs, loads into the installed CLI with --driver and IC_DRIVERS, and converts to qcow2, QED and VMDK and back', async () => {
    const { template } = await installed();
    const name = template!.name;
    // What the template's module exports, and a file of its format with known content (writeImage), next to
    // the same guest content as a raw file for qemu-img compare.
    const make = `
      import { writeFileSync } from 'node:fs';
      import { MemoryIO, writeImage } from '@ic/core';
      const module = await import(${JSON.stringify(name)});
      const drivers = Object.values(module).filter((v) => v && typeof v === 'object' && typeof v.name === 'string' && typeof v.open === 'function' && typeof v.probe === 'function');
      if (drivers.length === 0) throw new Error('${name} exports no driver');
      const driver = drivers[0];
      const size = 16 * 1024 * 1024;
      const fill = (n, byte) => new Uint8Array(n).fill(byte);
      const data = [{ guestOffset: 0, bytes: fill(65536, 0x31) }, { guestOffset: 3 * 1024 * 1024, bytes: fill(131072, 0x32) }, { guestOffset: size - 65536, bytes: fill(65536, 0x33) }];
      const io = new MemoryIO();
      await writeImage(io, driver, { virtualSize: size, data });
      writeFileSync('template.img', io.snapshot());
      const raw = new Uint8Array(size);
      for (const d of data) raw.set(d.bytes, d.guestOffset);
      writeFileSync('template.raw', raw);
      console.log(driver.name);`;
    writeFileSync(join(project, 'make-template-image.mjs'), make);
    const made = sh('node', ['make-template-image.mjs'], project);
    expect(made.status, made.stderr).toBe(0);
    const format = made.stdout.trim();
    const ic = (args: string[], how: 'flag' | 'env') =>
      how === 'flag' ? sh('npx', ['--no-install', 'ic', '--driver', name, ...args], project) : sh('npx', ['--no-install', 'ic', ...args], project, { IC_DRIVERS: name });
    const formats = sh('npx', ['--no-install', 'ic', '--driver', name, 'formats'], project);
    expect(formats.status, formats.stderr).toBe(0);
    expect(formats.stdout).toContain(format);
    for (const [target, how] of [['qcow2', 'flag'], ['qed', 'env'], ['vmdk', 'flag']] as const) {
      const to = ic(['convert-inplace', '-f', format, 'template.img', target], how);
      expect(to.status, `${format} -> ${target}: ${to.stderr}`).toBe(0);
      const check = sh('qemu-img', ['check', '-f', target, 'template.img'], project);
      expect(check.status, `${target}: ${check.stdout}${check.stderr}`).toBe(0);
      const compare = sh('qemu-img', ['compare', '-f', 'raw', '-F', target, 'template.raw', 'template.img'], project);
      expect(compare.status, `${target}: ${compare.stdout}${compare.stderr}`).toBe(0);
      const back = ic(['convert-inplace', '-f', target, 'template.img', format], how === 'flag' ? 'env' : 'flag');
      expect(back.status, `${target} -> ${format}: ${back.stderr}`).toBe(0);
      const info = ic(['info', '-f', format, '--output=json', 'template.img'], 'env');
      expect(info.status, info.stderr).toBe(0);
      expect(JSON.parse(info.stdout).format).toBe(format);
    }
    // The last conversion back to the template's format kept the content too.
    const last = ic(['convert-inplace', '-f', format, 'template.img', 'qcow2'], 'env');
    expect(last.status, last.stderr).toBe(0);
    const compare = sh('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'template.raw', 'template.img'], project);
    expect(compare.status, compare.stdout + compare.stderr).toBe(0);
  }, LONG);
});
