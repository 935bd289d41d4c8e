/**
 * Hostile and damaged input (reliability.md §3): every case ends in a typed IcError (or a valid image),
 * quickly, and nothing is ever written to the file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, truncateSync } from 'node:fs';
import { deflateRawSync } from 'node:zlib';
import fc from 'fast-check';
import { collectExtents, convertInPlace, isIcError, MemoryIO } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { qcow2Driver, walkMapping, type Qcow2Image } from '../src/index.js';
import { closeAll, errorCode, inflate, openQcow2, poke, u32be, u64be } from './helpers.js';

const tmp = tempDir('ic-qcow2-hostile-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const M = 1024 * 1024;
let base: string;
let compressed: string;
beforeAll(() => {
  // Layout: header 0, refcount table 0x10000, refcount block 0x20000, L1 0x30000, L2 0x40000, data 0x50000...
  base = tmp.path('base.qcow2');
  qemuCreate(base, 'qcow2', 64 * M);
  qemuIo(base, 'qcow2', ['write -P 1 0 128k', 'write -P 2 40M 64k']);
  compressed = tmp.path('compressed.qcow2');
  const raw = tmp.path('compressed.raw');
  qemuCreate(raw, 'raw', 4 * M);
  qemuIo(raw, 'raw', ['write -P 3 0 128k']);
  expect(run('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, compressed]).code).toBe(0);
});

/** Opens, maps, reads, checks and describes; returns the first IcError code, or 'ok'. */
async function everything(image: Qcow2Image): Promise<void> {
  await collectExtents(image.map());
  await image.read(0, Math.min(image.info().virtualSize, 1 << 20));
  await image.check();
  await image.conversionSource();
}

/** What a conversion sees: the description and a full plan (a dry run), read-only. */
async function dryRun(file: string): Promise<void> {
  const io = await FileIO.open(file);
  try {
    await convertInPlace({ io, source: qcow2Driver, target: qcow2Driver, dryRun: true, openOptions: { inflate } });
  } finally {
    await io.close();
  }
}

interface HostileCase {
  name: string;
  damage: (file: string) => void;
  /** Expected code, and the step that must produce it ('source': describing it for, or planning, a conversion). */
  code: string;
  step: 'open' | 'map' | 'source' | 'read' | 'check';
}

const cases: HostileCase[] = [
  { name: 'truncated to 40 bytes', damage: (f) => truncateSync(f, 40), code: 'CORRUPT', step: 'open' },
  { name: 'truncated inside the L1 table', damage: (f) => truncateSync(f, 0x30004), code: 'CORRUPT', step: 'open' },
  { name: 'truncated before the refcount table ends', damage: (f) => truncateSync(f, 0x18000), code: 'CORRUPT', step: 'open' },
  { name: 'unknown incompatible feature bit', damage: (f) => poke(f, 72, u64be(1n << 9n)), code: 'UNSUPPORTED', step: 'open' },
  { name: 'qcow version 1', damage: (f) => poke(f, 4, u32be(1)), code: 'UNSUPPORTED', step: 'open' },
  { name: 'absurd virtual size', damage: (f) => poke(f, 24, u64be(0x7fffffffffffffffn)), code: 'LIMIT', step: 'open' },
  { name: 'absurd l1_size', damage: (f) => poke(f, 36, u32be(0xffffffff)), code: 'LIMIT', step: 'open' },
  { name: 'absurd refcount_table_clusters', damage: (f) => poke(f, 56, u32be(0xffffffff)), code: 'LIMIT', step: 'open' },
  { name: 'absurd nb_snapshots', damage: (f) => poke(f, 60, u32be(0xffffffff)), code: 'LIMIT', step: 'open' },
  { name: 'snapshot table running past EOF', damage: (f) => (poke(f, 60, u32be(1000)), poke(f, 64, u64be(0x50000))), code: 'CORRUPT', step: 'open' },
  { name: 'header extension with a huge length', damage: (f) => poke(f, 0x74, u32be(0xfffffff0)), code: 'CORRUPT', step: 'open' },
  { name: 'L1 table overlapping the header', damage: (f) => poke(f, 40, u64be(0)), code: 'CORRUPT', step: 'open' },
  { name: 'L2 table offset past EOF', damage: (f) => poke(f, 0x30000, u64be(0x8000000100000000n)), code: 'CORRUPT', step: 'map' },
  { name: 'L2 table offset past 2^53', damage: (f) => poke(f, 0x30000, u64be(0x80fffffffffffe00n)), code: 'CORRUPT', step: 'map' },
  { name: 'L2 table in the header cluster', damage: (f) => poke(f, 0x30000, u64be(0x8000000000000200n)), code: 'CORRUPT', step: 'map' },
  { name: 'L2 table not cluster-aligned', damage: (f) => poke(f, 0x30000, u64be(0x8000000000040200n)), code: 'CORRUPT', step: 'map' },
  { name: 'data cluster not aligned', damage: (f) => poke(f, 0x40000, u64be(0x8000000000050200n)), code: 'CORRUPT', step: 'map' },
  { name: 'data cluster past EOF', damage: (f) => poke(f, 0x40000, u64be(0x8000000100000000n)), code: 'CORRUPT', step: 'source' },
  { name: 'data cluster in the header cluster', damage: (f) => poke(f, 0x40000, u64be(0x8000000000000000n | 0x200n)), code: 'CORRUPT', step: 'map' },
  { name: 'data cluster aliasing another', damage: (f) => poke(f, 0x40008, u64be(0x8000000000050000n)), code: 'CORRUPT', step: 'source' },
  { name: 'data cluster on top of the L1 table', damage: (f) => poke(f, 0x40000, u64be(0x8000000000030000n)), code: 'CORRUPT', step: 'source' },
  { name: 'data cluster on top of the refcount block', damage: (f) => poke(f, 0x40000, u64be(0x8000000000020000n)), code: 'CORRUPT', step: 'source' },
  { name: 'refcount block in the header cluster', damage: (f) => poke(f, 0x10000, u64be(0x200)), code: 'CORRUPT', step: 'source' },
  { name: 'refcount block past EOF', damage: (f) => poke(f, 0x10000, u64be(0x10000000)), code: 'CORRUPT', step: 'source' },
  { name: 'refcount block on an L2 table', damage: (f) => poke(f, 0x10000, u64be(0x40000)), code: 'CORRUPT', step: 'source' },
  { name: 'zero flag in a version 2 image', damage: (f) => (poke(f, 4, u32be(2)), poke(f, 0x40000, u64be(0x8000000000050001n))), code: 'CORRUPT', step: 'map' },
];

describe('damaged and hostile images give typed errors at the right step, and are never written', () => {
  for (const testCase of cases) {
    it(testCase.name, async () => {
      const file = tmp.path(`${testCase.name.replace(/\W+/g, '_')}.qcow2`);
      copyFileSync(base, file);
      testCase.damage(file);
      const before = sha256File(file);
      const steps: HostileCase['step'][] = ['open', 'map', 'read', 'source', 'check'];
      let image: Qcow2Image | undefined;
      let failed: { step: string; code: string | undefined } | undefined;
      for (const step of steps) {
        const code = await errorCode(async () => {
          if (step === 'open') image = await openQcow2(file);
          else if (step === 'map') await collectExtents(image!.map());
          else if (step === 'read') await image!.read(0, 1 << 20);
          else if (step === 'source') await dryRun(file);
          else await image!.check();
        });
        if (code) {
          failed = { step, code };
          break;
        }
      }
      expect(failed).toEqual({ step: testCase.step, code: testCase.code });
      expect(sha256File(file)).toBe(before);
    });
  }

  it('L1 entries all pointing at one L2 table: map refuses, check stays bounded', async () => {
    // 512-byte clusters, 64 GiB: 2 Mi L1 entries (16 MiB), every one naming the same L2 table.
    const file = tmp.path('aliased-l2.qcow2');
    qemuCreate(file, 'qcow2', 64 * 1024 * M, { o: 'cluster_size=512' });
    qemuIo(file, 'qcow2', ['write -P 1 0 512']);
    const image = await openQcow2(file);
    const l1 = image.state.header.l1TableOffset;
    const l2 = image.state.l1.getBigUint64(0);
    const entries = new Uint8Array(image.state.header.l1Size * 8);
    const view = new DataView(entries.buffer);
    for (let i = 0; i < image.state.header.l1Size; i++) view.setBigUint64(i * 8, l2);
    poke(file, l1, entries);
    const damaged = await openQcow2(file);
    expect(await errorCode(() => collectExtents(damaged.map()))).toBe('CORRUPT');
    expect(await errorCode(() => dryRun(file))).toBe('CORRUPT');
    const started = Date.now();
    const code = await errorCode(() => damaged.check());
    expect(code === undefined || code === 'LIMIT').toBe(true);
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('compressed cluster: garbage stream is CORRUPT, a short stream is CORRUPT, without inflate UNSUPPORTED', async () => {
    const garbage = tmp.path('compressed-garbage.qcow2');
    copyFileSync(compressed, garbage);
    const image = await openQcow2(compressed);
    let hostOffset = 0;
    for await (const pieces of walkMapping(image.state, 0, 65536)) hostOffset = pieces[0]!.compressed!.hostOffset;
    poke(garbage, hostOffset, new Uint8Array(64).fill(0xff));
    expect(await errorCode(async () => (await openQcow2(garbage)).read(0, 4096))).toBe('CORRUPT');
    const short = tmp.path('compressed-short.qcow2');
    copyFileSync(compressed, short);
    const shortStream = deflateRawSync(new Uint8Array(100));
    poke(short, hostOffset, shortStream);
    expect(await errorCode(async () => (await openQcow2(short)).read(0, 4096))).toBe('CORRUPT');
    const plain = await openQcow2(compressed, { inflate: undefined as never });
    expect(await errorCode(() => plain.read(0, 4096))).toBe('UNSUPPORTED');
    expect(await (await openQcow2(compressed, { inflate })).read(0, 4096)).toEqual(new Uint8Array(4096).fill(3));
  });

  it('backing_file_size 0xe20e45ce without a backing file sizes nothing (was "Array buffer allocation failed")', async () => {
    // qemu ignores backing_file_size when backing_file_offset is 0; ic read 0xe20e45ce bytes of cluster 0.
    const file = tmp.path('backing-size-no-backing.qcow2');
    copyFileSync(base, file);
    poke(file, 16, u32be(0xe20e45ce));
    const bytes = new Uint8Array(readFileSync(file));
    const store = new MemoryIO(bytes, 'backing-size', { writable: false });
    let longestRead = 0;
    const io = Object.assign(Object.create(store) as MemoryIO, {
      read: (offset: number, length: number) => ((longestRead = Math.max(longestRead, length)), store.read(offset, length)),
    });
    const image = (await qcow2Driver.open(io, { inflate })) as Qcow2Image;
    expect(image.info().backing).toBeUndefined();
    await everything(image);
    expect((await image.check()).corruptions).toBe(0);
    expect(longestRead).toBeLessThanOrEqual(bytes.length);
    // With a backing file, a size past 1023 is refused in one line.
    poke(file, 8, u64be(0x1000));
    expect(await errorCode(() => openQcow2(file))).toBe('CORRUPT');
  });

  it('a backing file name is a C string, like qemu\'s: empty means no backing file, a NUL ends it', async () => {
    const file = tmp.path('backing-name-c-string.qcow2');
    copyFileSync(base, file);
    // backing_file_offset 0x1000, backing_file_size 0: qemu-img info shows no backing file.
    poke(file, 8, u64be(0x1000));
    expect((await openQcow2(file)).info().backing).toBeUndefined();
    expect(run('qemu-img', ['info', '-f', 'qcow2', file]).stdout).not.toContain('backing file');
    poke(file, 16, u32be(8));
    poke(file, 0x1000, [...new TextEncoder().encode('base\0xyz')]);
    expect((await openQcow2(file)).info().backing).toEqual({ name: 'base' });
    expect(run('qemu-img', ['info', '-f', 'qcow2', '--output=json', file]).stdout).toContain('"backing-filename": "base"');
  });

  it('reads outside the virtual disk are OUT_OF_BOUNDS', async () => {
    const image = await openQcow2(base);
    expect(await errorCode(() => image.read(64 * M - 10, 20))).toBe('OUT_OF_BOUNDS');
    expect(await errorCode(() => image.read(-1, 1))).toBe('OUT_OF_BOUNDS');
  });

  it('probe: 100 for qcow2 v2/v3, 50 for other versions, 0 otherwise, never throws', () => {
    const head = new Uint8Array(readFileSync(base).subarray(0, 4096));
    expect(qcow2Driver.probe(head, 4096)).toBe(100);
    const v1 = head.slice();
    v1.set(u32be(1), 4);
    expect(qcow2Driver.probe(v1, 4096)).toBe(50);
    expect(qcow2Driver.probe(new Uint8Array(3), 3)).toBe(0);
    expect(qcow2Driver.probe(new Uint8Array(512), 512)).toBe(0);
  });
});

describe('property: random header and table bytes give an IcError or a valid image', () => {
  const pristine = () => new Uint8Array(readFileSync(base));
  // Values from qemu's image fuzzer boundary vectors, plus random ones.
  const u32 = fc.oneof(fc.constantFrom(0, 1, 0x100, 0x1000, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff), fc.nat({ max: 0xffffffff }));
  const u64 = fc.oneof(
    fc.constantFrom(0n, 1n, 0x10000n, 0x30000n, 0x40000n, (1n << 31n) - 1n, 1n << 32n, (1n << 63n) - 1n, (1n << 64n) - 1n),
    fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  );
  const fieldWrite = fc.oneof(
    fc.record({ offset: fc.constantFrom(4, 16, 20, 32, 36, 56, 60, 96, 100), value: u32 }).map(({ offset, value }) => ({ offset, bytes: u32be(value) })),
    fc.record({ offset: fc.constantFrom(8, 24, 40, 48, 64, 72, 80, 88), value: u64 }).map(({ offset, value }) => ({ offset, bytes: u64be(value) })),
    fc.record({ offset: fc.nat({ max: 0x200 }), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }).map(({ offset, bytes }) => ({ offset, bytes: [...bytes] })),
    // Table entries: refcount table, refcount block, L1, L2 (first entries of each).
    fc
      .record({ table: fc.constantFrom(0x10000, 0x20000, 0x30000, 0x40000), index: fc.nat({ max: 3 }), value: u64 })
      .map(({ table, index, value }) => ({ offset: table + index * 8, bytes: u64be(value) })),
  );

  it('open, map, read, check and conversionSource never throw anything but IcError', async () => {
    const original = pristine();
    await fc.assert(
      fc.asyncProperty(fc.array(fieldWrite, { minLength: 1, maxLength: 4 }), async (writes) => {
        const bytes = original.slice();
        for (const { offset, bytes: patch } of writes) bytes.set(patch.slice(0, Math.max(0, bytes.length - offset)), offset);
        const io = new MemoryIO(bytes, 'fuzzed', { writable: false });
        try {
          const image = (await qcow2Driver.open(io, { inflate })) as Qcow2Image;
          await everything(image);
        } catch (error) {
          if (!isIcError(error)) throw error;
        }
        // Compare as buffers: a deep equality on 400 KB typed arrays is slow.
        expect(Buffer.from(io.snapshot()).equals(Buffer.from(bytes))).toBe(true);
      }),
      { numRuns: 300, seed: 20241122 },
    );
  });

  it('random bytes after a valid magic never crash open', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 0, maxLength: 600 }), async (tail) => {
        const bytes = new Uint8Array(8 + tail.length);
        bytes.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
        bytes.set(tail, 8);
        try {
          await everything((await qcow2Driver.open(new MemoryIO(bytes), { inflate })) as Qcow2Image);
        } catch (error) {
          if (!isIcError(error)) throw error;
        }
      }),
      { numRuns: 300, seed: 7 },
    );
  });
});
