import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Debian's Chromium (apt-get install chromium). Never a browser downloaded by a test tool. */
export const CHROMIUM = process.env.IC_CHROMIUM ?? '/usr/bin/chromium';

/**
 * Flags for a headless Chromium on a machine with a closed network: no GPU, no sandbox (root), and none of the
 * background connections (updates, sync, component downloads) that would otherwise be refused many at a time.
 */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export type ChromiumState = { path: string } | { missing: string };

/**
 * Chromium, installed through apt-get when missing (as the test setup installs qemu-utils): as root directly,
 * otherwise through sudo. Returns why it is still missing when the install did not work.
 */
export function ensureChromium(log: (line: string) => void = () => {}): ChromiumState {
  if (existsSync(CHROMIUM)) return { path: CHROMIUM };
  log(`browser test: ${CHROMIUM} not found; installing Debian's chromium with apt-get`);
  const root = process.getuid?.() === 0;
  const apt = (args: string[]) =>
    spawnSync(root ? 'apt-get' : 'sudo', root ? args : ['-n', 'apt-get', ...args], {
      encoding: 'utf8',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      timeout: 15 * 60_000,
    });
  const update = apt(['update', '-qq']);
  const install = update.status === 0 ? apt(['install', '-y', '-qq', 'chromium']) : update;
  if (existsSync(CHROMIUM)) return { path: CHROMIUM };
  const why = install.error?.message ?? (install.stderr || install.stdout || `exit ${install.status}`).trim().split('\n').slice(-3).join(' / ');
  return { missing: `${CHROMIUM} not found and apt-get install chromium failed (${why}); install it: apt-get install chromium` };
}
