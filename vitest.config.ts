import { defineConfig } from 'vitest/config';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('.', import.meta.url));

/** Every workspace package with tests becomes a vitest project named after the package. */
function workspacePackages(): { name: string; dir: string }[] {
  const out: { name: string; dir: string }[] = [];
  for (const group of ['packages', 'libs', 'apps', 'tooling', 'templates']) {
    const base = join(root, group);
    if (!existsSync(base)) continue;
    for (const entry of readdirSync(base)) {
      const manifest = join(base, entry, 'package.json');
      if (existsSync(manifest)) out.push({ name: JSON.parse(readFileSync(manifest, 'utf8')).name, dir: join(base, entry) });
    }
  }
  return out;
}

const packages = workspacePackages();

// Tests import workspace packages from their sources, so no build is needed to run them: every entry of a
// package's "exports" that names its source under the "@ic/source" condition (or the package's src/index.ts)
// is aliased to that source file.
function sourceAliases(): { find: RegExp; replacement: string }[] {
  const out: { find: RegExp; replacement: string }[] = [];
  const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  for (const p of packages) {
    const manifest = JSON.parse(readFileSync(join(p.dir, 'package.json'), 'utf8'));
    const exports = manifest.exports && typeof manifest.exports === 'object' ? manifest.exports : {};
    let hasRoot = false;
    for (const [subpath, target] of Object.entries(exports)) {
      const source = typeof target === 'object' && target !== null ? (target as Record<string, unknown>)['@ic/source'] : undefined;
      if (typeof source !== 'string') continue;
      const specifier = subpath === '.' ? p.name : `${p.name}/${subpath.replace(/^\.\//, '')}`;
      if (subpath === '.') hasRoot = true;
      out.push({ find: new RegExp(`^${escape(specifier)}$`), replacement: join(p.dir, source) });
    }
    if (!hasRoot && existsSync(join(p.dir, 'src/index.ts'))) out.push({ find: new RegExp(`^${escape(p.name)}$`), replacement: join(p.dir, 'src/index.ts') });
  }
  return out;
}
const alias = sourceAliases();

export default defineConfig({
  resolve: { alias },
  test: {
    reporters: ['default', join(root, 'tooling/summary-reporter.ts')],
    // In CI the tests' own console output (campaign tallies, tables) is printed only for tests that fail, so
    // nothing in a passing run's log looks like another runner's summary; run locally to see it.
    silent: process.env.CI ? 'passed-only' : false,
    // Two test files at a time even on a 2-core machine (vitest's default there is one): most of a file's time is
    // spent in qemu-img, qemu-io and ic child processes and in file I/O.
    maxWorkers: 2,
    // Only tests slower than this are listed by name in the output (a run lists thousands of cases otherwise).
    slowTestThreshold: 15_000,
    // The generated suites (the in-place matrix, the crash campaigns, the kill sweeps) run a covering subset by
    // default; IC_KIT_COVERAGE=full runs every case (packages/conformance/src/coverage.ts).
    env: { IC_KIT_COVERAGE: process.env.IC_KIT_COVERAGE ?? 'covering' },
    testTimeout: 60_000,
    hookTimeout: 120_000,
    projects: packages.map((p) => ({
      extends: true,
      test: { name: p.name, root: p.dir, include: ['src/**/*.test.ts', 'test/**/*.test.ts'] },
    })),
  },
});
