#!/usr/bin/env node
// Disk space and time of `ic convert-inplace IMAGE TARGET` (default raw): a qemu-made image (FORMAT, VIRTUAL size,
// DATA clusters of 64 KiB written by qemu-io in random guest order) is converted while ic is stopped after every write
// (IC_TEST_STOP_AFTER_WRITES=1,...,20000: SIGSTOP, the file's du and length sampled, SIGCONT): the peak disk usage and
// apparent length, against the image before and the result after, and the bytes the conversion says it relocated
// and wrote; then an unstopped run timed against cp + sync of the same image on the same file system. qemu-img
// compare checks both results.
//
//   node tooling/bench/space.mjs [--format qed|vmdk|vdi|vpc|...] [--to raw|qcow2|...] [--size 512M] [--clusters 3200] [--dir DIR]
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { icBin as ic, option } from './common.mjs';

const format = option('format', 'qed');
const to = option('to', 'raw');
const size = option('size', '512M');
const clusters = Number(option('clusters', '3200'));
const dir = mkdtempSync(join(option('dir', tmpdir()), 'ic-space-'));
const C = 65536;

const pristine = join(dir, `pristine.${format}`);
execFileSync('qemu-img', ['create', '-q', '-f', format, pristine, size]);
const total = Number(JSON.parse(execFileSync('qemu-img', ['info', '--output=json', pristine], { encoding: 'utf8' }))['virtual-size']) / C;
// A deterministic shuffle of every cluster, the first `clusters` written.
const order = Array.from({ length: total }, (_, i) => i);
let state = 7;
for (let i = order.length - 1; i > 0; i--) {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  const j = state % (i + 1);
  [order[i], order[j]] = [order[j], order[i]];
}
const writes = order.slice(0, Math.min(clusters, total));
for (let i = 0; i < writes.length; i += 400) {
  const commands = writes.slice(i, i + 400).flatMap((c) => ['-c', `write -P ${(c % 250) + 1} ${c * C} ${C}`]);
  execFileSync('qemu-io', ['-f', format, ...commands, pristine], { stdio: 'ignore' });
}
const disk = (file) => statSync(file).blocks * 512;
const file = join(dir, 'image');

function stoppedRun() {
  copyFileSync(pristine, file);
  const before = { disk: disk(file), size: statSync(file).size };
  const list = Array.from({ length: 20_000 }, (_, i) => i + 1).join(',');
  const child = spawn(process.execPath, [ic, 'convert-inplace', '--output=json', file, to], { env: { ...process.env, IC_TEST_STOP_AFTER_WRITES: list }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const peak = { disk: before.disk, size: before.size, samples: 0 };
  const timer = setInterval(() => {
    let status;
    try {
      status = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ')[0];
    } catch {
      return;
    }
    if (status !== 'T') return;
    peak.disk = Math.max(peak.disk, disk(file));
    peak.size = Math.max(peak.size, statSync(file).size);
    peak.samples++;
    process.kill(child.pid, 'SIGCONT');
  }, 2);
  return new Promise((resolve) =>
    child.on('exit', (code) => {
      clearInterval(timer);
      resolve({ code, before, peak, after: { disk: disk(file), size: statSync(file).size }, out });
    }),
  );
}

const compare = () => execFileSync('qemu-img', ['compare', '-q', '-f', format, pristine, '-F', to, file], { stdio: 'inherit' });
const stopped = await stoppedRun();
compare();
copyFileSync(pristine, file);
execFileSync('sync');
let started = performance.now();
execFileSync(process.execPath, [ic, 'convert-inplace', file, to], { stdio: 'ignore' });
const icSeconds = (performance.now() - started) / 1000;
compare();
const copy = join(dir, 'copy');
execFileSync('sync');
started = performance.now();
execFileSync('cp', [pristine, copy]);
execFileSync('sync');
const cpSeconds = (performance.now() - started) / 1000;
const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
const report = JSON.parse(stopped.out);
console.log(
  JSON.stringify(
    {
      format,
      to,
      // The report's own counts: a conversion between formats says what it relocated and wrote; one to raw what it moved.
      bytesRelocated: mib(report.bytesRelocated ?? report.bytesMoved ?? 0),
      ...(report.io ? { bytesWritten: mib(report.io.bytesWritten), metadataBytes: mib(report.metadataBytes) } : {}),
      virtualSize: size,
      dataClusters: writes.length,
      writesSampled: stopped.peak.samples,
      diskBefore: mib(stopped.before.disk),
      peakDisk: mib(stopped.peak.disk),
      peakExtraDisk: mib(stopped.peak.disk - stopped.before.disk),
      diskAfter: mib(stopped.after.disk),
      peakLength: mib(stopped.peak.size),
      lengthAfter: mib(stopped.after.size),
      icSeconds: Number(icSeconds.toFixed(2)),
      cpSyncSeconds: Number(cpSeconds.toFixed(2)),
    },
    null,
    2,
  ),
);
rmSync(dir, { recursive: true, force: true });
