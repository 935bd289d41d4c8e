// Scale mode of tooling/bench/bench.mjs: ic against qemu-img and against the physical limit on images with
// 2^20..2^28 clusters. See tooling/bench/README.md for what is measured and how.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { readLayout } from './layout.mjs';
import { ensureImage, estimateBuildBytes, imageSpecs, parseSize, sizeName } from './images.mjs';
import { estimateTargetMetadata, measureLimit } from './limit.mjs';
import { allocatedBytes, cacheMode, coldCache, copySparse, freeBytes, measured, rssMethod, timed } from './measure.mjs';
import { checkCell, fmtBytes, fmtMs, mainTable, scalingTable } from './report.mjs';

const GiB = 1024 ** 3;
const MARGIN = 2 * GiB; // free space always left on the file system

export async function main({ root, args }) {
  if (args.includes('--report')) return reprint(args.slice(args.indexOf('--report') + 1).filter((a) => !a.startsWith('--')));
  const has = (name) => args.includes(`--${name}`);
  const option = (name, fallback) => {
    const at = args.indexOf(`--${name}`);
    return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
  };
  const quick = has('quick');
  const dir = option('dir', '/tmp/ic-bench-scale');
  const work = join(dir, 'work');
  mkdirSync(work, { recursive: true });
  const sizes = (quick ? '64G' : option('sizes', '64G,256G,1T')).split(',').map(parseSize);
  const sets = (quick ? 'main' : option('sets', 'main,guest,data,raw,scaling')).split(',');
  const guestData = parseSize(option('guest-data', '4G'));
  const keepImages = has('keep-images');
  const only = option('only', quick ? 'qcow2-64k-64G' : '').split(',').filter(Boolean);
  const scenarioFilter = quick ? new Set(['qcow2-to-qed', 'qcow2-to-vmdk', 'map', 'check', 'info']) : null;
  const runs = Number(option('runs', '1'));
  const timeoutSec = Number(option('timeout', '900'));
  const compare = !has('no-compare');
  // qemu-img compare reads every allocated cluster of both images, holes included (~4 GB/s here): 1 TiB of
  // preallocated clusters is ~15 min per compare. Bigger images are not compared unless asked.
  const compareMax = parseSize(option('compare-max', '1T'));
  const compareTimeoutSec = Number(option('compare-timeout', '2400'));
  const withQemu = !has('no-qemu');
  const jsonPath = option('json', '');
  const icBin = join(root, 'apps/cli/bin/ic.js');
  const log = (line) => console.log(line);

  const picked = (spec, scenario) =>
    !only.length || only.some((token) => token === spec.name || token === scenario || token === `${spec.name}:${scenario}` || token === spec.set);
  const specs = imageSpecs({ sizes, guestData })
    .filter((spec) => sets.includes(spec.set) || (spec.scaling && sets.includes('scaling')))
    .map((spec) => ({ ...spec, scenarios: spec.scenarios.filter((s) => (!scenarioFilter || scenarioFilter.has(s)) && picked(spec, s)) }))
    .filter((spec) => spec.scenarios.length);

  const formats = JSON.parse(spawnSync('node', [icBin, 'formats', '--output=json'], { encoding: 'utf8' }).stdout).drivers;
  const canFrom = new Set(formats.filter((f) => f.capabilities?.inPlaceSource).map((f) => f.name));
  const canTo = new Set(formats.filter((f) => f.capabilities?.inPlaceTarget).map((f) => f.name));

  // the environment, so a result can be read later
  const git = (...a) => spawnSync('git', ['-C', root, ...a], { encoding: 'utf8' }).stdout.trim();
  const env = {
    date: new Date().toISOString(),
    commit: git('rev-parse', 'HEAD'),
    enginesDirty: git('status', '--porcelain', '--', 'packages', 'apps') !== '',
    node: process.version,
    qemuImg: spawnSync('qemu-img', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0],
    ic: spawnSync('node', [icBin, '--version'], { encoding: 'utf8' }).stdout.split('\n')[0],
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    memGiB: +(totalmem() / GiB).toFixed(1),
    fileSystem: spawnSync('df', ['--output=fstype', dir], { encoding: 'utf8' }).stdout.split('\n')[1]?.trim(),
    dir,
    timeoutSec,
    compare: compare ? { maxVirtualSize: compareMax, timeoutSec: compareTimeoutSec } : false,
    runs,
    rss: rssMethod,
  };
  log(`ic scale benchmark — ${env.date}, ${env.ic} at ${env.commit.slice(0, 10)}${env.enginesDirty ? ' (packages/apps modified)' : ''}, ${env.qemuImg}, Node ${env.node}`);
  log(`${env.cpus} x ${env.cpuModel}, ${env.memGiB} GiB RAM, images in ${dir} (${env.fileSystem}, ${fmtBytes(freeBytes(dir))} free), timeout ${timeoutSec} s per command, ${runs} run(s)`);

  // process start-up, the floor under every ic command
  const startup = async (argv, n) => {
    const times = [];
    for (let i = 0; i < n; i++) times.push((await measured(argv[0], argv.slice(1), { out: join(work, 'startup.out'), err: join(work, 'startup.err'), timeoutSec: 60 })).ms);
    return times.sort((a, b) => a - b)[Math.floor(n / 2)];
  };
  env.nodeStartupMs = await startup(['node', '-e', '0'], 7);
  env.icVersionMs = await startup(['node', icBin, '--version'], 5);
  env.qemuImgVersionMs = await startup(['qemu-img', '--version'], 5);
  env.disk = [diskBandwidth(work)];
  log(`disk (dd, 1 GiB, O_DIRECT): write ${env.disk[0].writeMBps} MB/s, read ${env.disk[0].readMBps} MB/s`);
  log(`start-up: node -e 0 ${fmtMs(env.nodeStartupMs)}, ic --version ${fmtMs(env.icVersionMs)}, qemu-img --version ${fmtMs(env.qemuImgVersionMs)} (medians)`);

  const images = [];
  const rows = [];
  const save = () => {
    const json = { env: { ...env, cache: cacheMode() }, images, rows };
    writeFileSync(join(dir, 'last-run.json'), `${JSON.stringify(json, null, 2)}\n`);
    if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(json, null, 2)}\n`);
  };

  for (const spec of specs) {
    log(`\n== ${spec.name}: ${spec.scenarios.join(', ')}`);
    let image;
    try {
      if (!existsSync(join(dir, `${spec.name}.${spec.format}`)) && freeBytes(dir) < estimateBuildBytes(spec) + MARGIN) throw new Error(`not enough free space to build (needs ~${fmtBytes(estimateBuildBytes(spec))})`);
      image = ensureImage(spec, dir, { rebuild: has('rebuild'), log });
    } catch (error) {
      log(`  build failed: ${error.message}`);
      images.push({ name: spec.name, buildError: error.message });
      for (const scenario of spec.scenarios) rows.push({ image: spec.name, scenario, error: `image not built: ${error.message}`, scaling: spec.scaling });
      continue;
    }
    images.push({ ...image, path: image.path });
    log(`  ${image.cached ? 'cached' : 'built'}: ${image.clusters} ${image.format === 'raw' ? 'extents' : 'clusters'} allocated, ${fmtBytes(image.dataBytes)} data, ${fmtBytes(image.metadataBytes)} metadata, ${fmtBytes(image.allocatedBytes)} on disk for ${fmtBytes(image.virtualSize)} virtual, built in ${fmtMs(image.buildMs)}${image.sourceCheck ? `, qemu-img check ${checkCell({ ...image.sourceCheck, references: image.references })}` : ''}`);
    if (has('build-only')) continue;
    const layout = readLayout(image.path);
    for (const scenario of spec.scenarios) {
      const [from, , to] = scenario.split('-');
      const base = { image: spec.name, scenario, from, to: to ?? null, kind: to ? 'convert' : 'read', clusters: image.clusters, clusterSize: image.clusterSize, virtualSize: image.virtualSize, sourceMetadataBytes: image.metadataBytes, scaling: !!spec.scaling };
      let row;
      // the machine may be shared (other sessions' test runs): keep the load next to every row
      base.loadBefore = loadavg().map((x) => +x.toFixed(2));
      try {
        if (to && (!canFrom.has(from) || !canTo.has(to))) row = { ...base, error: `ic has no in-place ${from} -> ${to}` };
        else row = to ? await convertRow(base, image, layout) : await readRow(base, image, layout);
      } catch (error) {
        row = { ...base, error: `bench error: ${error.message}` };
      }
      row.loadAfter = loadavg().map((x) => +x.toFixed(2));
      rows.push(row);
      log(`  ${scenario}: ic ${row.error ? `ERROR ${row.error}` : row.ic.ok ? fmtMs(row.ic.ms) : `FAIL (${row.ic.timedOut ? 'timeout' : row.ic.status}) ${fmtMs(row.ic.ms)}: ${row.ic.stderrFirst}`}` +
        (row.limit ? `, limit ${fmtMs(row.limit.ms)}` : '') + (row.qemu?.ms != null ? `, qemu-img ${fmtMs(row.qemu.ms)}` : row.qemu?.skipped ? `, qemu-img skipped` : '') +
        (row.ic?.maxRssKiB ? `, RSS ${(row.ic.maxRssKiB / 1024).toFixed(0)} MiB` : '') + (row.check ? `, check ${checkCell(row.check)}` : '') + (row.compare ? `, compare ${row.compare.skipped ? 'skipped' : row.compare.timedOut ? `timed out after ${fmtMs(row.compare.ms)}` : row.compare.status === 0 ? `identical (${fmtMs(row.compare.ms)})` : `status ${row.compare.status}`}` : '') + `, load ${row.loadBefore[0]}->${row.loadAfter[0]}`);
      save();
    }
    // the guest images hold real data (GiBs each): not cached, so that the run stays within its disk budget
    if (spec.set === 'guest' && !keepImages) {
      rmSync(image.path, { force: true });
      rmSync(`${image.path}.meta.json`, { force: true });
    }
  }
  env.disk.push(diskBandwidth(work));
  log(`disk at the end: write ${env.disk[1].writeMBps} MB/s, read ${env.disk[1].readMBps} MB/s`);

  async function convertRow(base, image, layout) {
    const { from, to } = base;
    const master = image.path;
    const icRuns = [];
    let check;
    let cmp;
    let afterFailure;
    for (let i = 0; i < runs; i++) {
      const copy = join(work, `${base.image}.work.${from}`);
      if (freeBytes(dir) < allocatedBytes(master) + MARGIN) return { ...base, error: `not enough free space for a working copy (${fmtBytes(allocatedBytes(master))})` };
      const copied = copySparse(master, copy);
      if (copied.status !== 0) return { ...base, error: `cp failed: ${copied.stderrFirst}` };
      coldCache(copy);
      const out = join(work, 'ic.out');
      const err = join(work, 'ic.err');
      const r = await measured('node', [icBin, 'convert-inplace', '--output=json', '-f', from, copy, to], { out, err, timeoutSec });
      let report = null;
      try {
        report = JSON.parse(readFileSync(out, 'utf8'));
      } catch {}
      r.ok = r.status === 0 && !!report;
      r.report = report;
      icRuns.push(r);
      if (r.ok) {
        const c = timed('qemu-img', ['check', '-f', to, '--output=json', copy], { timeoutSec, pin: true });
        let json = {};
        try {
          json = JSON.parse(c.stdout);
        } catch {}
        check = { status: c.status, ms: c.ms, leaks: json.leaks ?? 0, corruptions: json.corruptions ?? 0, stderrFirst: c.stderrFirst };
        if (to === 'qed') check.references = readLayout(copy).references;
        cmp = !compare ? { skipped: true, reason: '--no-compare' }
          : image.recipe !== 'guest-data' && image.virtualSize > compareMax ? { skipped: true, reason: `virtual size above --compare-max ${sizeName(compareMax)} (a guest image is always compared: its clusters hold real data)` }
          : timed('qemu-img', ['compare', '-f', to, '-F', from, copy, master], { timeoutSec: compareTimeoutSec, pin: true });
      } else {
        // A refused or failed conversion should leave the file as it was. Checked at O(metadata): same size,
        // the source's metadata ranges byte-identical, same qemu-img map, and qemu-img check of the source format.
        const c = timed('qemu-img', ['check', '-f', from, '--output=json', copy], { timeoutSec, pin: true });
        const mapOf = (path) => timed('qemu-img', ['map', '-f', from, '--output=json', path], { timeoutSec, pin: true }).stdout;
        afterFailure = {
          check: { status: c.status, stderrFirst: c.stderrFirst },
          sizeUnchanged: statSync(copy).size === statSync(master).size,
          metadataUnchanged: sameRanges(copy, master, layout.ranges),
          mapUnchanged: mapOf(copy) === mapOf(master),
        };
      }
      rmSync(copy, { force: true });
      if (!r.ok) break; // one failure is the result; do not repeat a 15-minute timeout
    }
    const ic = summarize(icRuns);

    let qemu = { skipped: 'disabled (--no-qemu)' };
    if (withQemu) {
      // it writes every data byte, rounded up to its clusters (64 KiB by default)
      const needs = estimateCopyBytes(image);
      if (freeBytes(dir) < needs + MARGIN) qemu = { skipped: `its copy would need ~${fmtBytes(needs)}, ${fmtBytes(freeBytes(dir) - MARGIN)} free` };
      else {
        const times = [];
        for (let i = 0; i < runs; i++) {
          const output = join(work, `${base.image}.qemu.${to}`);
          rmSync(output, { force: true });
          coldCache(master);
          const r = await measured('qemu-img', ['convert', '-f', from, '-O', to, master, output], { out: join(work, 'qemu.out'), err: join(work, 'qemu.err'), timeoutSec });
          const synced = r.status === 0 ? timed('sync', ['-d', output]) : { ms: 0 };
          times.push({ ...r, convertMs: r.ms, syncMs: synced.ms, ms: r.ms + synced.ms, written: existsSync(output) ? allocatedBytes(output) : null });
          rmSync(output, { force: true });
          if (r.status !== 0) break;
        }
        qemu = summarize(times);
      }
    }

    const report = ic.report;
    const estimated = !report;
    const writeBytes = report ? report.metadataBytes + report.headerBytes : estimateTargetMetadata(to, image);
    const chunk = report && report.io.writes ? Math.min(64 << 20, Math.max(4096, Math.round(report.io.bytesWritten / report.io.writes))) : image.clusterSize || 65536;
    const limit = { ...measureLimit({ source: master, ranges: layout.ranges, writeBytes, chunk, flushes: report ? report.io.flushes : 4, scratch: join(work, 'limit.scratch') }), estimated };
    return { ...base, ic, icRuns, check, compare: cmp, afterFailure, qemu, limit };
  }

  async function readRow(base, image, layout) {
    const fmt = image.format;
    const command = base.scenario;
    const icOut = join(work, `ic.${command}.out`);
    const qemuOut = join(work, `qemu.${command}.out`);
    const icRuns = [];
    const qemuRuns = [];
    for (let i = 0; i < runs; i++) {
      coldCache(image.path);
      const r = await measured('node', [icBin, command, '-f', fmt, '--output=json', image.path], { out: icOut, err: join(work, 'ic.err'), timeoutSec });
      r.ok = r.status === 0 || (command === 'check' && [2, 3].includes(r.status));
      icRuns.push(r);
      if (withQemu) {
        coldCache(image.path);
        qemuRuns.push(await measured('qemu-img', [command, '-f', fmt, '--output=json', image.path], { out: qemuOut, err: join(work, 'qemu.err'), timeoutSec }));
      }
    }
    const ic = summarize(icRuns);
    const qemu = withQemu ? summarize(qemuRuns) : { skipped: 'disabled (--no-qemu)' };
    const sameOutput = withQemu && ic.ok && qemu.status != null ? hashFile(icOut) === hashFile(qemuOut) : null;
    const firstDifference = sameOutput === false ? differingLine(icOut, qemuOut) : undefined;
    const outputBytes = existsSync(icOut) ? statSync(icOut).size : null;
    rmSync(icOut, { force: true });
    rmSync(qemuOut, { force: true });
    // map and check must read every table; info only the header
    const ranges = command === 'info' ? [[0, Math.min(65536, image.fileSize)]] : layout.ranges;
    const limit = { ...measureLimit({ source: image.path, ranges, writeBytes: 0, chunk: 65536, flushes: 0, scratch: join(work, 'limit.scratch') }), estimated: false };
    return { ...base, ic, icRuns, qemu, qemuRuns, sameOutput, firstDifference, outputBytes, limit };
  }

  save();
  tables(rows, { ...env, cache: cacheMode() }, log);
  log(`\nresults: ${join(dir, 'last-run.json')}${jsonPath ? ` and ${jsonPath}` : ''}`);
}

function tables(rows, env, log = console.log) {
  log(`\n=== ic vs qemu-img vs the physical limit (${env.cache}; limit = read the source's metadata + write ic's metadata bytes with ic's flush count, plain Node fs; start-up node -e 0 = ${fmtMs(env.nodeStartupMs)})`);
  const notes = mainTable(rows, log);
  if (rows.some((row) => checkCell(row.check) === 'clean†')) notes.push('† qemu-img check exit 3 with exactly floor(file clusters / 65535) leaks: qemu 7.2 qed_bytes_to_clusters() divides by cluster_size - 1; the bench counted every cluster of the file referenced exactly once');
  for (const line of notes) log(line);
  log('\n=== scaling: qcow2 preallocated (every cluster allocated), clusters vs ic time and peak RSS');
  scalingTable(rows, log);
}

/** --report FILE...: the tables again from saved JSON (several runs merged in order). */
function reprint(files) {
  const loaded = files.map((file) => JSON.parse(readFileSync(file, 'utf8')));
  for (const { env } of loaded) console.log(`${env.date}: ${env.ic} at ${env.commit?.slice(0, 10)}${env.enginesDirty ? ' (modified)' : ''}, ${env.qemuImg}, node -e 0 ${fmtMs(env.nodeStartupMs)}`);
  tables(loaded.flatMap((run) => run.rows), loaded[0].env);
}

/** Median time, worst RSS; the run list is kept next to it in the row. */
function summarize(list) {
  if (!list.length) return {};
  const sorted = [...list].sort((a, b) => a.ms - b.ms);
  const mid = sorted[Math.floor(sorted.length / 2)];
  const failed = list.find((r) => r.ok === false || (r.ok === undefined && r.status !== 0));
  const pick = failed ?? mid;
  return { ...pick, ms: failed ? failed.ms : mid.ms, maxRssKiB: Math.max(...list.map((r) => r.maxRssKiB || 0)), runs: list.length };
}

/** Whether two files hold the same bytes in the given ranges. */
function sameRanges(a, b, ranges) {
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  const ba = Buffer.alloc(8 << 20);
  const bb = Buffer.alloc(8 << 20);
  try {
    for (const [offset, length] of ranges) {
      for (let at = 0; at < length; at += ba.length) {
        const n = Math.min(ba.length, length - at);
        const na = readSync(fa, ba, 0, n, offset + at);
        const nb = readSync(fb, bb, 0, n, offset + at);
        if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      }
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** The first line where ic's output and qemu-img's differ (cmp finds it; each side cut to 300 characters). */
function differingLine(a, b) {
  const found = /line (\d+)/.exec(spawnSync('cmp', [a, b], { encoding: 'utf8' }).stdout);
  if (!found) return 'one output is a prefix of the other';
  const line = (path) => spawnSync('sed', ['-n', `${found[1]}{p;q}`, path], { encoding: 'utf8' }).stdout.trim().slice(0, 300);
  return `line ${found[1]}: ic ${line(a)} / qemu-img ${line(b)}`;
}

function hashFile(path) {
  if (!existsSync(path)) return null;
  const hash = createHash('sha256');
  const fd = openSync(path, 'r');
  const buffer = Buffer.alloc(8 << 20);
  try {
    for (let n; (n = readSync(fd, buffer, 0, buffer.length, null)) > 0; ) hash.update(buffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** How much qemu-img convert's output takes on disk: every data extent rounded up to 64 KiB clusters. */
function estimateCopyBytes(image) {
  return image.recipe === 'raw-extents' ? image.clusters * 64 * 1024 : image.dataBytes * 1.2 + image.metadataBytes;
}

/**
 * Sequential bandwidth of the disk under `dir`, measured with dd: 1 GiB written in 8 MiB blocks with O_DIRECT
 * and a final fdatasync, then read back with O_DIRECT. The copy that qemu-img convert does is bounded by it.
 */
function diskBandwidth(dir) {
  const file = join(dir, 'dd.scratch');
  const rate = (result) => {
    const match = /copied, ([\d.]+) s/.exec(result.stderr || '');
    return match ? Math.round(1024 ** 3 / Number(match[1]) / 1e6) : null;
  };
  const write = spawnSync('dd', ['if=/dev/zero', `of=${file}`, 'bs=8M', 'count=128', 'oflag=direct', 'conv=fdatasync'], { encoding: 'utf8' });
  const read = spawnSync('dd', [`if=${file}`, 'of=/dev/null', 'bs=8M', 'iflag=direct'], { encoding: 'utf8' });
  rmSync(file, { force: true });
  return { writeMBps: rate(write), readMBps: rate(read), at: new Date().toISOString() };
}

export { sizeName };
