/** L1/L2 entries and refcount entries on annotated byte fixtures. */
import { describe, expect, it } from 'vitest';
import { decodeL1Entry, decodeL2Entry, getRefcountEntry, refcountGeometry, setRefcountEntry, subclusterType, tableGeometry } from '../src/index.js';
import { u64be } from './helpers.js';

const view = (...entries: (bigint | number)[]) => new DataView(Uint8Array.from(entries.flatMap((entry) => u64be(entry))).buffer);
const standard = tableGeometry(16);
const extended = tableGeometry(16, { extendedL2: true });

describe('L1 entries', () => {
  it('COPIED + L2 offset', () => {
    expect(decodeL1Entry(view(0x8000000000040000n), 0)).toEqual({ l2Offset: 0x40000, copied: true, reservedBitsSet: false, empty: false });
  });
  it('reserved bits (0..8 and 56..62)', () => {
    expect(decodeL1Entry(view(0x8000000000040001n), 0).reservedBitsSet).toBe(true);
    expect(decodeL1Entry(view(0x0100000000040000n), 0).reservedBitsSet).toBe(true);
  });
  it('empty entry', () => {
    expect(decodeL1Entry(view(0), 0)).toMatchObject({ l2Offset: 0, empty: true });
  });
});

describe('L2 entries (the values qemu 7.2 writes)', () => {
  it('0x8000000000050000: data at 0x50000 with COPIED', () => {
    expect(decodeL2Entry(view(0x8000000000050000n), 0, standard)).toMatchObject({ type: 'normal', hostOffset: 0x50000, copied: true, reservedBitsSet: false });
  });
  it('0x0000000000000001: zero cluster without host cluster (write -z, discard)', () => {
    expect(decodeL2Entry(view(1), 0, standard)).toMatchObject({ type: 'zero-plain', hostOffset: 0 });
  });
  it('0x8000000000050001: zero cluster that still owns 0x50000', () => {
    expect(decodeL2Entry(view(0x8000000000050001n), 0, standard)).toMatchObject({ type: 'zero-alloc', hostOffset: 0x50000, copied: true });
  });
  it('0: unallocated', () => {
    expect(decodeL2Entry(view(0), 0, standard).type).toBe('unallocated');
  });
  it('reserved bits of a standard descriptor', () => {
    expect(decodeL2Entry(view(0x8000000000050002n), 0, standard).reservedBitsSet).toBe(true);
    expect(decodeL2Entry(view(0x8100000000050000n), 0, standard).reservedBitsSet).toBe(true);
  });
  it('compressed descriptors at 64 KiB clusters (x = 54): two streams packed into one host cluster', () => {
    // 0x4000000000050000: offset 0x50000, 0 additional sectors -> 512 bytes to read
    expect(decodeL2Entry(view(0x4000000000050000n), 0, standard)).toMatchObject({ type: 'compressed', compressedOffset: 0x50000, compressedLength: 512 });
    // 0x400000000005004f: offset 0x5004f, 0 additional sectors -> up to the sector end (512 - 0x4f)
    expect(decodeL2Entry(view(0x400000000005004fn), 0, standard)).toMatchObject({ type: 'compressed', compressedOffset: 0x5004f, compressedLength: 512 - 0x4f });
    // 3 additional sectors live in bits 54..61
    expect(decodeL2Entry(view(0x40c0000000050000n), 0, standard)).toMatchObject({ compressedOffset: 0x50000, compressedLength: 4 * 512 });
  });
  it('compressed descriptors at 2 MiB clusters (x = 49)', () => {
    const g = tableGeometry(21);
    const entry = (1n << 62n) | (5n << 49n) | 0x200123n;
    expect(decodeL2Entry(view(entry), 0, g)).toMatchObject({ compressedOffset: 0x200123, compressedLength: 6 * 512 - 0x123 });
  });
  it('a data file makes offset 0 with COPIED a real cluster', () => {
    expect(decodeL2Entry(view(0x8000000000000000n), 0, tableGeometry(16, { hasDataFile: true })).type).toBe('normal');
    expect(decodeL2Entry(view(0x8000000000000000n), 0, standard).type).toBe('unallocated');
  });
});

describe('extended L2 entries (16 bytes: descriptor + subcluster bitmap)', () => {
  it('a 4 KiB write: 8000000000050000 / 0000000000000003', () => {
    const entry = decodeL2Entry(view(0x8000000000050000n, 3), 0, extended);
    expect(entry).toMatchObject({ type: 'normal', allocatedBitmap: 3, zeroBitmap: 0 });
    expect(subclusterType(entry, 0, extended)).toBe('normal');
    expect(subclusterType(entry, 1, extended)).toBe('normal');
    expect(subclusterType(entry, 2, extended)).toBe('unallocated-alloc');
    expect(extended.subclusterSize).toBe(2048);
    expect(extended.l2Entries).toBe(4096);
  });
  it('zero bits (32..63) and invalid combinations', () => {
    const zeroAlloc = decodeL2Entry(view(0x8000000000050000n, 1n << 36n), 0, extended);
    expect(subclusterType(zeroAlloc, 4, extended)).toBe('zero-alloc');
    const zeroPlain = decodeL2Entry(view(0, 0xffffffff00000000n), 0, extended);
    expect(subclusterType(zeroPlain, 31, extended)).toBe('zero-plain');
    const both = decodeL2Entry(view(0x8000000000050000n, (1n << 32n) | 1n), 0, extended);
    expect(subclusterType(both, 0, extended)).toBe('invalid');
    const allocatedWithoutCluster = decodeL2Entry(view(0, 1), 0, extended);
    expect(subclusterType(allocatedWithoutCluster, 0, extended)).toBe('invalid');
  });
});

describe('refcount entries of every width', () => {
  it('16-bit big-endian entries: 0001 x 4', () => {
    const block = Uint8Array.from([0, 1, 0, 1, 0, 1, 0, 1]);
    expect([0, 1, 2, 3].map((i) => getRefcountEntry(block, i, 4))).toEqual([1, 1, 1, 1]);
  });
  it('1-bit entries are packed LSB first (qemu: 0xff x 64 then 0x07 for 515 clusters)', () => {
    const block = new Uint8Array(66).fill(0xff, 0, 64);
    block[64] = 0x07;
    expect(getRefcountEntry(block, 511, 0)).toBe(1);
    expect(getRefcountEntry(block, 514, 0)).toBe(1);
    expect(getRefcountEntry(block, 515, 0)).toBe(0);
  });
  it('2- and 4-bit entries, LSB first', () => {
    expect(getRefcountEntry(Uint8Array.from([0b11100100]), 0, 1)).toBe(0);
    expect(getRefcountEntry(Uint8Array.from([0b11100100]), 1, 1)).toBe(1);
    expect(getRefcountEntry(Uint8Array.from([0b11100100]), 3, 1)).toBe(3);
    expect(getRefcountEntry(Uint8Array.from([0x5a]), 0, 2)).toBe(0xa);
    expect(getRefcountEntry(Uint8Array.from([0x5a]), 1, 2)).toBe(0x5);
  });
  it('round-trips every width at every position', () => {
    for (let order = 0; order <= 6; order++) {
      const geometry = refcountGeometry(9, order);
      const block = new Uint8Array(512);
      const max = Math.min(geometry.maxValue, 2 ** 40);
      for (let i = 0; i < geometry.entriesPerBlock; i++) setRefcountEntry(block, i, order, (i * 7919) % (max + 1));
      for (let i = 0; i < geometry.entriesPerBlock; i++) expect(getRefcountEntry(block, i, order)).toBe((i * 7919) % (max + 1));
    }
  });
  it('geometry: 64 KiB clusters with 16-bit refcounts cover 32768 clusters per block', () => {
    expect(refcountGeometry(16, 4)).toMatchObject({ bits: 16, entriesPerBlock: 32768, maxValue: 65535 });
    expect(refcountGeometry(9, 0).entriesPerBlock).toBe(4096);
    expect(refcountGeometry(9, 6).entriesPerBlock).toBe(64);
  });
});
