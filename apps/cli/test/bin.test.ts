/** The one test through the real executable: `node apps/cli/bin/ic.js` (built first when dist is missing). */
import { expect, test } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { DRIVER_API_VERSION } from '@ic/core';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { qemuCreate, qemuInfo, requireQemu, tempDir } from '@ic/test-utils';

requireQemu();
const appDir = fileURLToPath(new URL('..', import.meta.url));
const repoRoot = join(appDir, '..', '..');

test('bin/ic.js runs, prints, and exits with the right status', { timeout: 180_000 }, () => {
  if (!existsSync(join(appDir, 'dist', 'cli.js'))) {
    const build = spawnSync('pnpm', ['--filter', '@ic/cli...', 'build'], { cwd: repoRoot, encoding: 'utf8' });
    expect(build.status, build.stdout + build.stderr).toBe(0);
  }
  const work = tempDir('ic-cli-bin-');
  try {
    const ic = (...args: string[]) => spawnSync(process.execPath, [join(appDir, 'bin', 'ic.js'), ...args], { encoding: 'utf8' });
    const image = work.path('disk.qcow2');
    qemuCreate(image, 'qcow2', '16M');
    const info = ic('info', '--output=json', image);
    expect(info.status, info.stderr).toBe(0);
    expect(JSON.parse(info.stdout)).toEqual(qemuInfo(image, 'qcow2'));
    const missing = ic('info', work.path('missing.img'));
    expect(missing.status).toBe(1);
    expect(missing.stdout).toBe('');
    expect(missing.stderr).toMatch(/^ic: .* \[NOT_FOUND\]\n$/);
    const usage = ic('bogus');
    expect(usage.status).toBe(2);
    expect(usage.stderr).toMatch(/^ic: unknown command 'bogus'.* \[USAGE\]\n$/);
    // A driver module loaded by the built CLI (dist), by path and through IC_DRIVERS.
    const module = work.path('toy.mjs');
    writeFileSync(
      module,
      `export const toy = { name: 'toy', description: 'toy', version: '1.0.0', apiVersion: ${DRIVER_API_VERSION}, capabilities: {}, probe: () => 0, open: async () => { throw new Error('no'); } };\n`,
    );
    const formats = ic('--driver', module, 'formats', '--output=json');
    expect(formats.status, formats.stderr).toBe(0);
    expect((JSON.parse(formats.stdout) as { drivers: { name: string; source: string }[] }).drivers.at(-1)).toMatchObject({ name: 'toy', source: module });
    const fromEnv = spawnSync(process.execPath, [join(appDir, 'bin', 'ic.js'), 'formats'], { encoding: 'utf8', env: { ...process.env, IC_DRIVERS: `${module},${work.path('missing.mjs')}` } });
    expect(fromEnv.status).toBe(0);
    expect(fromEnv.stdout).toContain(`from: ${module}`);
    expect(fromEnv.stderr).toMatch(/^ic: warning: driver module '.*missing\.mjs' could not be loaded: [^\n]*; ignored\n$/);
  } finally {
    work.cleanup();
  }
});
