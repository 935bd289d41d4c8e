import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/**
 * The package boundaries that make "one driver = conversion to and from every other format" true:
 *  - @ic/core depends on no driver and imports none, and never compares anything with a format name;
 *  - a driver depends on no other driver and imports none, and its src/ never imports node:* modules;
 *  - the CLI finds formats through the registry: it compares nothing with a format name either.
 * A driver is any @ic/* package under packages/ that is not core or conformance; libraries under libs/ (the
 * qemu-img output formatters) are never drivers, and are held to the non-driver rules.
 */
export interface Package {
  dir: string;
  name: string;
  manifest: Record<string, Record<string, string> | string | boolean | undefined>;
}

const NOT_DRIVERS = new Set(['@ic/core', '@ic/cli', '@ic/conformance']);

export function workspacePackages(root: string): Package[] {
  const out: Package[] = [];
  for (const group of ['packages', 'libs', 'apps']) {
    const base = join(root, group);
    if (!existsSync(base)) continue;
    for (const entry of readdirSync(base)) {
      const file = join(base, entry, 'package.json');
      if (!existsSync(file)) continue;
      const manifest = JSON.parse(readFileSync(file, 'utf8'));
      out.push({ dir: join(base, entry), name: manifest.name, manifest });
    }
  }
  return out;
}

function sourceFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (/\.(ts|mts|js|mjs)$/.test(name) && !/\.test\./.test(name)) out.push(path);
  }
  return out;
}

export function checkBoundaries(root: string, formatNames: readonly string[]): string[] {
  const packages = workspacePackages(root);
  const drivers = new Set(packages.filter((p) => p.name.startsWith('@ic/') && p.dir.includes('/packages/') && !NOT_DRIVERS.has(p.name)).map((p) => p.name));
  const problems: string[] = [];
  const formatComparison = new RegExp(`(===|!==|==|!=|case)\\s*['"\`](${formatNames.join('|')})['"\`]|['"\`](${formatNames.join('|')})['"\`]\\s*(===|!==|==|!=)`);
  for (const pkg of packages) {
    const isDriver = drivers.has(pkg.name);
    const deps = { ...(pkg.manifest.dependencies as object), ...(pkg.manifest.peerDependencies as object), ...(pkg.manifest.optionalDependencies as object) };
    if (isDriver || pkg.name === '@ic/core') {
      for (const dep of Object.keys(deps)) if (drivers.has(dep) && dep !== pkg.name) problems.push(`${pkg.name} depends on driver ${dep}`);
    }
    for (const file of sourceFiles(join(pkg.dir, 'src'))) {
      const text = readFileSync(file, 'utf8');
      const where = relative(root, file);
      for (const match of text.matchAll(/(?:from\s+|import\s*\(\s*)['"]([^'"]+)['"]/g)) {
        const spec = match[1]!;
        const target = spec.match(/^@ic\/[a-z0-9-]+/)?.[0];
        if ((isDriver || pkg.name === '@ic/core') && target && drivers.has(target) && target !== pkg.name) problems.push(`${where} imports driver ${target}`);
        if (isDriver && spec.startsWith('node:')) problems.push(`${where} (a driver) imports ${spec}`);
      }
      if (!isDriver) {
        const lines = text.split('\n');
        lines.forEach((line, index) => {
          if (formatComparison.test(line)) problems.push(`${where}:${index + 1} compares with a format name: ${line.trim()}`);
        });
      }
    }
  }
  return problems;
}
