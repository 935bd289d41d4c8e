/**
 * `ic check -r leaks|all` against `qemu-img check -r leaks|all` (QEMU 7.2) on images qemu-img made, clean,
 * truncated and with a log to replay, each on its own copy. VHDX counts no leaks and qemu repairs no BAT entry;
 * the one repair qemu makes is the log replay of its read-write open, which ic refuses in one line (README).
 */
import { statSync, truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IC_ERROR_LINE, qemuCreate, qemuIo, repairBothWays, repairScratch, requireBuiltIc, requireQemu } from '@ic/test-utils';
import { reviveLastLogEntry } from './helpers.js';

const MiB = 1024 ** 2;
/** 64 MiB, 1 MiB blocks, three blocks written by qemu-io (the last at the end of the file), then `damage`. */
const { image, cleanup } = repairScratch('ic-vhdx-repair-', 'vhdx', (path) => {
  qemuCreate(path, 'vhdx', 64 * MiB, { o: 'block_size=1M' });
  qemuIo(path, 'vhdx', ['write -P 1 0 1M', 'write -P 2 5M 4k', 'write -P 3 63M 1M']);
});
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(cleanup);

describe('vhdx check -r: ic and qemu-img', () => {
  it.each(['leaks', 'all'] as const)('a clean image, -r %s: both exit 0; ic writes nothing', (mode) => {
    const both = repairBothWays(image(), 'vhdx', mode);
    expect([both.qemu.code, both.ic.code], both.ic.stderr).toEqual([0, 0]);
    expect(both.ic.stderr).toContain('nothing to repair');
    // qemu's read-write open rewrites both headers (a new file write GUID); ic's copy keeps every byte.
    expect(both.ic.sha).toBe(both.before);
    expect(both.ic.checkAfter).toBe(0);
  });

  it.each(['leaks', 'all'] as const)('blocks past the end of the file (truncated), -r %s: both exit 2, nothing repaired; ic writes nothing', (mode) => {
    const both = repairBothWays(image((path) => truncateSync(path, statSync(path).size - MiB - 4096)), 'vhdx', mode);
    expect([both.qemu.code, both.ic.code], both.ic.stderr).toEqual([2, 2]);
    expect(both.ic.json?.['corruptions']).toBe(both.qemu.json?.['corruptions']);
    expect(both.ic.json?.['corruptions-fixed']).toBeUndefined();
    expect(both.ic.sha).toBe(both.before);
  });

  it.each(['leaks', 'all'] as const)('a log to replay, -r %s: qemu replays it (1 corruption fixed, exit 0); ic refuses in one line, nothing written', (mode) => {
    const both = repairBothWays(image(reviveLastLogEntry), 'vhdx', mode);
    expect(both.qemu.code).toBe(0);
    expect(both.qemu.json?.['corruptions-fixed']).toBe(1);
    expect(both.qemu.checkAfter).toBe(0);
    expect(both.ic.code).toBe(1);
    expect(both.ic.stderr).toMatch(IC_ERROR_LINE);
    expect(both.ic.stderr).toContain('log that needs to be replayed');
    expect(both.ic.sha).toBe(both.before);
  });
});
