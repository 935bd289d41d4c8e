#!/usr/bin/env node
// Bundles ic for the browser with esbuild (platform 'browser', nothing external) and fails on any import of a
// Node built-in ('node:fs', 'fs', 'crypto', ...) anywhere in the graph, naming the module that imports it.
//   node tooling/browser/src/bundle.mjs      writes tooling/browser/dist/ic-browser.js (+ .map) and prints sizes
// Also checked, not written: the VMDK and raw drivers bundle for the browser too (every first-party driver
// imports only the SDK).
import { builtinModules } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const here = fileURLToPath(new URL('.', import.meta.url));
export const ENTRY = fileURLToPath(new URL('./entry.js', import.meta.url));
export const OUT_DIR = fileURLToPath(new URL('../dist/', import.meta.url));
export const OUT_FILE = `${OUT_DIR}ic-browser.js`;

const builtins = new Set(builtinModules.flatMap((name) => [name, `node:${name}`]));

/** An esbuild plugin that turns every import of a Node built-in into a build error naming its importer. */
export const noNodeBuiltins = {
  name: 'ic-no-node-builtins',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => {
      if (!builtins.has(args.path) && !args.path.startsWith('node:')) return undefined;
      return { errors: [{ text: `${args.importer} imports the Node built-in '${args.path}': the browser build must not use Node modules` }] };
    });
  },
};

/**
 * Bundles `entry` for the browser. Returns esbuild's result (with its metafile); throws on any error, a Node
 * built-in among them. `write: false` keeps the output in memory.
 */
export async function bundle({ entry = ENTRY, outfile = OUT_FILE, write = true, minify = true } = {}) {
  return esbuild.build({
    entryPoints: [entry],
    absWorkingDir: here,
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: ['es2022'],
    minify,
    sourcemap: write,
    metafile: true,
    write,
    outfile,
    logLevel: 'silent',
    plugins: [noNodeBuiltins],
  });
}

/** Raw and gzip sizes of a built file. */
export function sizes(bytes) {
  return { bytes: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length };
}

/** Checks that the other first-party drivers bundle for the browser as well (nothing written). */
export async function checkOtherDrivers() {
  return esbuild.build({
    stdin: { contents: "export { vmdkDriver } from '@ic/vmdk';\nexport { rawDriver } from '@ic/raw';\n", resolveDir: here, sourcefile: 'other-drivers.js' },
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    metafile: true,
    logLevel: 'silent',
    plugins: [noNodeBuiltins],
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    const result = await bundle();
    await checkOtherDrivers();
    const size = sizes(readFileSync(OUT_FILE));
    const inputs = Object.keys(result.metafile.inputs).length;
    console.log(`ic-browser.js: ${size.bytes} bytes minified, ${size.gzip} bytes gzip (${inputs} input modules, no Node built-in)`);
  } catch (error) {
    for (const message of error.errors ?? []) console.error(`bundle: ${message.text}`);
    if (!error.errors) console.error(error);
    process.exit(1);
  }
}
