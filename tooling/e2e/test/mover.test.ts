/**
 * ic defrag and ic compact against the qemu oracle: images made fragmented by qemu-io (writes in reverse and
 * random guest order, zeros over data), then qemu-img check (clean, fragmentation), qemu-img compare with the
 * untouched copy, and qemu-io writes afterwards.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { icCli, qemuCheck, qemuCompare, qemuCreate, qemuIo, run, requireBuiltIc, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

const images: MoverImage[] = [
  { label: 'qed 64k, reverse order', format: 'qed', size: '64M', clusterSize: 65536, order: reverse(96) },
  { label: 'qed 64k, random order, zeros over some data', format: 'qed', size: '64M', clusterSize: 65536, order: shuffled(120, 1), after: ['write -z 1M 1M', 'write -P 0 3M 512k'] },
  // 4 KiB clusters and 4-cluster tables: an L2 table every 8 MiB of guest, allocated among the data, so tables move too.
  { label: 'qed 4k clusters, random order over 8 L2 tables', format: 'qed', o: 'cluster_size=4k,table_size=4', size: '64M', clusterSize: 4096, order: shuffled(320, 2) },
  { label: 'vmdk, reverse order', format: 'vmdk', size: '64M', clusterSize: 65536, order: reverse(96) },
  { label: 'vmdk, random order, zeros over some data', format: 'vmdk', size: '64M', clusterSize: 65536, order: shuffled(120, 3), after: ['write -z 2M 1M'] },
  // qcow2: the refcounts follow every move. v2 (compat=0.10) has no zero flag: qemu writes zeros as data.
  { label: 'qcow2 v2 64k, reverse order', format: 'qcow2', o: 'compat=0.10', size: '64M', clusterSize: 65536, order: reverse(96) },
  { label: 'qcow2 v2 64k, random order, zeros over some data', format: 'qcow2', o: 'compat=0.10', size: '64M', clusterSize: 65536, order: shuffled(120, 4), after: ['write -z 1M 1M', 'write -P 0 3M 512k'] },
  // v3: write -z over data leaves zero-allocated clusters (the zero flag and the host cluster kept), which move too.
  { label: 'qcow2 v3 64k, reverse order, zeros over some data', format: 'qcow2', o: 'compat=1.1', size: '64M', clusterSize: 65536, order: reverse(96), after: ['write -z 2M 1M', 'write -z 5M 64k'] },
  { label: 'qcow2 v3 64k, random order, zeros over some data', format: 'qcow2', o: 'compat=1.1', size: '64M', clusterSize: 65536, order: shuffled(120, 5), after: ['write -z 1M 1M', 'write -P 0 3M 512k'] },
  // 4 KiB clusters: an L2 table every 2 MiB of guest, allocated among the data, so L2 tables move too.
  { label: 'qcow2 v3 4k clusters, random order over 30 L2 tables, zeros', format: 'qcow2', o: 'compat=1.1,cluster_size=4k', size: '64M', clusterSize: 4096, order: shuffled(320, 6), after: ['write -z 0 4k', 'write -z 192k 8k'] },
  { label: 'qcow2 v2 4k clusters, reverse order over 30 L2 tables', format: 'qcow2', o: 'compat=0.10,cluster_size=4k', size: '64M', clusterSize: 4096, order: reverse(320) },
  // Other refcount widths: sub-byte counters (1 bit, LSB first) and 64-bit ones.
  { label: 'qcow2 v3 64k, refcount_bits=1, random order, zeros', format: 'qcow2', o: 'compat=1.1,refcount_bits=1', size: '64M', clusterSize: 65536, order: shuffled(100, 7), after: ['write -z 1M 512k'] },
  { label: 'qcow2 v3 64k, refcount_bits=64, reverse order', format: 'qcow2', o: 'compat=1.1,refcount_bits=64', size: '64M', clusterSize: 65536, order: reverse(96) },
];

/** Stride between written clusters: the 4 KiB image spreads its writes over the disk (many tables). */
const strideOf = (image: MoverImage) => (image.clusterSize === 4096 ? 48 : 1);

function fragmentedPercent(text: string): string | undefined {
  return /([\d.]+)% fragmented/.exec(text)?.[1];
}

function expectUsable(file: string, image: MoverImage, pristine: string): void {
  // qemu-io writes new data; old and new read back.
  qemuIo(file, image.format, ['write -P 0xee 40M 192k']);
  qemuIo(pristine, image.format, ['write -P 0xee 40M 192k']);
  const first = image.order[0]! * strideOf(image) * image.clusterSize;
  qemuIo(file, image.format, [`read -P 0xee 40M 192k`, `read -P ${(image.order[0]! % 250) + 1} ${first} ${image.clusterSize}`]);
  expect(qemuCompare(file, image.format, pristine, image.format).code).toBe(0);
  expect(qemuCheck(file, image.format).code).toBe(0);
}

describe('ic defrag', () => {
  const scratch = tempDir('ic-defrag-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  for (const [n, image] of images.entries()) {
    it(`${image.label}: 0.00% fragmented, clean, identical, usable; --max-moves runs end at the same bytes`, { timeout: 300_000 }, () => {
      const dir = scratch.path(`case-${n}`);
      mkdirSync(dir);
      const pristine = join(dir, `pristine.${image.format}`);
      makeFragmented(pristine, image, strideOf(image));
      const before = qemuCheck(pristine, image.format);
      expect(before.code).toBe(0);

      const file = join(dir, `image.${image.format}`);
      copyFileSync(pristine, file);
      const dry = icCli(['defrag', '--dry-run', file]);
      expect(dry.status, dry.stderr).toBe(0);
      expect(sha256File(file)).toBe(sha256File(pristine));

      const run = icCli(['defrag', file]);
      expect(run.status, run.stderr).toBe(0);
      console.log(`${image.label}\n${run.stdout}`);
      expect(run.stdout).toMatch(/before: +\d+\/\d+ = [1-9][\d.]*% fragmented clusters/);
      expect(run.stdout).toMatch(/after: +0\/\d+ = 0\.00% fragmented clusters/);
      const check = qemuCheck(file, image.format);
      expect(check.code, check.text).toBe(0);
      // qemu-img prints the fragmentation line for the formats whose check counts it (QED does).
      const percent = fragmentedPercent(check.text);
      if (percent !== undefined) {
        expect(Number(fragmentedPercent(before.text))).toBeGreaterThan(50);
        expect(percent).toBe('0.00');
      }
      expect(qemuCompare(file, image.format, pristine, image.format).code).toBe(0);
      expect(statSync(file).size).toBeLessThanOrEqual(statSync(pristine).size);
      // Nothing left to do.
      const again = icCli(['defrag', file]);
      expect(again.status, again.stderr).toBe(0);
      expect(again.stdout).toMatch(/moved: +0 units/);

      // The same with a small budget, run until done: every run leaves a clean image; the end is the same bytes.
      const budgeted = join(dir, `budgeted.${image.format}`);
      copyFileSync(pristine, budgeted);
      let runs = 0;
      for (;;) {
        const step = icCli(['defrag', '--max-moves', '40', budgeted]);
        runs++;
        expect([0, 4], step.stderr).toContain(step.status);
        const stepCheck = qemuCheck(budgeted, image.format);
        expect(stepCheck.code, stepCheck.text).toBe(0);
        expect(qemuCompare(budgeted, image.format, pristine, image.format).code).toBe(0);
        if (step.status === 0) break;
        expect(runs).toBeLessThan(200);
      }
      console.log(`${image.label}: --max-moves 40 took ${runs} runs`);
      expect(runs).toBeGreaterThan(1);
      expect(sha256File(budgeted)).toBe(sha256File(file));

      expectUsable(file, image, pristine);
    });
  }

  it('refuses a format that lists no units, and qcow2 images whose clusters cannot move, in one line, leaving the file untouched', () => {
    const refused: [string, string, RegExp][] = [];
    const vdi = scratch.path('refused.vdi');
    qemuCreate(vdi, 'vdi', '16M');
    qemuIo(vdi, 'vdi', ['write -P 1 1M 64k', 'write -P 2 0 64k']);
    refused.push([vdi, 'vdi', /^ic: vdi: cannot (defragment|compact): the driver lists no movable units[^\n]+ \[UNSUPPORTED\]\n$/]);
    // Internal snapshots share clusters (reference counts above 1).
    const snapshot = scratch.path('snapshot.qcow2');
    qemuCreate(snapshot, 'qcow2', '16M');
    qemuIo(snapshot, 'qcow2', ['write -P 1 1M 64k', 'write -P 2 0 64k']);
    expect(run('qemu-img', ['snapshot', '-c', 'one', snapshot]).code).toBe(0);
    refused.push([snapshot, 'qcow2', /^ic: qcow2: cannot (defragment|compact): internal snapshots: [^\n]+ \[UNSUPPORTED\]\n$/]);
    // Compressed clusters are not whole clusters at a cluster's offset.
    const plain = scratch.path('plain.qcow2');
    qemuCreate(plain, 'qcow2', '16M');
    qemuIo(plain, 'qcow2', ['write -P 3 0 1M']);
    const compressed = scratch.path('compressed.qcow2');
    expect(run('qemu-img', ['convert', '-c', '-f', 'qcow2', '-O', 'qcow2', plain, compressed]).code).toBe(0);
    refused.push([compressed, 'qcow2', /^ic: [^\n]*compressed clusters[^\n]+ \[UNSUPPORTED\]\n$/]);
    for (const [file, , pattern] of refused) {
      const sha = sha256File(file);
      for (const command of [['defrag'], ['compact', '--zero-scan']]) {
        const run = icCli([...command, file]);
        expect(run.status, run.stderr).toBe(1);
        expect(run.stderr).toMatch(pattern);
        expect(sha256File(file)).toBe(sha);
      }
    }
  });
});

describe('qcow2 over a backing file', () => {
  const scratch = tempDir('ic-mover-backing-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  it('defrag, then compact --zero-scan: zeros become zero entries (never unallocated: the backing would show); identical, clean', { timeout: 120_000 }, () => {
    const base = scratch.path('base.qcow2');
    qemuCreate(base, 'qcow2', '16M');
    qemuIo(base, 'qcow2', ['write -P 9 0 16M']);
    const pristine = scratch.path('pristine.qcow2');
    qemuCreate(pristine, 'qcow2', '16M', { backing: base, backingFormat: 'qcow2' });
    // Reverse order, zeros written as data over the backing file, and a zero cluster of the child's own.
    qemuIo(pristine, 'qcow2', ['write -P 1 7M 64k', 'write -P 2 5M 64k', 'write -P 0 3M 128k', 'write -P 3 1M 64k', 'write -z 9M 64k']);
    const file = scratch.path('image.qcow2');
    copyFileSync(pristine, file);
    const defrag = icCli(['defrag', file]);
    expect(defrag.status, defrag.stderr).toBe(0);
    expect(defrag.stdout).toMatch(/after: +0\/5 = 0\.00% fragmented clusters/);
    const compact = icCli(['compact', '--zero-scan', file]);
    expect(compact.status, compact.stderr).toBe(0);
    expect(compact.stdout).toMatch(/2 all-zero clusters: 0 became unallocated, 2 became zero entries/);
    const check = qemuCheck(file, 'qcow2');
    expect(check.code, check.text).toBe(0);
    expect(check.text).toMatch(/ 0\.00% fragmented/);
    expect(qemuCompare(file, 'qcow2', pristine, 'qcow2').code).toBe(0);
    qemuIo(file, 'qcow2', ['read -P 0 3M 128k', 'read -P 9 4M 64k', 'read -P 0 9M 64k', 'read -P 1 7M 64k']);
    expect(statSync(file).size).toBeLessThan(statSync(pristine).size);
  });
});

describe('ic compact', () => {
  const scratch = tempDir('ic-compact-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => scratch.cleanup());

  const compacted: { label: string; format: string; o?: string; scale?: number }[] = [
    { label: 'qed', format: 'qed' },
    { label: 'vmdk', format: 'vmdk' },
    // v3: write -z leaves zero-allocated clusters (stale bytes, the zero flag): they go without being read.
    { label: 'qcow2 v3', format: 'qcow2', o: 'compat=1.1' },
    { label: 'qcow2 v2', format: 'qcow2', o: 'compat=0.10' },
    // qcow2's refcount blocks do not move: with 4 KiB clusters qemu puts one every 8 MiB of the file, among the data,
    // and the file cannot be cut below the last. A quarter of the layout (everything below 8 MiB) gives all back.
    { label: 'qcow2 v3 4k clusters, a quarter of the data', format: 'qcow2', o: 'compat=1.1,cluster_size=4k', scale: 4 },
  ];
  for (const [n, { label, format, o, scale = 1 }] of compacted.entries()) {
    it(`${label}: zeros written over most of the data: at least their space comes back; identical, clean, usable`, { timeout: 120_000 }, () => {
      const pristine = scratch.path(`pristine-${n}.${format}`);
      qemuCreate(pristine, format, '64M', o ? { o } : {});
      // Offsets and lengths in MiB, divided by `scale`.
      const at = (mib: number) => `${(mib * 1024) / scale}k`;
      qemuIo(pristine, format, [`write -P 0x11 0 ${at(16)}`, `write -P 0x22 ${at(20)} ${at(4)}`]);
      // 12 MiB of zeros over data: qemu-io writes them as zero data clusters (allocated), plus explicit zero patterns.
      qemuIo(pristine, format, [`write -z ${at(1)} ${at(8)}`, `write -P 0 ${at(20)} ${at(3)}`, `write -z ${at(12)} ${at(1)}`]);
      const zeroed = (12 * 1024 * 1024) / scale;
      const file = scratch.path(`image-${n}.${format}`);
      copyFileSync(pristine, file);
      const diskBefore = statSync(file).blocks * 512;
      const sizeBefore = statSync(file).size;

      const dry = icCli(['compact', '--zero-scan', '--dry-run', file]);
      expect(dry.status, dry.stderr).toBe(0);
      expect(sha256File(file)).toBe(sha256File(pristine));

      const run = icCli(['compact', '--zero-scan', file]);
      expect(run.status, run.stderr).toBe(0);
      console.log(`${label}\n${run.stdout}`);
      expect(run.stdout).toMatch(/disk size: +\d+ bytes .* -> \d+ bytes/);
      const diskAfter = statSync(file).blocks * 512;
      console.log(`${label}: disk size ${diskBefore} -> ${diskAfter} (gave back ${diskBefore - diskAfter}; zeroed ${zeroed})`);
      // The file shrinks by at least the zeroed clusters; its disk usage too, less at most one cluster: a moved
      // table that was sparse on disk (partly never written) is written in full at its new place.
      expect(sizeBefore - statSync(file).size).toBeGreaterThanOrEqual(zeroed);
      expect(diskBefore - diskAfter).toBeGreaterThanOrEqual(zeroed - 65536);
      const check = qemuCheck(file, format);
      expect(check.code, check.text).toBe(0);
      expect(qemuCompare(file, format, pristine, format).code).toBe(0);
      qemuIo(file, format, ['write -P 0x33 30M 1M', 'read -P 0x33 30M 1M', `read -P 0x11 0 ${at(1)}`, `read -P 0x22 ${at(23)} ${at(1)}`, `read -P 0 ${at(1)} ${at(8)}`]);
      expect(qemuCheck(file, format).code).toBe(0);

      // Without --zero-scan, a compact image stays as it is.
      const sha = sha256File(file);
      const plain = icCli(['compact', file]);
      expect(plain.status, plain.stderr).toBe(0);
      expect(sha256File(file)).toBe(sha);
    });
  }
});
