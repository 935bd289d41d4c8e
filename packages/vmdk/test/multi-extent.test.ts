import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { assertCoverage, convertInPlace, IcError, isIcError, mergeQemuMapEntries, MemoryIO, type BlockIO, type Image, type OpenOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuInfo, qemuIo, qemuMap, requireQemu, sha256File, tempDir, type QemuMapEntry } from '@ic/test-utils';
import { MAX_EXTENT_FILES, normalizePath, vmdkDriver } from '../src/index.js';
import { asQemuRows, closeAll, errorCode, exitCode, inflate, mapOf, openVmdk, writeOurRaw } from './helpers.js';

const tmp = tempDir('ic-vmdk-multi-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const GiB = 1024 ** 3;

/** What the ic CLI gives a driver: extent names resolved next to the descriptor, opened read-only. */
function opener(dir: string, log: string[] = []): NonNullable<OpenOptions['openFile']> {
  return async (name: string) => {
    log.push(name);
    return FileIO.open(isAbsolute(name) ? name : join(dir, name));
  };
}

async function openWithExtents(file: string, options: OpenOptions = {}): Promise<Image> {
  return openVmdk(file, { openFile: opener(tmp.dir), ...options });
}

/**
 * qemu's rows with one documented difference folded in: qemu reports the holes of a flat extent file as
 * zero:true + data:true (vmdk says DATA, the file adds ZERO); our map says "zero extent with a host offset",
 * which toQemuMapEntry turns into data:false.
 */
function qemuRowsForFlatHoles(file: string): QemuMapEntry[] {
  return mergeQemuMapEntries(qemuMap(file, 'vmdk').map((row) => (row.zero && row.data ? { ...row, data: false } : row)));
}

/** Our read() of [offset, offset+length) against the same bytes of qemu's raw conversion. */
async function expectSameBytes(image: Image, raw: FileIO, offset: number, length: number): Promise<void> {
  const size = image.info().virtualSize;
  const from = Math.max(0, Math.min(offset, size));
  const to = Math.min(size, from + length);
  const ours = await image.read(from, to - from);
  const theirs = await raw.read(from, to - from);
  expect(Buffer.from(ours).equals(Buffer.from(theirs)), `guest ${from}..${to}`).toBe(true);
}

const SUBFORMATS = ['monolithicFlat', 'twoGbMaxExtentFlat', 'twoGbMaxExtentSparse'] as const;

/** Sizes below and above 2 GiB (the split point of twoGbMaxExtent*), odd ones included. */
const SIZES = [
  { label: '1000 MiB + 512', bytes: 1000 * 1024 * 1024 + 512, extents: 1 },
  { label: '5 GiB', bytes: 5 * GiB, extents: 3 },
];

describe.each(SUBFORMATS)('%s with openFile', (subformat) => {
  it.each(SIZES)('$label: info, map, read and check like qemu-img', async ({ bytes, extents: extentCount }) => {
    const name = `${subformat}-${bytes}`;
    const file = tmp.path(`${name}.vmdk`);
    qemuCreate(file, 'vmdk', bytes, { o: `subformat=${subformat}` });
    const last = bytes - 512;
    const writes = ['write -P 0xab 0 64k', `write -P 0x5a ${last} 512`, 'write -P 0x21 1M 3k'];
    if (bytes > 2 * GiB) {
      writes.push(`write -P 0xcd ${2 * GiB + 65536} 64k`, `write -P 0x11 ${2 * GiB - 4096} 8k`, `write -P 0x77 ${4 * GiB + 12345 * 512} 1536`);
    }
    qemuIo(file, 'vmdk', writes);

    const log: string[] = [];
    const image = await openVmdk(file, { openFile: opener(tmp.dir, log) });
    const qinfo = qemuInfo(file, 'vmdk');
    const info = image.info();
    expect(info.virtualSize).toBe(qinfo['virtual-size']);
    expect(info.virtualSize).toBe(bytes);
    expect(info.clusterSize).toBe(qinfo['cluster-size']);
    expect(info.formatSpecific).toEqual(qinfo['format-specific']);
    expect((info.formatSpecific!.data.extents as unknown[]).length).toBe(subformat === 'monolithicFlat' ? 1 : extentCount);
    expect(log.length).toBe(subformat === 'monolithicFlat' ? 1 : extentCount);

    const extents = await mapOf(image);
    assertCoverage(extents, bytes);
    const qemuRows = subformat.endsWith('Flat') ? qemuRowsForFlatHoles(file) : mergeQemuMapEntries(qemuMap(file, 'vmdk'));
    expect(asQemuRows(extents)).toEqual(qemuRows);

    // read: everything our map calls data, compared whole with qemu's conversion; then windows around every
    // write and every extent boundary, holes included.
    const qemuRawPath = tmp.path(`${name}.qemu.raw`);
    qemuConvert(file, 'vmdk', qemuRawPath, 'raw');
    await writeOurRaw(image, tmp.path(`${name}.ours.raw`));
    expect(qemuCompare(tmp.path(`${name}.ours.raw`), 'raw', qemuRawPath, 'raw').stdout).toContain('Images are identical');
    const raw = await FileIO.open(qemuRawPath);
    try {
      for (const offset of [0, 1 << 20, last - 65536, 2 * GiB - 65536, 2 * GiB + 32768, 4 * GiB - 4096, 4 * GiB + 12345 * 512 - 100]) {
        await expectSameBytes(image, raw, offset, 200 * 1024);
      }
    } finally {
      await raw.close();
    }

    const report = await image.check!();
    expect(exitCode(report)).toBe(qemuCheck(file, 'vmdk').code);
    expect(report.corruptions).toBe(0);
    await image.close();
  });

  it('in-place conversion refuses with one line and leaves every file byte-identical; without openFile map/read/check are UNSUPPORTED', async () => {
    const file = tmp.path(`${subformat}-blocked.vmdk`);
    qemuCreate(file, 'vmdk', 3 * GiB, { o: `subformat=${subformat}` });
    qemuIo(file, 'vmdk', ['write -P 0x42 0 64k']);
    const before = sha256File(file);
    const extentNames = (qemuInfo(file, 'vmdk')['format-specific']!.data.extents as { filename: string }[]).map((e) => e.filename);
    const extentSizes = extentNames.map((name) => statSync(name).size);

    const image = await openWithExtents(file);
    const source = await image.conversionSource!();
    expect(source.blockers).toEqual([
      {
        feature: 'external extent files',
        reason: `this VMDK keeps its data in other files (createType ${subformat}); in-place conversion works on single-file images only`,
      },
    ]);
    await image.close();

    // Through the engine, as `ic convert-inplace` runs it (the CLI closes the extent files it handed out).
    const io = await FileIO.open(file, { writable: true, lock: true });
    const handedOut: BlockIO[] = [];
    const openFile = async (name: string): Promise<BlockIO> => {
      const extent = await opener(tmp.dir)(name);
      handedOut.push(extent);
      return extent;
    };
    try {
      let message = '';
      try {
        await convertInPlace({ io, source: vmdkDriver, target: vmdkDriver, openOptions: { openFile, inflate } });
      } catch (error) {
        expect(isIcError(error) && error.code).toBe('UNSUPPORTED');
        message = (error as Error).message;
      }
      expect(message).toContain('this VMDK keeps its data in other files');
      expect(message).not.toContain('\n');
    } finally {
      await io.close();
      for (const extent of handedOut) await extent.close();
    }
    expect(handedOut.length).toBe(subformat === 'monolithicFlat' ? 1 : 2);
    expect(sha256File(file)).toBe(before);
    expect(extentNames.map((name) => statSync(name).size)).toEqual(extentSizes);

    const plain = await openVmdk(file);
    for (const attempt of [() => mapOf(plain), () => plain.read(0, 512), () => plain.check!()]) {
      let error: unknown;
      try {
        await attempt();
      } catch (caught) {
        error = caught;
      }
      expect(isIcError(error) && error.code).toBe('UNSUPPORTED');
      expect((error as Error).message).toContain(`"${subformat}-blocked-`);
    }
  });
});

describe('twoGbMaxExtentSparse with a parent', () => {
  it('reads unallocated grains of every extent from the parent (guest offsets), like qemu-img convert', async () => {
    const base = tmp.path('parent.vmdk');
    const child = tmp.path('child.vmdk');
    qemuCreate(base, 'vmdk', 3 * GiB);
    qemuIo(base, 'vmdk', ['write -P 0x61 0 128k', `write -P 0x62 ${2 * GiB + 4096} 64k`]);
    qemuCreate(child, 'vmdk', 3 * GiB, { o: 'subformat=twoGbMaxExtentSparse', backing: 'parent.vmdk', backingFormat: 'vmdk', cwd: tmp.dir });
    qemuIo(child, 'vmdk', ['write -P 0x63 64k 64k']);
    const parent = await openVmdk(base);
    const image = await openWithExtents(child, { backing: parent });
    expect(image.info().backing?.name).toBe('parent.vmdk');
    const qemuRawPath = tmp.path('child.qemu.raw');
    qemuConvert(child, 'vmdk', qemuRawPath, 'raw');
    const raw = await FileIO.open(qemuRawPath);
    try {
      for (const offset of [0, 2 * GiB - 8192, 2 * GiB + 4096]) await expectSameBytes(image, raw, offset, 192 * 1024);
    } finally {
      await raw.close();
    }
    await image.close();
  });
});

describe('a hand-written descriptor mixing a compressed sparse extent and a flat one', () => {
  it('info (qemu calls it streamOptimized, no top-level cluster-size), map and read like qemu', async () => {
    qemuCreate(tmp.path('mixso.vmdk'), 'vmdk', '64M', { o: 'subformat=streamOptimized' });
    qemuIo(tmp.path('mixso.vmdk'), 'vmdk', ['write -P 1 0 64k', 'write -P 2 1M 128k']);
    qemuCreate(tmp.path('mixfl.vmdk'), 'vmdk', '1M', { o: 'subformat=monolithicFlat' });
    qemuIo(tmp.path('mixfl.vmdk'), 'vmdk', ['write -P 3 4k 4k']);
    const file = tmp.path('mix.vmdk');
    writeFileSync(file, descriptorWith(['RW 131072 SPARSE "mixso.vmdk"', 'RW 2048 FLAT "mixfl-flat.vmdk" 0']));
    const image = await openWithExtents(file);
    const info = image.info();
    const qinfo = qemuInfo(file, 'vmdk');
    expect(info.formatSpecific).toEqual(qinfo['format-specific']);
    expect(info.formatSpecific!.data['create-type']).toBe('streamOptimized');
    expect(info.clusterSize).toBeUndefined();
    expect(qinfo['cluster-size']).toBeUndefined();
    const extents = await mapOf(image);
    expect(extents.some((extent) => extent.kind === 'compressed')).toBe(true);
    expect(asQemuRows(extents)).toEqual(qemuRowsForFlatHoles(file));
    const qemuRawPath = tmp.path('mix.qemu.raw');
    qemuConvert(file, 'vmdk', qemuRawPath, 'raw');
    const raw = await FileIO.open(qemuRawPath);
    try {
      await expectSameBytes(image, raw, 0, 68157440);
    } finally {
      await raw.close();
    }
    expect(exitCode(await image.check!())).toBe(qemuCheck(file, 'vmdk').code);
    await image.close();
  });
});

/** A descriptor file as qemu writes it, with the given extent lines. */
function descriptorWith(lines: string[], createType = 'twoGbMaxExtentSparse'): string {
  return `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="${createType}"\n\n# Extent description\n${lines.join('\n')}\n\n#DDB\nddb.adapterType = "ide"\n`;
}

describe('hostile or broken descriptors with openFile', () => {
  it('a descriptor naming itself, or one file twice (under any spelling), is CORRUPT before a file is opened', async () => {
    qemuCreate(tmp.path('h.vmdk'), 'vmdk', '4M', { o: 'subformat=twoGbMaxExtentSparse' });
    const cases: [string, string[]][] = [
      ['self.vmdk', ['RW 8192 FLAT "self.vmdk" 0']],
      ['self2.vmdk', [`RW 8192 FLAT "${tmp.path('self2.vmdk')}" 0`]],
      ['twice.vmdk', ['RW 8192 SPARSE "h-s001.vmdk"', 'RW 8192 SPARSE "./h-s001.vmdk"']],
      ['twice2.vmdk', ['RW 8192 SPARSE "h-s001.vmdk"', 'RW 8192 FLAT "sub/../h-s001.vmdk" 0']],
    ];
    for (const [name, lines] of cases) {
      writeFileSync(tmp.path(name), descriptorWith(lines));
      const log: string[] = [];
      expect(await errorCode(() => openVmdk(tmp.path(name), { openFile: opener(tmp.dir, log) })), name).toBe('CORRUPT');
      expect(log, name).toEqual([]);
    }
  });

  it('a symlink to an extent already named is caught by the file identity', async () => {
    symlinkSync(tmp.path('h-s001.vmdk'), tmp.path('link-s001.vmdk'));
    writeFileSync(tmp.path('link.vmdk'), descriptorWith(['RW 8192 SPARSE "h-s001.vmdk"', 'RW 8192 SPARSE "link-s001.vmdk"']));
    let message = '';
    try {
      await openWithExtents(tmp.path('link.vmdk'));
    } catch (error) {
      expect(isIcError(error) && error.code).toBe('CORRUPT');
      message = (error as Error).message;
    }
    expect(message).toContain('name the same extent file');
  });

  it('more than MAX_EXTENT_FILES extents is LIMIT, before anything is opened', async () => {
    const lines = Array.from({ length: MAX_EXTENT_FILES + 1 }, (_, i) => `RW 8 FLAT "x${i}.raw" 0`);
    writeFileSync(tmp.path('many.vmdk'), descriptorWith(lines, 'twoGbMaxExtentFlat'));
    const log: string[] = [];
    expect(await errorCode(() => openVmdk(tmp.path('many.vmdk'), { openFile: opener(tmp.dir, log) }))).toBe('LIMIT');
    expect(log).toEqual([]);
    // Without openFile the descriptor is still described.
    expect((await openVmdk(tmp.path('many.vmdk'))).info().virtualSize).toBe((MAX_EXTENT_FILES + 1) * 8 * 512);
  });

  it('a sparse extent whose capacity differs from its line is CORRUPT and names the file', async () => {
    writeFileSync(tmp.path('cap.vmdk'), descriptorWith(['RW 4096 SPARSE "h-s001.vmdk"']));
    let error: unknown;
    try {
      await openWithExtents(tmp.path('cap.vmdk'));
    } catch (caught) {
      error = caught;
    }
    expect(isIcError(error) && error.code).toBe('CORRUPT');
    expect((error as Error).message).toMatch(/^vmdk: extent file "h-s001.vmdk" \(descriptor line 8\): capacity 8192 sectors differs/);
  });

  it('a SPARSE line naming a file that is not a sparse extent, a missing file, a refused name', async () => {
    writeFileSync(tmp.path('plain.raw'), new Uint8Array(65536));
    writeFileSync(tmp.path('notsparse.vmdk'), descriptorWith(['RW 128 SPARSE "plain.raw"']));
    expect(await errorCode(() => openWithExtents(tmp.path('notsparse.vmdk')))).toBe('CORRUPT');
    writeFileSync(tmp.path('missing.vmdk'), descriptorWith(['RW 128 FLAT "nowhere.raw" 0']));
    expect(await errorCode(() => openWithExtents(tmp.path('missing.vmdk')))).toBe('NOT_FOUND');
    const refuse: OpenOptions['openFile'] = async (name) => {
      throw new IcError('EXTERNAL_REF', `'${name}' refused`);
    };
    expect(await errorCode(() => openVmdk(tmp.path('missing.vmdk'), { openFile: refuse }))).toBe('EXTERNAL_REF');
  });

  it('a truncated sparse extent, a hostile grain directory: typed errors naming the extent', async () => {
    qemuCreate(tmp.path('tr.vmdk'), 'vmdk', '4M', { o: 'subformat=twoGbMaxExtentSparse' });
    truncateSync(tmp.path('tr-s001.vmdk'), 4096);
    let error: unknown;
    try {
      await openWithExtents(tmp.path('tr.vmdk'));
    } catch (caught) {
      error = caught;
    }
    expect(isIcError(error) && error.code).toBe('CORRUPT');
    expect((error as Error).message).toContain('"tr-s001.vmdk"');
    expect(() => qemuInfo(tmp.path('tr.vmdk'), 'vmdk')).toThrow(); // qemu refuses it too

    // A grain directory entry pointing its table far past the end of the second extent file.
    qemuCreate(tmp.path('hg.vmdk'), 'vmdk', 3 * GiB, { o: 'subformat=twoGbMaxExtentSparse' });
    const extentPath = tmp.path('hg-s002.vmdk');
    const bytes = new Uint8Array(readFileSync(extentPath));
    const view = new DataView(bytes.buffer);
    const gdSector = Number(view.getBigUint64(56, true));
    view.setUint32(gdSector * 512, 0xfffff000, true);
    writeFileSync(extentPath, bytes);
    error = undefined;
    try {
      await openWithExtents(tmp.path('hg.vmdk'));
    } catch (caught) {
      error = caught;
    }
    expect(isIcError(error) && error.code).toBe('CORRUPT');
    expect((error as Error).message).toMatch(/^vmdk: extent file "hg-s002.vmdk" \(descriptor line 9\): GD entry 0 points its grain table at sector 4294963200, past the end of the file/);
  });

  it('a flat extent whose data offset lies past the end of its file: check fails like qemu-img check', async () => {
    writeFileSync(tmp.path('short-flat.raw'), new Uint8Array(1 << 20).fill(7));
    writeFileSync(tmp.path('far.vmdk'), descriptorWith(['RW 2048 FLAT "short-flat.raw" 4096'], 'monolithicFlat'));
    const image = await openWithExtents(tmp.path('far.vmdk'));
    const report = await image.check!();
    expect(report.corruptions).toBe(1);
    expect(exitCode(report)).toBe(qemuCheck(tmp.path('far.vmdk'), 'vmdk').code);
    expect(exitCode(report)).toBe(1);
    // Everything past the end of the file reads as zeros, and maps as a zero run that keeps its offset.
    expect(asQemuRows(await mapOf(image))).toEqual(qemuRowsForFlatHoles(tmp.path('far.vmdk')));
    expect((await image.read(0, 4096)).every((byte) => byte === 0)).toBe(true);
    await image.close();
  });

  it('seSparse extents are not read: the image still describes itself, map says why', async () => {
    writeFileSync(tmp.path('se.vmdk'), descriptorWith(['RW 8192 SESPARSE "se-sesparse.vmdk"'], 'seSparse'));
    const image = await openWithExtents(tmp.path('se.vmdk'));
    expect(image.info().virtualSize).toBe(8192 * 512);
    let message = '';
    try {
      await mapOf(image);
    } catch (error) {
      expect(isIcError(error) && error.code).toBe('UNSUPPORTED');
      message = (error as Error).message;
    }
    expect(message).toContain('seSparse extents');
  });

  it('one BlockIO handed out twice is refused; names are compared after folding . and ..', async () => {
    const shared = new MemoryIO(new Uint8Array(4096), 'shared.raw');
    const descriptor = new MemoryIO(new TextEncoder().encode(descriptorWith(['RW 8 FLAT "a.raw" 0', 'RW 8 FLAT "b.raw" 0'], 'twoGbMaxExtentFlat')), '/d/desc.vmdk');
    const openFile = async (): Promise<BlockIO> => shared;
    expect(await errorCode(() => vmdkDriver.open(descriptor, { openFile }))).toBe('CORRUPT');
    expect(normalizePath('/a/./b//../c.vmdk')).toBe('/a/c.vmdk');
    expect(normalizePath('a/../../b')).toBe('../b');
    expect(normalizePath('/../x')).toBe('/x');
  });

  it('extents in memory: flat extents at an offset, data across two files, and a read spanning them', async () => {
    const first = new Uint8Array(8192).fill(1);
    const second = new Uint8Array(4096).fill(2);
    const files = new Map<string, MemoryIO>([
      ['a.raw', new MemoryIO(first, 'a.raw')],
      ['b.raw', new MemoryIO(second, 'b.raw')],
    ]);
    const text = descriptorWith(['RW 8 FLAT "a.raw" 8', 'RW 8 FLAT "b.raw" 0'], 'twoGbMaxExtentFlat');
    const image = await vmdkDriver.open(new MemoryIO(new TextEncoder().encode(text), 'desc.vmdk'), { openFile: async (name) => files.get(name)! });
    expect(image.info().virtualSize).toBe(8192);
    expect(await mapOf(image)).toEqual([
      { kind: 'data', guestOffset: 0, length: 4096, hostOffset: 4096 },
      { kind: 'data', guestOffset: 4096, length: 4096, hostOffset: 0 },
    ]);
    const bytes = await image.read(4000, 200);
    expect([...bytes.subarray(0, 96)].every((b) => b === 1)).toBe(true);
    expect([...bytes.subarray(96)].every((b) => b === 2)).toBe(true);
    expect(await errorCode(() => image.read(8000, 400))).toBe('OUT_OF_BOUNDS');
  });
});
