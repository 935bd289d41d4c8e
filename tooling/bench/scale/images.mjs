// The scale images: what each one is, how qemu-img / qemu-io build it, and the cache that keeps them
// between runs. Every image is a sparse file built by QEMU's own tools (raw files by a pwrite loop), into
// NAME.building and renamed when complete, with NAME.meta.json next to it (recipe, build time, layout).
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, ftruncateSync, openSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { readLayout } from './layout.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const RECIPE_VERSION = 1;

export function parseSize(text) {
  const match = /^(\d+(?:\.\d+)?)([KMGT]?)$/i.exec(text.trim());
  if (!match) throw new Error(`bad size: ${text}`);
  const unit = { '': 1, K: KiB, M: MiB, G: GiB, T: TiB }[match[2].toUpperCase()];
  return Math.round(Number(match[1]) * unit);
}
export function sizeName(bytes) {
  for (const [unit, value] of [['T', TiB], ['G', GiB], ['M', MiB], ['K', KiB]]) if (bytes % value === 0) return `${bytes / value}${unit}`;
  return String(bytes);
}

const PAIRS = { qcow2: ['qed', 'vmdk'], qed: ['qcow2', 'vmdk'], vmdk: ['qcow2', 'qed'], raw: ['qcow2', 'qed', 'vmdk'] };
const pairs = (from) => PAIRS[from].map((to) => `${from}-to-${to}`);
const READS = ['map', 'check', 'info'];

/**
 * Every image the scale mode knows. `sets`: main (the pairs at --sizes), data (4 KiB clusters with real data),
 * raw (sparse raw with 10^5 / 2^20 extents), scaling (qcow2 metadata-only images from 2^20 to 2^28 clusters).
 */
export function imageSpecs({ sizes, guestData = 4 * GiB }) {
  const specs = [];
  // A guest's disk: the same `guestData` bytes (same offsets, same patterns) in each format, so every pair
  // converts the same guest. Clusters are allocated only where the guest wrote, as in a real image.
  for (const size of sizes) {
    const s = sizeName(size);
    for (const format of ['qcow2', 'qed', 'vmdk', 'raw']) {
      specs.push({ name: `${format}-guest-${s}`, set: 'guest', format, size, cluster: format === 'raw' ? undefined : 64 * KiB, recipe: 'guest-data', dataBytes: Math.min(guestData, size / 2), scenarios: pairs(format) });
    }
  }
  for (const size of sizes) {
    const s = sizeName(size);
    specs.push({ name: `qcow2-64k-${s}`, set: 'main', format: 'qcow2', size, cluster: 64 * KiB, recipe: 'qcow2-prealloc-markers', scenarios: [...pairs('qcow2'), ...READS] });
    specs.push({ name: `qed-64k-${s}`, set: 'main', format: 'qed', size, cluster: 64 * KiB, recipe: 'zero-fill-markers', scenarios: [...pairs('qed'), ...READS] });
    specs.push({ name: `vmdk-64k-${s}`, set: 'main', format: 'vmdk', size, cluster: 64 * KiB, recipe: 'zero-fill-markers', scenarios: [...pairs('vmdk'), ...READS] });
  }
  specs.push({ name: 'qcow2-4k-8G-data', set: 'data', format: 'qcow2', size: 8 * GiB, cluster: 4 * KiB, recipe: 'scattered-data', dataBytes: 1.5 * GiB, scenarios: [...pairs('qcow2'), ...READS] });
  specs.push({ name: 'raw-1e5-extents', set: 'raw', format: 'raw', size: 100000 * MiB, extents: 100000, stride: MiB, recipe: 'raw-extents', scenarios: [...pairs('raw'), 'map', 'info'] });
  specs.push({ name: 'raw-2e20-extents-1T', set: 'raw', format: 'raw', size: TiB, extents: 2 ** 20, stride: MiB, recipe: 'raw-extents', scenarios: [...pairs('raw'), 'map', 'info'] });
  const scaling = [
    [4 * KiB, 4 * GiB], [4 * KiB, 16 * GiB], [4 * KiB, 64 * GiB], [4 * KiB, 256 * GiB], [4 * KiB, TiB],
    [64 * KiB, 64 * GiB], [64 * KiB, 256 * GiB], [64 * KiB, TiB], [64 * KiB, 4 * TiB], [64 * KiB, 8 * TiB],
  ];
  for (const [cluster, size] of scaling) {
    const name = `qcow2-${cluster / KiB}k-${sizeName(size)}`;
    const existing = specs.find((spec) => spec.name === name);
    if (existing) existing.scaling = true;
    else specs.push({ name, set: 'scaling', scaling: true, format: 'qcow2', size, cluster, recipe: 'qcow2-prealloc', scenarios: pairs('qcow2') });
  }
  return specs;
}

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: 'utf8', maxBuffer: 256 * MiB, ...options });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ').slice(0, 200)} failed (${result.status ?? result.signal}): ${(result.stderr || result.stdout || '').trim().split('\n')[0]}`);
  return result.stdout;
}

// Building only: QEMU hands every request to a worker thread, and on a small VM the cross-CPU wake-ups cost
// more than the work (allocating a 4 GiB VMDK grain by grain: 6 s on two CPUs, 0.9 s pinned to one CPU).
const taskset = ['/usr/bin/taskset', '/bin/taskset'].find((path) => existsSync(path));
const pinned = (command, args) => (taskset ? [taskset, ['-c', '0', command, ...args]] : [command, args]);

/** Runs qemu-io with commands fed on stdin (no argv limit on their number). */
function qemuIo(openArgs, commands) {
  run(...pinned('qemu-io', openArgs), { input: `${commands.join('\n')}\nquit\n`, stdio: ['pipe', 'ignore', 'pipe'] });
}

/** 64 KiB of pattern at the start of every GiB, so that compare has real data to compare. */
function markerCommands(size) {
  const commands = [];
  for (let i = 0; i * GiB < size; i++) commands.push(`write -q -P ${(i % 250) + 1} ${i * GiB} 64k`);
  return commands;
}

/** A deterministic generator (mulberry32), so the scattered-data image is the same on every machine. */
function random(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * `dataBytes` in runs of 64 KiB..1 MiB (4 KiB multiples), one run at a random place inside each of equal
 * slots spread over the disk, written in shuffled order so that host order differs from guest order.
 */
function scatteredWrites(size, dataBytes) {
  const next = random(20261122);
  const lengths = [];
  for (let total = 0; total < dataBytes; ) {
    const length = Math.min(dataBytes - total, (16 + Math.floor(next() * 241)) * 4 * KiB);
    lengths.push(length);
    total += length;
  }
  const slot = Math.floor(size / lengths.length / (4 * KiB)) * 4 * KiB;
  const writes = lengths.map((length, i) => ({ offset: i * slot + Math.floor((next() * (slot - length)) / (4 * KiB)) * 4 * KiB, length, pattern: (i % 250) + 1 }));
  for (let i = writes.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [writes[i], writes[j]] = [writes[j], writes[i]];
  }
  return writes;
}

/**
 * What a guest has written, as (offset, length, pattern) runs, 4 KiB aligned: a quarter of `dataBytes` dense at
 * the start of the disk (the system: runs of 64 KiB..1 MiB with gaps of 0..256 KiB, over about 1.2x their
 * length), the rest as one run of 64 KiB..1 MiB at a random place in each of equal slots over the whole disk
 * (user data, free-space fragmentation); all written in shuffled order, so host order differs from guest order.
 */
export function guestWrites(size, dataBytes) {
  const next = random(20261202);
  const runLength = (left) => Math.min(left, (16 + Math.floor(next() * 241)) * 4 * KiB);
  const writes = [];
  const dense = Math.floor(dataBytes / 4 / (4 * KiB)) * 4 * KiB;
  let at = 0;
  for (let total = 0; total < dense; ) {
    const length = runLength(dense - total);
    writes.push({ offset: at, length });
    total += length;
    at += length + Math.floor(next() * 65) * 4 * KiB;
  }
  const denseEnd = at;
  const lengths = [];
  for (let total = dense; total < dataBytes; ) {
    const length = runLength(dataBytes - total);
    lengths.push(length);
    total += length;
  }
  const slot = Math.floor((size - denseEnd) / lengths.length / (4 * KiB)) * 4 * KiB;
  lengths.forEach((length, i) => writes.push({ offset: denseEnd + i * slot + Math.floor((next() * (slot - length)) / (4 * KiB)) * 4 * KiB, length }));
  writes.forEach((w, i) => (w.pattern = (i % 250) + 1));
  for (let i = writes.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [writes[i], writes[j]] = [writes[j], writes[i]];
  }
  return { writes, denseEnd, slot };
}

function build(spec, path) {
  const { format, size, cluster } = spec;
  const notes = [];
  if (spec.recipe === 'qcow2-prealloc' || spec.recipe === 'qcow2-prealloc-markers') {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster},preallocation=metadata`, path, String(size)]);
    notes.push('qemu-img create -f qcow2 -o preallocation=metadata: every cluster allocated, data sparse (reads as zeros)');
    if (spec.recipe.endsWith('markers')) {
      qemuIo(['-f', 'qcow2', path], markerCommands(size));
      notes.push('qemu-io: 64 KiB of pattern at the start of every GiB');
    }
  } else if (spec.recipe === 'zero-fill-markers') {
    if (path.includes(',')) throw new Error(`image path must not contain a comma: ${path}`);
    run('qemu-img', ['create', '-q', '-f', format, '-o', format === 'qed' ? `cluster_size=${cluster}` : 'subformat=monolithicSparse', path, String(size)]);
    // Write zeros through the format driver so that it allocates every cluster, with the protocol node set to
    // turn those zero writes into holes (detect-zeroes=unmap, discard=unmap): all clusters allocated, no data
    // written. One coroutine (-m 1), so clusters are allocated in guest order.
    run(...pinned('qemu-img', ['convert', '-m', '1', '-S', '0', '-n', '--image-opts', `driver=null-co,size=${size}`, '--target-image-opts',
      `driver=${format},file.driver=file,file.filename=${path},file.detect-zeroes=unmap,file.discard=unmap`]));
    notes.push(`qemu-img convert -S 0 from a null-co source into a ${format} target whose file node has detect-zeroes=unmap: every cluster allocated, data sparse`);
    const layout = readLayout(path);
    if (statSync(path).size < layout.dataEnd) {
      // The punched holes past the end of the file do not extend it; the clusters there read as zeros.
      truncateSync(path, layout.dataEnd);
      notes.push(`extended the file (a hole) to the end of the last allocated cluster, ${layout.dataEnd} bytes, which the punched zero writes had not reached`);
    }
    qemuIo(['-f', format, path], markerCommands(size));
    notes.push('qemu-io: 64 KiB of pattern at the start of every GiB');
  } else if (spec.recipe === 'scattered-data') {
    run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster}`, path, String(size)]);
    const writes = scatteredWrites(size, spec.dataBytes);
    qemuIo(['-f', 'qcow2', path], writes.map((w) => `write -q -P ${w.pattern} ${w.offset} ${w.length}`));
    notes.push(`qemu-io: ${writes.length} writes of 64 KiB..1 MiB (4 KiB multiples) of pattern, ${spec.dataBytes} bytes, one per ${sizeName(Math.floor(size / writes.length / 4096) * 4096)} slot, in shuffled order`);
  } else if (spec.recipe === 'guest-data') {
    const { writes, denseEnd, slot } = guestWrites(size, spec.dataBytes);
    const what = `${writes.length} writes of 64 KiB..1 MiB (4 KiB aligned) of pattern, ${spec.dataBytes} bytes (${((100 * spec.dataBytes) / size).toFixed(2)}% of the guest): a quarter dense in the first ${sizeName(Math.ceil(denseEnd / MiB) * MiB)}, the rest one run per ${sizeName(slot)} slot, in shuffled order`;
    if (format === 'raw') {
      const fd = openSync(path, 'w');
      try {
        ftruncateSync(fd, size);
        const block = Buffer.alloc(MiB);
        for (const w of writes) {
          block.fill(w.pattern, 0, w.length);
          writeSync(fd, block, 0, w.length, w.offset);
        }
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      notes.push(`sparse file; pwrite: ${what}`);
    } else {
      run('qemu-img', ['create', '-q', '-f', format, '-o', format === 'qed' ? `cluster_size=${cluster}` : format === 'vmdk' ? 'subformat=monolithicSparse' : `cluster_size=${cluster}`, path, String(size)]);
      qemuIo(['-f', format, path], writes.map((w) => `write -q -P ${w.pattern} ${w.offset} ${w.length}`));
      notes.push(`qemu-img create -f ${format}; qemu-io: ${what}`);
    }
  } else if (spec.recipe === 'raw-extents') {
    const fd = openSync(path, 'w');
    try {
      ftruncateSync(fd, size);
      const block = Buffer.alloc(4 * KiB);
      for (let i = 0; i < spec.extents; i++) {
        block.fill((i % 250) + 1);
        block.writeUInt32LE(i, 0);
        writeSync(fd, block, 0, block.length, i * spec.stride);
      }
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    notes.push(`sparse file, ${spec.extents} extents of 4 KiB (pattern) every ${sizeName(spec.stride)}, written with pwrite`);
  } else throw new Error(`unknown recipe ${spec.recipe}`);
  return notes;
}

const recipeKey = (spec) => JSON.stringify({ v: RECIPE_VERSION, recipe: spec.recipe, format: spec.format, size: spec.size, cluster: spec.cluster, dataBytes: spec.dataBytes, extents: spec.extents, stride: spec.stride });

function describe(spec, path, meta) {
  const layout = readLayout(path);
  const stat = statSync(path);
  let check = null;
  if (spec.format !== 'raw') {
    const result = spawnSync('qemu-img', ['check', '-f', spec.format, '--output=json', path], { encoding: 'utf8', maxBuffer: 64 * MiB });
    let json = {};
    try {
      json = JSON.parse(result.stdout);
    } catch {}
    check = { status: result.status, leaks: json.leaks ?? 0, corruptions: json.corruptions ?? 0, allocatedClusters: json['allocated-clusters'], totalClusters: json['total-clusters'] };
  }
  const clusters = spec.recipe === 'guest-data' && spec.format === 'raw' ? guestWrites(spec.size, spec.dataBytes).writes.length : spec.format === 'raw' ? spec.extents : layout.dataClusters;
  const dataBytes = spec.recipe === 'guest-data' ? spec.dataBytes : spec.format === 'raw' ? spec.extents * 4 * KiB : spec.recipe === 'scattered-data' ? spec.dataBytes : spec.recipe.endsWith('markers') ? Math.ceil(spec.size / GiB) * 64 * KiB : 0;
  return {
    ...meta,
    name: spec.name,
    format: spec.format,
    virtualSize: layout.virtualSize,
    clusterSize: spec.format === 'raw' ? 0 : layout.clusterSize,
    clusters,
    dataBytes,
    metadataBytes: layout.metadataBytes,
    metadataRanges: layout.ranges.length,
    fileSize: stat.size,
    allocatedBytes: stat.blocks * 512,
    sourceCheck: check,
    references: layout.references,
  };
}

/** Builds the image unless a complete one with the same recipe is cached. Returns its metadata. */
export function ensureImage(spec, dir, { rebuild = false, log = console.log } = {}) {
  const path = join(dir, `${spec.name}.${spec.format}`);
  const metaPath = `${path}.meta.json`;
  if (!rebuild && existsSync(path) && existsSync(metaPath)) {
    try {
      const meta = JSON.parse(readFileSync(metaPath, 'utf8'));
      if (meta.recipeKey === recipeKey(spec) && statSync(path).size === meta.fileSize) return { ...meta, path, cached: true };
    } catch {}
  }
  rmSync(path, { force: true });
  rmSync(metaPath, { force: true });
  const building = `${path}.building`;
  rmSync(building, { force: true });
  log(`  building ${spec.name} (${sizeName(spec.size)} ${spec.format}) ...`);
  const started = Date.now();
  const notes = build(spec, building);
  run('sync', []);
  const buildMs = Date.now() - started;
  renameSync(building, path);
  const meta = describe(spec, path, { recipeKey: recipeKey(spec), recipe: spec.recipe, notes, buildMs, builtAt: new Date().toISOString(), qemuImg: run('qemu-img', ['--version']).split('\n')[0] });
  writeFileSync(metaPath, `${JSON.stringify(meta, null, 2)}\n`);
  log(`  built ${spec.name} in ${(buildMs / 1000).toFixed(1)} s: ${meta.clusters} clusters, ${(meta.allocatedBytes / MiB).toFixed(1)} MiB on disk`);
  return { ...meta, path, cached: false };
}

/** Rough physical size of what the image's metadata occupies; used only to check free space before building. */
export function estimateBuildBytes(spec) {
  if (spec.recipe === 'guest-data') return spec.dataBytes * 1.1 + (spec.format === 'raw' ? 0 : (spec.size / spec.cluster) * 0.1 + 16 * MiB);
  if (spec.format === 'raw') return spec.extents * 4 * KiB;
  const clusters = spec.size / spec.cluster;
  const data = spec.recipe === 'scattered-data' ? spec.dataBytes : spec.recipe.endsWith('markers') ? Math.ceil(spec.size / GiB) * 64 * KiB : 0;
  return clusters * 10 + data + 16 * MiB; // L2 (8 B) + refcount (2 B) per cluster, plus data
}
