import { describe, expect, it } from 'vitest';
import { bytesEqual, collectExtents, MemoryIO, convertInPlace } from '@ic/core';
import { vmdkDriver, writeSparseVmdk } from '../src/index.js';
import { errorCode, inflate, pattern } from './helpers.js';
import { streamWithFooter } from './stream-fixture.js';

/** A valid 64 MiB image with two grains (guest 0 and 64 KiB), RGD at 21, GD at 38; returned as bytes. */
async function validImage(): Promise<Uint8Array> {
  const io = new MemoryIO();
  await writeSparseVmdk(io, { capacity: 64 * 1024 * 1024, grains: [{ guestOffset: 0, data: pattern(65536, 1) }, { guestOffset: 65536, data: pattern(65536, 2) }] });
  return io.snapshot();
}

const u32 = (bytes: Uint8Array, offset: number) => new DataView(bytes.buffer, bytes.byteOffset).getUint32(offset, true);
const setU32 = (bytes: Uint8Array, offset: number, value: number) => new DataView(bytes.buffer, bytes.byteOffset).setUint32(offset, value, true);
const setU64 = (bytes: Uint8Array, offset: number, value: bigint) => new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(offset, value, true);
const gdAt = (bytes: Uint8Array) => u32(bytes, 56) * 512;
const rgdAt = (bytes: Uint8Array) => u32(bytes, 48) * 512;

/** Opens `bytes`, then maps, checks and describes them; returns the first IcError code (undefined if all worked). */
async function openAndWalk(bytes: Uint8Array, step: 'open' | 'map' | 'source' | 'read' = 'open'): Promise<string | undefined> {
  const io = new MemoryIO(bytes, 'hostile.vmdk', { writable: false });
  return errorCode(async () => {
    const image = await vmdkDriver.open(io, { inflate });
    if (step === 'map') await collectExtents(image.map());
    // What a conversion sees: the description and a full plan (a dry run).
    if (step === 'source') await convertInPlace({ io, source: vmdkDriver, target: vmdkDriver, dryRun: true, openOptions: { inflate } });
    if (step === 'read') await image.read(0, 65536);
  });
}

describe('hostile sparse extents give typed errors, quickly, without writing', () => {
  const cases: [string, (bytes: Uint8Array) => Uint8Array | void, string, 'open' | 'map' | 'source' | 'read'][] = [
    ['a truncated header', (b) => b.slice(0, 100), 'CORRUPT', 'open'],
    ['capacity 2^62 sectors', (b) => setU64(b, 12, 2n ** 62n), 'LIMIT', 'open'],
    ['capacity needing 64 Mi grain tables', (b) => setU64(b, 12, 2n ** 26n * 512n * 128n), 'LIMIT', 'open'],
    ['capacity needing a GD larger than the file', (b) => setU64(b, 12, 2n ** 40n), 'CORRUPT', 'open'],
    ['numGTEsPerGT 0', (b) => setU32(b, 44, 0), 'CORRUPT', 'open'],
    ['numGTEsPerGT 513', (b) => setU32(b, 44, 513), 'CORRUPT', 'open'],
    ['grainSize 0', (b) => setU64(b, 20, 0n), 'CORRUPT', 'open'],
    ['grainSize 2^40', (b) => setU64(b, 20, 2n ** 40n), 'CORRUPT', 'open'],
    ['version 7', (b) => setU32(b, 4, 7), 'UNSUPPORTED', 'open'],
    ['gdOffset past EOF', (b) => setU64(b, 56, 0xfffffn), 'CORRUPT', 'open'],
    ['gdOffset 2^60', (b) => setU64(b, 56, 2n ** 60n), 'LIMIT', 'open'],
    ['a GD entry past EOF', (b) => setU32(b, gdAt(b), 0x7fffffff), 'CORRUPT', 'open'],
    ['a GD entry inside the descriptor', (b) => setU32(b, gdAt(b), 1), 'CORRUPT', 'open'],
    ['two GD entries naming one table', (b) => setU32(b, gdAt(b) + 4, u32(b, gdAt(b))), 'CORRUPT', 'open'],
    ['a GT overlapping the GD', (b) => setU32(b, gdAt(b), u32(b, 56)), 'CORRUPT', 'open'],
    ['an RGD entry past EOF', (b) => setU32(b, rgdAt(b), 0xffffff), 'CORRUPT', 'open'],
    ['overHead past EOF', (b) => setU64(b, 64, 2n ** 30n), 'CORRUPT', 'open'],
    ['GD_AT_END without a footer', (b) => setU64(b, 56, 2n ** 64n - 1n), 'CORRUPT', 'open'],
    ['a descriptor without CID', (b) => b.fill(0x20, 0x200, 0x2a00), 'CORRUPT', 'open'],
    ['a parentFileNameHint of 5000 characters', (b) => b.set(new TextEncoder().encode(`CID=1\nparentCID=1\nparentFileNameHint="${'a'.repeat(5000)}"\n`), 0x200), 'LIMIT', 'open'],
    ['a CID of 40 bits', (b) => b.set(new TextEncoder().encode('CID=123456789a\nparentCID=ffffffff\n'), 0x200), 'CORRUPT', 'open'],
    ['a GTE inside the descriptor (qemu reads it; a conversion must not)', (b) => setU32(b, u32(b, gdAt(b)) * 512, 5), 'CORRUPT', 'source'],
    ['two GTEs naming one grain', (b) => setU32(b, u32(b, gdAt(b)) * 512 + 4, u32(b, u32(b, gdAt(b)) * 512)), 'CORRUPT', 'source'],
    ['a GTE on the grain directory', (b) => setU32(b, u32(b, gdAt(b)) * 512 + 8, u32(b, 56)), 'CORRUPT', 'source'],
    ['a COWD header', (b) => b.set([0x43, 0x4f, 0x57, 0x44], 0), 'UNSUPPORTED', 'open'],
    ['random bytes', (b) => b.fill(0x99), 'WRONG_FORMAT', 'open'],
    ['garbage at sector 0 before an embedded descriptor (qemu: unsupported image type)', (b) => b.fill(0x99, 0, 512), 'UNSUPPORTED', 'open'],
  ];
  for (const [label, poke, code, step] of cases) {
    it(`${label} → ${code}`, async () => {
      const original = await validImage();
      const bytes = poke(original) ?? original;
      const before = bytes.slice();
      expect(await openAndWalk(bytes, step)).toBe(code);
      expect(bytesEqual(bytes, before)).toBe(true);
    });
  }

  it('untrusted mode refuses a sparse extent that names a parent', async () => {
    const io = new MemoryIO();
    await writeSparseVmdk(io, { capacity: 1 << 20, grains: [], parent: { name: 'base.vmdk', cid: 0x1234 } });
    expect(await errorCode(() => vmdkDriver.open(io, { untrusted: true }))).toBe('EXTERNAL_REF');
    expect((await vmdkDriver.open(io)).info().backing).toEqual({ name: 'base.vmdk', format: 'vmdk' });
  });

  it('the unpoked image walks cleanly (the cases above can fail)', async () => {
    for (const step of ['open', 'map', 'source', 'read'] as const) expect(await openAndWalk(await validImage(), step)).toBeUndefined();
  });

  it('a compressed grain with an absurd marker size is CORRUPT on read and in check', async () => {
    const bytes = streamWithFooter(4 * 1024 * 1024, [{ guestOffset: 0, data: pattern(65536, 1) }]);
    setU32(bytes, 128 * 512 + 8, 0x7fffffff); // first grain marker's size
    expect(await openAndWalk(bytes, 'read')).toBe('CORRUPT');
    const image = await vmdkDriver.open(new MemoryIO(bytes), { inflate });
    expect((await image.check!()).corruptions).toBe(1);
  });

  it('a compressed grain that inflates to garbage is CORRUPT', async () => {
    const bytes = streamWithFooter(4 * 1024 * 1024, [{ guestOffset: 0, data: pattern(65536, 1) }]);
    bytes.fill(0x5a, 128 * 512 + 12, 128 * 512 + 40);
    expect(await openAndWalk(bytes, 'read')).toBe('CORRUPT');
  });
});

describe('hostile descriptor files', () => {
  const text = (s: string) => new TextEncoder().encode(s);
  const descriptorCases: [string, Uint8Array, string][] = [
    ['a descriptor without CID or parentCID', text('# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\nRW 10 FLAT "x" 0\n'), 'CORRUPT'],
    ['a descriptor with CID but no parentCID', text('# Disk DescriptorFile\nversion=1\nCID=12\ncreateType="monolithicFlat"\nRW 10 FLAT "x" 0\n'), 'CORRUPT'],
    ['an unsupported createType', text('version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicSparse"\nRW 10 SPARSE "x"\n'), 'UNSUPPORTED'],
    ['no createType', text('version=1\nCID=1\nparentCID=ffffffff\nRW 10 FLAT "x" 0\n'), 'CORRUPT'],
    ['no usable extent', text('version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRDONLY 10 FLAT "x" 0\n'), 'CORRUPT'],
    ['a FLAT extent without offset', text('version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 10 FLAT "x"\n'), 'CORRUPT'],
    ['extents adding up past 2^53', text(`version=1\nCID=1\nparentCID=ffffffff\ncreateType="twoGbMaxExtentFlat"\n${'RW 9000000000000000 FLAT "x" 0\n'.repeat(3)}`), 'LIMIT'],
    ['a 1 MiB descriptor', (() => { const b = new Uint8Array(1 << 20).fill(0x23); b.set(text('version=1\nCID=1\nparentCID=1\ncreateType="monolithicFlat"\n')); return b; })(), 'LIMIT'],
    ['plain text', text('hello world\n'), 'WRONG_FORMAT'],
  ];
  for (const [label, bytes, code] of descriptorCases) {
    it(`${label} → ${code}`, async () => {
      expect(await openAndWalk(bytes)).toBe(code);
    });
  }

  it('a descriptor with only parentCID takes it as its CID too, like qemu (strstr finds "CID" inside "parentCID")', async () => {
    const image = await vmdkDriver.open(new MemoryIO(text('version=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 10 FLAT "x" 0\n')));
    expect(image.info().formatSpecific!.data.cid).toBe(0xffffffff);
  });

  it('a KDMV header with capacity 0 and a descriptor offset is a descriptor in disguise (qemu reads it that way)', async () => {
    const header = new Uint8Array(512);
    header.set([0x4b, 0x44, 0x4d, 0x56, 1, 0, 0, 0, 3, 0, 0, 0]);
    new DataView(header.buffer).setBigUint64(28, 1n, true); // descriptorOffset 1, capacity 0
    const descriptor = text('# Disk DescriptorFile\nversion=1\nCID=abcdef01\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "mf-flat.vmdk" 0\n');
    const bytes = new Uint8Array(512 + 20 * 512);
    bytes.set(header);
    bytes.set(descriptor, 512);
    const image = await vmdkDriver.open(new MemoryIO(bytes));
    // qemu 7.2 lists this extent twice (and doubles the size); we list it once.
    expect(image.info().formatSpecific!.data).toEqual({
      cid: 0xabcdef01,
      'parent-cid': 0xffffffff,
      'create-type': 'monolithicFlat',
      extents: [{ 'virtual-size': 1048576, filename: 'mf-flat.vmdk', format: 'FLAT' }],
    });
  });

  it('probe never throws and scores descriptors below magic numbers', () => {
    expect(vmdkDriver.probe(new Uint8Array(0), 0)).toBe(0);
    expect(vmdkDriver.probe(text('KDMV'), 4)).toBe(0);
    expect(vmdkDriver.probe(text('version=1\nCID=1\nparentCID=1\ncreateType="monolithicFlat"\n'), 60)).toBe(60);
    expect(vmdkDriver.probe(text('version=1\nno create type here\n'), 30)).toBe(0);
    expect(vmdkDriver.probe(new Uint8Array([0x4b, 0x44, 0x4d, 0x56, 1, 0, 0, 0]), 512)).toBe(100);
    expect(vmdkDriver.probe(new Uint8Array([0x4b, 0x44, 0x4d, 0x56, 9, 0, 0, 0]), 512)).toBe(20);
  });
});
