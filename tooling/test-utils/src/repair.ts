import { copyFile, sha256File, tempDir } from './files.js';
import { icCli } from './ic.js';
import { run } from './qemu.js';

export interface RepairSide {
  /** Exit status of `check -r` (null when killed). */
  code: number | null;
  /** The --output=json report, when the run printed one. */
  json: Record<string, unknown> | undefined;
  stderr: string;
  /** sha256 of the image after the run. */
  sha: string;
  /** Exit status of a plain `qemu-img check` of the image afterwards. */
  checkAfter: number;
}

function parsed(stdout: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(stdout) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}

/**
 * `qemu-img check -r MODE` and `ic check -r MODE` each on its own copy of `image` (`image.qemu`, `image.ic`, left
 * in place for further looks), with the JSON reports, the hashes after and a plain qemu-img check of each result.
 */
export function repairBothWays(image: string, format: string, mode: 'leaks' | 'all'): { before: string; qemu: RepairSide; ic: RepairSide } {
  const before = sha256File(image);
  const side = (copy: string, result: { code: number | null; stdout: string; stderr: string }): RepairSide => ({
    code: result.code,
    json: parsed(result.stdout),
    stderr: result.stderr,
    sha: sha256File(copy),
    checkAfter: run('qemu-img', ['check', '-f', format, copy]).code,
  });
  const qemuCopy = `${image}.qemu`;
  const icCopy = `${image}.ic`;
  copyFile(image, qemuCopy);
  copyFile(image, icCopy);
  const qemu = side(qemuCopy, run('qemu-img', ['check', '-r', mode, '-f', format, '--output=json', qemuCopy]));
  const ours = icCli(['check', '-r', mode, '-f', format, '--output=json', icCopy]);
  return { before, qemu, ic: side(icCopy, { code: ours.status, stdout: ours.stdout, stderr: ours.stderr }) };
}

/**
 * A scratch directory of numbered images for repair comparisons: `image(damage)` makes `N.EXT` with `make` (qemu-img
 * create and qemu-io writes), applies `damage` and returns the path; `cleanup()` removes the directory.
 */
export function repairScratch(prefix: string, extension: string, make: (path: string) => void): { path: (name: string) => string; image: (damage?: (path: string) => void) => string; cleanup: () => void } {
  const work = tempDir(prefix);
  let serial = 0;
  return {
    path: work.path,
    cleanup: work.cleanup,
    image: (damage = () => {}) => {
      const path = work.path(`${serial++}.${extension}`);
      make(path);
      damage(path);
      return path;
    },
  };
}
