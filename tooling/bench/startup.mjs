#!/usr/bin/env node
// Start-up cost of ic's read commands against Node's own start-up and qemu-img's, on small images that
// qemu-img makes (one per format qemu-img and ic both know). Needs a built ic and qemu-img/qemu-io on PATH.
//
//   node tooling/bench/startup.mjs [--runs N] [--formats qcow2,qed,...] [--json FILE]
//
// For every command: the median over --runs runs (default 21, after one warm-up run) of
//   wall  spawn to exit (spawnSync around GNU time), milliseconds
//   cpu   user + system CPU time of the command (GNU time), milliseconds: less sensitive to other load
//   rss   peak resident set, MiB
// and the difference of each ic command's medians to `node -e 0`'s (the floor under every ic command).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { icBin, option } from './common.mjs';

const runs = Number(option('runs', '21'));
const formats = option('formats', 'qcow2,qed,vmdk,vdi,vpc,vhdx,parallels').split(',');
const jsonPath = option('json', undefined);

function run(command, argv) {
  const result = spawnSync(command, argv, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${argv.join(' ')}: ${result.stderr || result.stdout}`);
  return result.stdout;
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];

/** Medians of wall, CPU and peak RSS of `argv` over `runs` runs; the command must exit 0. */
function measure(argv) {
  const timing = join(work, 'time.out');
  const wall = [];
  const cpu = [];
  const rss = [];
  for (let i = 0; i <= runs; i++) {
    const started = process.hrtime.bigint();
    const result = spawnSync('/usr/bin/time', ['-o', timing, '-f', '%U %S %M', ...argv], { encoding: 'utf8' });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    if (result.status !== 0) throw new Error(`${argv.join(' ')} exited ${result.status}: ${result.stderr.trim()}`);
    if (i === 0) continue; // warm-up: page cache, not start-up
    const [user, system, maxRssKiB] = readFileSync(timing, 'utf8').trim().split('\n').pop().split(' ').map(Number);
    wall.push(ms);
    cpu.push((user + system) * 1000);
    rss.push(maxRssKiB / 1024);
  }
  return { wallMs: median(wall), cpuMs: median(cpu), rssMiB: median(rss) };
}

const work = mkdtempSync(join(tmpdir(), 'ic-startup-'));
try {
  const images = {};
  for (const format of formats) {
    const path = join(work, `image.${format}`);
    run('qemu-img', ['create', '-q', '-f', format, path, '64M']);
    run('qemu-io', ['-f', format, '-c', 'write -P 0x5a 0 1M', '-c', 'write -P 0xa5 32M 64k', path]);
    images[format] = path;
  }
  const load = loadavg()[0];
  const rows = [];
  const row = (name, argv, floor) => {
    const m = measure(argv);
    rows.push({ name, ...m, ...(floor ? { wallOverNodeMs: m.wallMs - floor.wallMs, cpuOverNodeMs: m.cpuMs - floor.cpuMs } : {}) });
    return m;
  };
  const node = row('node -e 0', ['node', '-e', '0']);
  row('ic --version', ['node', icBin, '--version'], node);
  for (const [format, path] of Object.entries(images)) {
    row(`ic info (${format})`, ['node', icBin, 'info', path], node);
    row(`ic info --output=json (${format})`, ['node', icBin, 'info', '--output=json', path], node);
    row(`ic map --output=json (${format})`, ['node', icBin, 'map', '--output=json', path], node);
    row(`qemu-img info (${format})`, ['qemu-img', 'info', path]);
  }
  const cell = (value, width) => (value === undefined ? '—' : value.toFixed(0)).padStart(width);
  console.log(`ic start-up, ${runs} runs each (medians), Node ${process.version}, load average ${load.toFixed(1)} at the start`);
  console.log(`${'command'.padEnd(34)} | wall ms | cpu ms | rss MiB | wall - node | cpu - node`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(34)} | ${cell(r.wallMs, 7)} | ${cell(r.cpuMs, 6)} | ${cell(r.rssMiB, 7)} | ${cell(r.wallOverNodeMs, 11)} | ${cell(r.cpuOverNodeMs, 10)}`);
  }
  if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, load, runs, rows }, null, 2)}\n`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
