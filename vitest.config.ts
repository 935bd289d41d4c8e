import { defineConfig } from 'vitest/config';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const root = fileURLToPath(new URL('.', import.meta.url));

/** Every workspace package with tests becomes a vitest project named after the package. */
function workspacePackages(): { name: string; dir: string }[] {
  const out: { name: string; dir: string }[] = [];
  for (const group of ['packages', 'apps', 'tooling']) {
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

// Tests import workspace packages from their sources, so no build is needed to run them.
const alias = Object.fromEntries(
  packages.filter((p) => existsSync(join(p.dir, 'src/index.ts'))).map((p) => [p.name, join(p.dir, 'src/index.ts')]),
);

export default defineConfig({
  resolve: { alias },
  test: {
    reporters: ['default', join(root, 'tooling/summary-reporter.ts')],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    projects: packages.map((p) => ({
      extends: true,
      test: { name: p.name, root: p.dir, include: ['src/**/*.test.ts', 'test/**/*.test.ts'] },
    })),
  },
});
