// What the benchmark scripts share: where the repository and the built ic are, and `--name value` options.
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const icBin = join(root, 'apps/cli/bin/ic.js');

const args = process.argv.slice(2);

/** The value after `--name` on the command line, or `fallback`. */
export function option(name, fallback) {
  const at = args.indexOf(`--${name}`);
  return at >= 0 ? args[at + 1] : fallback;
}
