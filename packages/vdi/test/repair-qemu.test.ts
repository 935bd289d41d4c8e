/**
 * `ic check -r leaks|all` against `qemu-img check -r leaks|all` (QEMU 7.2) on images qemu-img made, clean and
 * damaged, each on its own copy. qemu repairs no VDI (exit 63 for any -r, file untouched); ic repairs a wrong
 * blocks_allocated when that is safe and refuses every other damage in one line (README says why).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IC_ERROR_LINE, qemuCompare, qemuCreate, qemuIo, repairBothWays, repairScratch, requireBuiltIc, requireQemu } from '@ic/test-utils';
import { HEADER_FIELDS } from '../src/index.js';
import { pokeU32 } from './helpers.js';

/** An 8 MiB image with blocks 0, 1, 2 (1 MiB each, indices 0, 1, 2) written by qemu-io, then `damage` applied. */
const { image, cleanup } = repairScratch('ic-vdi-repair-', 'vdi', (path) => {
  qemuCreate(path, 'vdi', '8M');
  qemuIo(path, 'vdi', ['write -P 1 0 3M']);
});
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(cleanup);
const blockMapEntry = (path: string, block: number) => readFileSync(path).readUInt32LE(HEADER_FIELDS.offsetBmap.offset) + 4 * block;

function expectQemuRefuses(both: ReturnType<typeof repairBothWays>): void {
  expect(both.qemu.code).toBe(63);
  expect(both.qemu.stderr).toContain('does not support checks');
  expect(both.qemu.sha).toBe(both.before);
}

describe('vdi check -r: ic and qemu-img', () => {
  it.each(['leaks', 'all'] as const)('a clean image, -r %s: qemu 63, ic 0 with nothing to repair; neither writes', (mode) => {
    const both = repairBothWays(image(), 'vdi', mode);
    expectQemuRefuses(both);
    expect(both.ic.code, both.ic.stderr).toBe(0);
    expect(both.ic.stderr).toContain('nothing to repair');
    expect(both.ic.sha).toBe(both.before);
  });

  it('blocks_allocated too low (1 for 3 blocks): qemu 63; ic -r leaks 2 and writes nothing; ic -r all rewrites it', () => {
    const path = image((file) => pokeU32(file, HEADER_FIELDS.blocksAllocated.offset, 1));
    const leaks = repairBothWays(path, 'vdi', 'leaks');
    expectQemuRefuses(leaks);
    expect([leaks.ic.code, leaks.ic.sha, leaks.ic.checkAfter]).toEqual([2, leaks.before, 2]);
    const all = repairBothWays(path, 'vdi', 'all');
    expectQemuRefuses(all);
    expect(all.ic.code, all.ic.stderr).toBe(0);
    expect(all.ic.json?.['corruptions-fixed']).toBe(1);
    expect(all.ic.checkAfter).toBe(0);
    expect(readFileSync(`${path}.ic`).readUInt32LE(HEADER_FIELDS.blocksAllocated.offset)).toBe(3);
    expect(qemuCompare(`${path}.ic`, 'vdi', path, 'vdi').code).toBe(0);
    // qemu allocates the next block at index blocks_allocated: after the repair a new block lands past the others.
    expect(qemuIo(`${path}.ic`, 'vdi', ['write -P 9 5M 1M', 'read -P 1 0 3M', 'read -P 9 5M 1M'])).not.toMatch(/fail|mismatch/i);
  });

  it('a hole in the indices (blocks 0 and 2 in use, blocks_allocated 3): qemu 63; ic -r all refuses in one line', () => {
    // Block 1 unmapped: indices 0 and 2 in use, blocks_allocated 3. qemu counts 2 and calls that a mismatch.
    const path = image((file) => pokeU32(file, blockMapEntry(file, 1), 0xffffffff));
    const both = repairBothWays(path, 'vdi', 'all');
    expectQemuRefuses(both);
    // Rewriting blocks_allocated to 2 would make qemu's next block index 2, on top of block 2's data.
    expect(both.ic.code).toBe(1);
    expect(both.ic.stderr).toMatch(IC_ERROR_LINE);
    expect(both.ic.stderr).toContain('nothing was written');
    expect(both.ic.sha).toBe(both.before);
  });

  it.each(['leaks', 'all'] as const)('two entries naming one block, -r %s: qemu 63; ic 2 (leaks) or one line (all), nothing written', (mode) => {
    const both = repairBothWays(image((file) => pokeU32(file, blockMapEntry(file, 2), 0)), 'vdi', mode);
    expectQemuRefuses(both);
    expect(both.ic.sha).toBe(both.before);
    if (mode === 'leaks') {
      expect(both.ic.code).toBe(2);
    } else {
      expect(both.ic.code).toBe(1);
      expect(both.ic.stderr).toMatch(IC_ERROR_LINE);
    }
  });
});
