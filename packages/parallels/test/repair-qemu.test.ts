/**
 * `ic check -r leaks|all` against `qemu-img check -r leaks|all` (QEMU 7.2) on images qemu-img made, clean and
 * damaged, each on its own copy: exit statuses, the repaired counts in the JSON, and the files afterwards.
 */
import { truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IC_ERROR_LINE, qemuCreate, qemuIo, repairBothWays, repairScratch, requireBuiltIc, requireQemu } from '@ic/test-utils';
import { INUSE_MAGIC } from '../src/index.js';
import { pokeU32 } from './helpers.js';

const MiB = 1024 ** 2;
/** An 8 MiB image (1 MiB clusters) with 2 MiB written, then `damage` applied; `empty` the same without the write. */
const { image, path: scratchPath, cleanup } = repairScratch('ic-parallels-repair-', 'parallels', (path) => {
  qemuCreate(path, 'parallels', '8M');
  qemuIo(path, 'parallels', ['write -P 1 0 2M']);
});
const empty = repairScratch('ic-parallels-repair-empty-', 'parallels', (path) => qemuCreate(path, 'parallels', '8M'));
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => {
  cleanup();
  empty.cleanup();
});
const leakedCluster = (path: string) => truncateSync(path, 3 * MiB + MiB);
const inUse = (path: string) => pokeU32(path, 44, INUSE_MAGIC);

describe('parallels check -r: ic and qemu-img', () => {
  it.each(['leaks', 'all'] as const)('a clean image, -r %s: both exit 0 and neither changes a byte', (mode) => {
    const both = repairBothWays(image(), 'parallels', mode);
    expect([both.qemu.code, both.ic.code]).toEqual([0, 0]);
    expect([both.qemu.sha, both.ic.sha]).toEqual([both.before, both.before]);
  });

  it.each(['leaks', 'all'] as const)('a leaked cluster at the end, -r %s: both truncate it (leaks-fixed 1), exit 0, the same file', (mode) => {
    const both = repairBothWays(image(leakedCluster), 'parallels', mode);
    expect([both.qemu.code, both.ic.code], both.ic.stderr).toEqual([0, 0]);
    expect(both.ic.json?.['leaks-fixed']).toBe(1);
    expect(both.ic.json?.['leaks-fixed']).toBe(both.qemu.json?.['leaks-fixed']);
    expect(both.ic.sha).toBe(both.qemu.sha);
    expect([both.qemu.checkAfter, both.ic.checkAfter]).toEqual([0, 0]);
  });

  it('an empty image with a leaked cluster: the end is where the data area starts, as for qemu', () => {
    const both = repairBothWays(empty.image(leakedCluster), 'parallels', 'leaks');
    expect([both.qemu.code, both.ic.code], both.ic.stderr).toEqual([0, 0]);
    expect(both.ic.sha).toBe(both.qemu.sha);
  });

  it('an empty image whose BAT spans more than one cluster: qemu cuts nothing yet answers 0; ic keeps the BAT and answers 3', () => {
    const path = scratchPath('big-bat.parallels');
    qemuCreate(path, 'parallels', '1G', { o: 'cluster_size=64k' });
    const both = repairBothWays(path, 'parallels', 'leaks');
    // qemu 7.2 puts the end one cluster in (inside the BAT): it reports 1 leak fixed, the file keeps its size, and
    // the next check finds the same leak.
    expect([both.qemu.code, both.qemu.json?.['leaks-fixed'], both.qemu.sha, both.qemu.checkAfter]).toEqual([0, 1, both.before, 3]);
    expect(both.ic.code, both.ic.stderr).toBe(3);
    expect(both.ic.stderr).toContain('holds the BAT');
    expect(both.ic.sha).toBe(both.before);
  });

  it('inuse set and a leaked cluster, -r all: both clear inuse and truncate (1 corruption and 1 leak fixed), the same file', () => {
    const both = repairBothWays(image((path) => (inUse(path), leakedCluster(path))), 'parallels', 'all');
    expect([both.qemu.code, both.ic.code], both.ic.stderr).toEqual([0, 0]);
    for (const field of ['leaks-fixed', 'corruptions-fixed']) expect(both.ic.json?.[field], field).toBe(both.qemu.json?.[field]);
    expect(both.ic.json?.['corruptions-fixed']).toBe(1);
    expect(both.ic.sha).toBe(both.qemu.sha);
    expect(both.ic.checkAfter).toBe(0);
  });

  it('inuse set, -r leaks: both exit 2 (the corruption is left to -r all); ic leaves inuse, qemu drops it on close', () => {
    const both = repairBothWays(image(inUse), 'parallels', 'leaks');
    expect([both.qemu.code, both.ic.code]).toEqual([2, 2]);
    // qemu's read-write open sets inuse and its close clears it, so its copy comes back clean as a side effect.
    expect(both.qemu.checkAfter).toBe(0);
    expect(both.ic.sha).toBe(both.before);
    expect(both.ic.checkAfter).toBe(2);
  });

  it.each(['leaks', 'all'] as const)('a BAT entry past the end of the file, -r %s: qemu damages or drops; ic refuses in one line, nothing written', (mode) => {
    // BAT entry 5 (in clusters) names the cluster at 6 MiB of a 3 MiB file.
    const both = repairBothWays(image((file) => pokeU32(file, 64 + 4 * 5, 6)), 'parallels', mode);
    // qemu -r leaks reports the corruption (exit 2) but its read-write open has extended the file over the bad
    // cluster, so the next check finds nothing; -r all sets the entry to 0 and leaves the extended file leaked.
    expect(both.qemu.code).toBe(mode === 'leaks' ? 2 : 0);
    expect(both.qemu.checkAfter).toBe(mode === 'leaks' ? 0 : 3);
    expect(both.ic.code).toBe(1);
    expect(both.ic.stderr).toMatch(IC_ERROR_LINE);
    expect(both.ic.stderr).toContain('nothing was written');
    expect(both.ic.sha).toBe(both.before);
  });
});
