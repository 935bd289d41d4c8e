/** The fuzzer's own parts: deterministic mutants, exact replay, and guards that trip before the damage. */
import { describe, expect, it } from 'vitest';
import { MemoryIO } from '@ic/core';
import {
  applyMutations,
  generateMutant,
  GuardedIO,
  GuardTripped,
  installAllocationGuard,
  readOnlyStore,
  seedImage,
  seedLayout,
  SEED_NAMES,
  ViolationLog,
} from '../src/index.js';

describe('mutants', () => {
  it('are the same for the same (campaign seed, seed, index) and differ otherwise', () => {
    const seed = seedImage('qcow2-v3');
    const layout = seedLayout(seed);
    const a = generateMutant(seed, layout, 5, 1);
    expect(generateMutant(seed, layout, 5, 1)).toEqual(a);
    expect(generateMutant(seed, layout, 6, 1)).not.toEqual(a);
    expect(generateMutant(seed, layout, 5, 2)).not.toEqual(a);
  });

  it('replay from JSON byte for byte, and leave the seed untouched', () => {
    const seed = seedImage('qed');
    const before = Buffer.from(seed.bytes);
    const mutant = generateMutant(seed, seedLayout(seed), 3, 9);
    const once = applyMutations(seed, mutant.mutations);
    const again = applyMutations(seed, JSON.parse(JSON.stringify(mutant.mutations)));
    expect(Buffer.from(again.main).equals(Buffer.from(once.main))).toBe(true);
    expect(Buffer.from(seed.bytes).equals(before)).toBe(true);
  });

  it('set stores big- and little-endian values up to 2^64 - 1, resize cuts and pads', () => {
    const seed = { bytes: new Uint8Array(8), companions: {} };
    const be = applyMutations(seed, [{ op: 'set', offset: 0, width: 8, endian: 'be', value: String((1n << 64n) - 2n) }]).main;
    expect([...be]).toEqual([255, 255, 255, 255, 255, 255, 255, 254]);
    const le = applyMutations(seed, [{ op: 'set', offset: 2, width: 4, endian: 'le', value: '3735928559' }]).main;
    expect([...le]).toEqual([0, 0, 0xef, 0xbe, 0xad, 0xde, 0, 0]);
    expect(applyMutations(seed, [{ op: 'resize', length: 3 }]).main.length).toBe(3);
    expect([...applyMutations(seed, [{ op: 'resize', length: 10, fill: 7 }]).main.subarray(8)]).toEqual([7, 7]);
  });

  it('every seed has fields to mutate (header fields at least) and its descriptors have text', () => {
    for (const name of SEED_NAMES) {
      const layout = seedLayout(seedImage(name));
      expect(layout.main.fields.length + layout.main.texts.length, name).toBeGreaterThan(0);
      if (name.endsWith('-descriptor')) expect(layout.main.texts.length, name).toBe(1);
    }
  });
});

describe('guards', () => {
  it('a read longer than the file plus the margin, a write, a truncate and a flush trip and are recorded', async () => {
    const log = new ViolationLog();
    const bytes = new Uint8Array(4096).fill(1);
    const io = new GuardedIO(readOnlyStore(bytes, 'g'), bytes, 'g', log);
    expect((await io.read(0, 8192)).length).toBe(8192);
    await expect(io.read(0, 64 * 1024 * 1024)).rejects.toBeInstanceOf(GuardTripped);
    await expect(io.write(0, new Uint8Array(1))).rejects.toBeInstanceOf(GuardTripped);
    await expect(io.truncate(0)).rejects.toBeInstanceOf(GuardTripped);
    await expect(io.flush()).rejects.toBeInstanceOf(GuardTripped);
    expect(log.violations.map((v) => v.kind)).toEqual(['oversized-read', 'write', 'write', 'write']);
    expect(await io.dataRanges(0, 8192)).toEqual([{ offset: 0, length: 4096 }]);
  });

  it('the allocation guard refuses a big buffer before it exists, and instanceof still works both ways', () => {
    const plain = new Uint8Array(4);
    const guard = installAllocationGuard();
    try {
      const log = new ViolationLog();
      guard.log = log;
      guard.limit = 100_000;
      expect(() => new Uint32Array(25_001)).toThrow(GuardTripped);
      expect(() => new ArrayBuffer(100_001)).toThrow(GuardTripped);
      const small = new Uint8Array(16);
      expect(small instanceof Uint8Array && plain instanceof Uint8Array && Buffer.alloc(1) instanceof Uint8Array).toBe(true);
      expect(new MemoryIO(small).name).toBe('memory');
      expect(log.violations.map((v) => v.kind)).toEqual(['oversized-allocation', 'oversized-allocation']);
    } finally {
      guard.uninstall();
    }
    expect(new Uint8Array(1 << 20).length).toBe(1 << 20);
  });
});
