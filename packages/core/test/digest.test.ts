import { describe, expect, it } from 'vitest';
import { ByteView, collectExtents, convertInPlace, MemoryIO, type Driver, type Extent } from '../src/index.js';
import { MappingDigest } from '../src/engine/digest.js';
import { makeToyDriver } from './toy-format.js';

const C = 4096;

/** A toy target whose map reports unallocated clusters as zero, as qemu (and so ic) reports VDI's and VHD's empty blocks. */
function zeroReporting(driver: Driver): Driver {
  return {
    ...driver,
    open: async (io, options) => {
      const image = await driver.open(io, options);
      return {
        ...image,
        map: async function* () {
          for (const extent of await collectExtents(image.map())) yield extent.kind === 'unallocated' ? { kind: 'zero' as const, guestOffset: extent.guestOffset, length: extent.length } : extent;
        },
      };
    },
  };
}

describe('map digest', () => {
  it('without a backing file, zero without a host range and unallocated are one kind; with one they differ', () => {
    const digestOf = (extents: Extent[], zeroIsUnallocated: boolean) => {
      const digest = new MappingDigest(false, zeroIsUnallocated);
      for (const extent of extents) digest.push(extent);
      return digest.value();
    };
    const planned: Extent[] = [
      { kind: 'data', guestOffset: 0, length: C, hostOffset: C },
      { kind: 'unallocated', guestOffset: C, length: 2 * C },
    ];
    const reported: Extent[] = [
      { kind: 'data', guestOffset: 0, length: C, hostOffset: C },
      { kind: 'zero', guestOffset: C, length: C },
      { kind: 'unallocated', guestOffset: 2 * C, length: C },
    ];
    expect(digestOf(reported, true)).toBe(digestOf(planned, true));
    expect(digestOf(reported, false)).not.toBe(digestOf(planned, false));
    // A zero extent that names host bytes stays a zero extent.
    expect(digestOf([planned[0]!, { kind: 'zero', guestOffset: C, length: 2 * C, hostOffset: 2 * C }], true)).not.toBe(digestOf(planned, true));
  });

  it('a conversion into a target that maps empty clusters as zero verifies', async () => {
    const toyA = makeToyDriver('toya', 'TOYA', 1);
    const toyZ = zeroReporting(makeToyDriver('toyz', 'TOYZ', 1));
    // toy A: header in cluster 0, table in cluster 1, guest 0 and 2 in host clusters 2 and 3, guest 1 and 3 empty.
    const file = new Uint8Array(4 * C);
    const header = new ByteView(file.subarray(0, 28));
    header.bytes.set(new TextEncoder().encode('TOYA'), 0);
    header.setU32le(4, C);
    header.setU64le(8, 4 * C);
    header.setU64le(16, C);
    header.setU32le(24, 1);
    const table = new ByteView(file.subarray(C, C + 32));
    table.setU64le(0, 2 * C);
    table.setU64le(16, 3 * C);
    file.fill(0x41, 2 * C, 3 * C);
    file.fill(0x42, 3 * C, 4 * C);
    const io = new MemoryIO(file, 'toya');
    const report = await convertInPlace({ io, source: toyA, target: toyZ });
    expect(report.verified).toBe(true);
    expect(report.clustersRelocated).toBe(0);
    const image = await toyZ.open(io);
    const bytes = await image.read(0, 4 * C);
    expect(bytes.subarray(0, C).every((b) => b === 0x41)).toBe(true);
    expect(bytes.subarray(C, 2 * C).every((b) => b === 0)).toBe(true);
    expect(bytes.subarray(2 * C, 3 * C).every((b) => b === 0x42)).toBe(true);
  });
});
