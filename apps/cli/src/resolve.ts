import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { IcError } from '@ic/core';

/**
 * Where `import(specifier)` would find a module if it were written in a file in `fromDir`: Node's ESM
 * resolution for the cases a driver module is named by (a path, a file: URL, or a package name with an optional
 * subpath, found in node_modules from `fromDir` up, through its "exports" with the "node" and "import"
 * conditions, or else its "main" / index.js). Node 20 cannot resolve from another directory by itself
 * (import.meta.resolve's parent argument needs a flag), hence this small copy of the rules.
 */
export function resolveModule(specifier: string, fromDir: string): string {
  if (specifier.startsWith('file:')) return existing(fileURLToPath(specifier), specifier);
  if (specifier.startsWith('./') || specifier.startsWith('../') || specifier === '.' || specifier === '..' || isAbsolute(specifier)) {
    return existing(resolve(fromDir, specifier), specifier);
  }
  const match = specifier.match(/^((?:@[^/]+\/)?[^/@][^/]*)(\/.*)?$/);
  if (!match) throw new IcError('INVALID', `'${specifier}' is not a valid module name`);
  const [, name, rest] = match as unknown as [string, string, string | undefined];
  const subpath = rest === undefined ? '.' : `.${rest}`;
  for (let dir = resolve(fromDir); ; dir = dirname(dir)) {
    const packageDir = join(dir, 'node_modules', name);
    if (existsSync(packageDir) && statSync(packageDir).isDirectory()) return resolveInPackage(packageDir, subpath, specifier);
    if (dirname(dir) === dir) break;
  }
  throw new IcError('NOT_FOUND', `cannot find package '${name}' from ${fromDir} (no node_modules/${name} there or above)`);
}

function existing(path: string, specifier: string): string {
  if (!existsSync(path)) throw new IcError('NOT_FOUND', `'${specifier}': no such file (${path})`);
  if (!statSync(path).isFile()) throw new IcError('INVALID', `'${specifier}' is not a file (${path})`);
  return path;
}

const CONDITIONS = ['node', 'import', 'module-sync', 'default'];

/** A conditional export target: the first condition (in the object's own order) that ic's environment meets. */
function conditional(target: unknown, wildcard: string | undefined): string | undefined {
  if (typeof target === 'string') return wildcard === undefined ? target : target.replaceAll('*', wildcard);
  if (Array.isArray(target)) {
    for (const candidate of target) {
      const found = conditional(candidate, wildcard);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (target !== null && typeof target === 'object') {
    for (const [condition, value] of Object.entries(target)) {
      if (!CONDITIONS.includes(condition)) continue;
      const found = conditional(value, wildcard);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

function exportTarget(exports: unknown, subpath: string): string | undefined {
  const isSubpathMap = exports !== null && typeof exports === 'object' && !Array.isArray(exports) && Object.keys(exports).some((key) => key.startsWith('.'));
  if (!isSubpathMap) return subpath === '.' ? conditional(exports, undefined) : undefined;
  const map = exports as Record<string, unknown>;
  if (subpath in map && !subpath.includes('*')) return conditional(map[subpath], undefined);
  // Patterns ("./*", "./drivers/*.js"): the longest matching prefix wins, as in Node.
  let best: { key: string; wildcard: string } | undefined;
  for (const key of Object.keys(map)) {
    const star = key.indexOf('*');
    if (star < 0) continue;
    const prefix = key.slice(0, star);
    const suffix = key.slice(star + 1);
    if (subpath.startsWith(prefix) && subpath.endsWith(suffix) && subpath.length >= key.length - 1) {
      if (!best || prefix.length > best.key.indexOf('*')) best = { key, wildcard: subpath.slice(prefix.length, subpath.length - suffix.length) };
    }
  }
  return best ? conditional(map[best.key], best.wildcard) : undefined;
}

function resolveInPackage(packageDir: string, subpath: string, specifier: string): string {
  const manifestPath = join(packageDir, 'package.json');
  let manifest: { exports?: unknown; main?: unknown } = {};
  if (existsSync(manifestPath)) {
    try {
      manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as typeof manifest;
    } catch (error) {
      throw new IcError('INVALID', `${manifestPath}: not valid JSON (${error instanceof Error ? error.message.split('\n')[0] : String(error)})`);
    }
  }
  if (manifest.exports !== undefined) {
    const target = exportTarget(manifest.exports, subpath);
    if (target === undefined || !target.startsWith('./')) {
      throw new IcError('NOT_FOUND', `'${specifier}': ${manifestPath} does not export '${subpath}' for import`);
    }
    return existing(join(packageDir, target), specifier);
  }
  if (subpath !== '.') return existing(join(packageDir, subpath), specifier);
  // Legacy main resolution (no "exports"): main, main.js, main/index.js, then index.js.
  const main = typeof manifest.main === 'string' ? manifest.main : undefined;
  const candidates = main ? [main, `${main}.js`, join(main, 'index.js')] : [];
  candidates.push('index.js');
  for (const candidate of candidates) {
    const path = join(packageDir, candidate);
    if (existsSync(path) && statSync(path).isFile()) return path;
  }
  throw new IcError('NOT_FOUND', `'${specifier}': ${packageDir} has no main module (no "exports", "main" or index.js)`);
}
