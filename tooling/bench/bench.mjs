#!/usr/bin/env node
// ic's benchmarks. Two modes:
//
//   node tooling/bench/bench.mjs [--data-gib N] [--runs N] [--dir DIR] [--only NAME]
//       ic convert-inplace vs qemu-img convert on 4 GiB images holding N GiB of data (small.mjs)
//
//   node tooling/bench/bench.mjs --scale [--sizes 64G,256G,1T] [--sets main,data,raw,scaling] [--only NAME,...]
//                                [--dir DIR] [--quick] [--runs N] [--timeout SECS] [--no-compare] [--no-qemu]
//                                [--rebuild] [--build-only] [--json FILE]
//       ic vs qemu-img vs the physical limit on images with up to 2^28 clusters (scale/), see README.md
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
if (args.includes('--scale')) {
  const { main } = await import('./scale/main.mjs');
  await main({ root: resolve(fileURLToPath(new URL('../..', import.meta.url))), args });
} else {
  await import('./small.mjs');
}
