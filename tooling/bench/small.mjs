#!/usr/bin/env node
// Runs `ic convert-inplace` and `qemu-img convert` side by side on copies of the same images and prints
// time, bytes written and extra disk space, with ratios. Needs a built ic (pnpm turbo run build) and
// qemu-img/qemu-io on PATH.
//
//   node tooling/bench/bench.mjs [--data-gib N] [--runs N] [--dir DIR] [--only NAME]
//
// How each number is measured:
//   time          wall clock of the whole command (process start to exit), median of --runs runs, starting
//                 with nothing dirty in the page cache (sync first) and ending with the result durable: ic
//                 flushes itself; qemu-img convert's default cache mode does not, so its time includes
//                 `sync -d` of the new file
//   bytes written ic: its own count of every byte it wrote (CountingIO, in the JSON report);
//                 qemu-img: the allocated size of the file it wrote (it must write at least every data byte)
//   extra space   ic: growth of the image's allocated size; qemu-img: allocated size of the new file (the
//                 source must stay until the copy is done)
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { icBin, option } from './common.mjs';

const dataGiB = Number(option('data-gib', '1'));
const runs = Number(option('runs', '3'));
const only = option('only', '');
const dir = option('dir', '') || mkdtempSync(join(tmpdir(), 'ic-bench-'));
mkdirSync(dir, { recursive: true });

function run(command, commandArgs) {
  const started = process.hrtime.bigint();
  const result = spawnSync(command, commandArgs, { encoding: 'utf8', maxBuffer: 64 << 20 });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (result.status !== 0) throw new Error(`${command} ${commandArgs.join(' ')} failed: ${result.stderr || result.stdout}`);
  return { ms, stdout: result.stdout };
}
const allocated = (path) => statSync(path).blocks * 512;
const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const MiB = 1024 * 1024;

/** Writes `dataGiB` of pattern data in 64 MiB runs spread over a disk of 4x that size. */
function fill(path, format) {
  const run64 = 64 * MiB;
  const count = Math.round((dataGiB * 1024 * MiB) / run64);
  const commands = [];
  for (let i = 0; i < count; i++) commands.push('-c', `write -P ${(i % 250) + 1} ${i * 4 * run64} ${run64}`);
  run('qemu-io', ['-f', format, ...commands, path]);
}

const scenarios = [
  { name: 'qcow2-to-qed', from: 'qcow2', to: 'qed' },
  { name: 'qed-to-qcow2', from: 'qed', to: 'qcow2' },
  { name: 'qcow2-to-vmdk', from: 'qcow2', to: 'vmdk' },
  { name: 'vmdk-to-qcow2', from: 'vmdk', to: 'qcow2' },
  { name: 'raw-to-qcow2', from: 'raw', to: 'qcow2' },
  { name: 'raw-to-qed', from: 'raw', to: 'qed' },
  { name: 'raw-to-vmdk', from: 'raw', to: 'vmdk' },
].filter((s) => !only || s.name === only);

const icFormats = JSON.parse(run("node", [icBin, "formats", "--output=json"]).stdout).drivers;
const targetsAvailable = new Set(icFormats.filter((f) => f.capabilities?.inPlaceTarget).map((f) => f.name));
const sourcesAvailable = new Set(icFormats.filter((f) => f.capabilities?.inPlaceSource).map((f) => f.name));

const rows = [];
for (const scenario of scenarios) {
  if (!targetsAvailable.has(scenario.to) || !sourcesAvailable.has(scenario.from)) {
    console.log(`skip ${scenario.name}: ic has no in-place ${scenario.from} -> ${scenario.to} here`);
    continue;
  }
  const master = join(dir, `${scenario.name}.master.${scenario.from}`);
  run('qemu-img', ['create', '-q', '-f', scenario.from, master, `${dataGiB * 4}G`]);
  fill(master, scenario.from);
  const dataBytes = Math.round(dataGiB * 1024 * MiB);
  const ic = [];
  const qemu = [];
  for (let i = 0; i < runs; i++) {
    const copy = join(dir, `${scenario.name}.${i}.${scenario.from}`);
    copyFileSync(master, copy);
    run('sync', []);
    const before = allocated(copy);
    const result = run('node', [icBin, 'convert-inplace', '-f', scenario.from, '--output=json', copy, scenario.to]);
    const report = JSON.parse(result.stdout);
    ic.push({ ms: result.ms, written: report.io.bytesWritten, extra: allocated(copy) - before, engineMs: report.durationMs });
    const check = spawnSync('qemu-img', ['check', '-f', scenario.to, copy], { encoding: 'utf8' });
    const compare = spawnSync('qemu-img', ['compare', '-f', scenario.to, '-F', scenario.from, copy, master], { encoding: 'utf8' });
    if (![0, 3].includes(check.status) || compare.status !== 0) throw new Error(`${scenario.name}: ic result failed qemu-img check (${check.status}) or compare (${compare.status})`);
    rmSync(copy);

    const output = join(dir, `${scenario.name}.${i}.qemu.${scenario.to}`);
    run('sync', []);
    const copied = run('qemu-img', ['convert', '-f', scenario.from, '-O', scenario.to, master, output]);
    const synced = run('sync', ['-d', output]);
    qemu.push({ ms: copied.ms + synced.ms, written: allocated(output), extra: allocated(output) });
    rmSync(output);
  }
  rmSync(master);
  const pick = (list, key) => median(list.map((r) => r[key]));
  rows.push({
    scenario: scenario.name,
    data: dataBytes,
    icMs: pick(ic, 'ms'),
    icEngineMs: pick(ic, 'engineMs'),
    qemuMs: pick(qemu, 'ms'),
    icWritten: pick(ic, 'written'),
    qemuWritten: pick(qemu, 'written'),
    icExtra: pick(ic, 'extra'),
    qemuExtra: pick(qemu, 'extra'),
  });
}

const fmt = (bytes) => (bytes >= MiB ? `${(bytes / MiB).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);
const ratio = (a, b) => (b > 0 ? `${(a / b).toFixed(b < 1 ? 0 : 1)}x` : 'n/a');
console.log(`\nic convert-inplace vs qemu-img convert: ${dataGiB} GiB of data per image, median of ${runs} runs, warm page cache`);
console.log('scenario        | time ic (engine) | time qemu-img | qemu/ic time | written ic | written qemu-img | qemu/ic written | extra space ic | extra space qemu-img');
for (const r of rows) {
  console.log(
    [
      r.scenario.padEnd(15),
      `${r.icMs.toFixed(0)} ms (${r.icEngineMs} ms)`.padStart(16),
      `${r.qemuMs.toFixed(0)} ms`.padStart(13),
      ratio(r.qemuMs, r.icMs).padStart(12),
      fmt(r.icWritten).padStart(10),
      fmt(r.qemuWritten).padStart(16),
      ratio(r.qemuWritten, r.icWritten).padStart(15),
      fmt(Math.max(0, r.icExtra)).padStart(14),
      fmt(r.qemuExtra).padStart(20),
    ].join(' | '),
  );
}
if (!option('dir', '')) rmSync(dir, { recursive: true, force: true });
