/** The one test through the real executable: `node apps/cli/bin/ic.js` (built first when dist is missing). */
import { expect, test } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
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
  } finally {
    work.cleanup();
  }
});
