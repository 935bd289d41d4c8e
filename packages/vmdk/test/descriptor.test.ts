import { describe, expect, it } from 'vitest';
import { isIcError } from '@ic/core';
import { findCid, formatDescriptor, looksLikeDescriptorStart, parseDescriptor, usableExtents } from '../src/index.js';

/** The embedded descriptor qemu 7.2 writes for `qemu-img create -f vmdk -b base.vmdk -F vmdk child.vmdk 64M`. */
const QEMU_CHILD =
  '# Disk DescriptorFile\n' +
  'version=1\n' +
  'CID=39fb2a66\n' + //                           random, lowercase %x, no padding
  'parentCID=f6c9dcd1\n' + //                     the parent's CID when the child was made
  'createType="monolithicSparse"\n' +
  'parentFileNameHint="base.vmdk"\n' + //         no blank line after it: qemu's template quirk
  '# Extent description\n' +
  'RW 131072 SPARSE "child.vmdk"\n' + //          access, sectors, type, file
  '\n' +
  '# The Disk Data Base\n' +
  '#DDB\n' +
  '\n' +
  'ddb.virtualHWVersion = "4"\n' +
  'ddb.geometry.cylinders = "130"\n' + //        64 MiB / (63 × 16 × 512)
  'ddb.geometry.heads = "16"\n' + //              16 for ide, 255 otherwise
  'ddb.geometry.sectors = "63"\n' +
  'ddb.adapterType = "ide"\n' +
  'ddb.toolsVersion = "2147483647"\n';

describe('descriptor', () => {
  it('parses qemu\'s child descriptor', () => {
    const descriptor = parseDescriptor(QEMU_CHILD);
    expect(descriptor).toEqual({
      version: 1,
      cid: 0x39fb2a66,
      parentCid: 0xf6c9dcd1,
      createType: 'monolithicSparse',
      parentFileNameHint: 'base.vmdk',
      extentLines: [{ access: 'RW', sectors: 131072, type: 'SPARSE', fileName: 'child.vmdk', line: 8 }],
      ddb: {
        'ddb.virtualHWVersion': '4',
        'ddb.geometry.cylinders': '130',
        'ddb.geometry.heads': '16',
        'ddb.geometry.sectors': '63',
        'ddb.adapterType': 'ide',
        'ddb.toolsVersion': '2147483647',
      },
    });
  });

  it('writes it back exactly as qemu does', () => {
    expect(
      formatDescriptor({
        cid: 0x39fb2a66,
        parentCid: 0xf6c9dcd1,
        createType: 'monolithicSparse',
        parentFileNameHint: 'base.vmdk',
        extents: ['RW 131072 SPARSE "child.vmdk"'],
        virtualHWVersion: '4',
        virtualSize: 64 * 1024 * 1024,
        adapterType: 'ide',
        toolsVersion: '2147483647',
      }),
    ).toBe(QEMU_CHILD);
  });

  it('writes 255 heads for non-ide adapters and a blank line without a parent', () => {
    const text = formatDescriptor({
      cid: 0xabc,
      parentCid: 0xffffffff,
      createType: 'monolithicSparse',
      extents: ['RW 2097152 SPARSE "a.vmdk"'],
      virtualHWVersion: '6',
      virtualSize: 1024 ** 3,
      adapterType: 'lsilogic',
      toolsVersion: '2147483647',
    });
    expect(text).toContain('CID=abc\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n# Extent description\n');
    expect(text).toContain('ddb.geometry.cylinders = "130"\nddb.geometry.heads = "255"\n');
  });

  it('finds CIDs the way qemu does (first "CID" substring wins)', () => {
    expect(findCid('parentCID=ffffffff\nCID=1234\n', 'CID')).toBe(0xffffffff);
    expect(findCid('CID= 0x1A\nparentCID=ffffffff', 'CID')).toBe(0x1a);
    expect(findCid('no cid here', 'CID')).toBeUndefined();
  });

  it('requires CID and parentCID', () => {
    for (const text of ['version=1\nparentcid=1\n', 'version=1\nCID=12345678\n']) {
      try {
        parseDescriptor(text);
        expect.unreachable();
      } catch (error) {
        expect(isIcError(error) && error.code).toBe('CORRUPT');
      }
    }
  });

  it('parses extent lines like qemu: RW only, FLAT needs an offset, others must not have one', () => {
    const text = 'CID=1\nparentCID=ffffffff\nRW 100 FLAT "a-flat.vmdk" 0\nRDONLY 50 FLAT "ro.vmdk" 0\nNOACCESS 10 ZERO "z"\nRW 20 VMFS "v.vmdk"\n';
    const extents = usableExtents(parseDescriptor(text));
    expect(extents.map((e) => [e.fileName, e.sectors, e.offset])).toEqual([
      ['a-flat.vmdk', 100, 0],
      ['v.vmdk', 20, undefined],
    ]);
    expect(() => usableExtents(parseDescriptor('CID=1\nparentCID=1\nRW 100 FLAT "a.vmdk"\n'))).toThrowError(/FLAT needs a sector offset/);
    expect(() => usableExtents(parseDescriptor('CID=1\nparentCID=1\nRW 100 SPARSE "a.vmdk" 5\n'))).toThrowError(/only FLAT/);
  });

  it('probes like qemu: version=N first, comments and space-only lines allowed before it', () => {
    const bytes = (text: string) => new TextEncoder().encode(text);
    expect(looksLikeDescriptorStart(bytes('# Disk DescriptorFile\nversion=1\n'))).toBe(true);
    expect(looksLikeDescriptorStart(bytes('#x\n   \r\nversion=3\r\n'))).toBe(true);
    expect(looksLikeDescriptorStart(bytes('\nversion=1\n'))).toBe(false);
    expect(looksLikeDescriptorStart(bytes('version=4\n'))).toBe(false);
    expect(looksLikeDescriptorStart(bytes('hello\nversion=1\n'))).toBe(false);
  });
});
