import { defineConfig } from 'tsup';
import type { Plugin } from 'esbuild';

/**
 * Node modules that cost milliseconds to load and that `ic info` never calls: node:crypto (the engine hashes
 * a file's identity for intent records; the demo hashes content) and node:child_process (commander, for
 * executable subcommands ic has none of; the demo, for qemu-img). In the bundle each import of them becomes a
 * stub that loads the real module on the first call (process.getBuiltinModule, Node >= 20.16).
 */
const LAZY_BUILTINS: Readonly<Record<string, readonly string[]>> = {
  crypto: ['createHash', 'randomBytes', 'randomUUID'],
  child_process: ['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork'],
};

const lazyBuiltins: Plugin = {
  name: 'ic-lazy-builtins',
  setup(build) {
    build.onResolve({ filter: /^(node:)?(crypto|child_process)$/ }, (args) => ({ path: args.path.replace(/^node:/, ''), namespace: 'ic-lazy-builtin' }));
    build.onLoad({ filter: /.*/, namespace: 'ic-lazy-builtin' }, (args) => {
      const names = LAZY_BUILTINS[args.path] ?? [];
      const load = `let real; const load = () => (real ??= process.getBuiltinModule('node:${args.path}'));`;
      const exports = names.map((name) => `export const ${name} = (...args) => load().${name}(...args);`).join('\n');
      return { contents: `${load}\n${exports}\nexport default new Proxy({}, { get: (_, key) => load()[key] });\n`, loader: 'js' };
    });
  },
};

/**
 * The executable is one bundled file: the CLI, commander, @ic/qemu-output and the bundled drivers and engine (@ic/core, its SDK)
 * are inlined, so `ic info` loads one module instead of dozens and skips Node's CommonJS analysis of commander
 * (README: start-up). Kept external: @ic/core/node (FileIO, locks), because it loads the optional native koffi
 * module relative to its own package, which declares it; and koffi itself. (The bundle's copy of the SDK and
 * @ic/core/node's own copy share nothing that matters: IcError is recognised by its brand.)
 */
export default defineConfig({
  entry: ['src/index.ts', 'src/cli.ts'],
  format: ['esm'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'node20',
  splitting: true,
  noExternal: [/^@ic\/(?:core|core\/sdk|qcow2|qed|vmdk|raw|qemu-output)$/, 'commander'],
  external: ['@ic/core/node', 'koffi'],
  esbuildPlugins: [lazyBuiltins],
  // Keep 'node:' in imports so that the lazy-builtins plugin sees them (tsup would strip it and mark them external first).
  removeNodeProtocol: false,
  // commander is CommonJS: its require() calls of Node's modules need a real require inside the ESM bundle.
  banner: { js: "import { createRequire as __icCreateRequire } from 'node:module'; const require = __icCreateRequire(import.meta.url);" },
});
