/**
 * Features qemu can put into an image: info() mirrors qemu-img info; conversionSource() names each
 * feature no in-place target can keep and lists every metadata range.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync } from 'node:fs';
import { qemuCreate, qemuInfo, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { metadataRangesOf } from '@ic/conformance';
import { asQemuRows, closeAll, errorCode, mapOf, openQcow2, poke, qemuRows, u64be } from './helpers.js';

const tmp = tempDir('ic-qcow2-features-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

const M = 1024 * 1024;

function sh(command: string, args: string[]): void {
  const result = run(command, args, { cwd: tmp.dir });
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr}`);
}

async function blockersOf(file: string): Promise<string[]> {
  const source = await (await openQcow2(file)).conversionSource();
  for (const blocker of source.blockers) {
    expect(blocker.reason).toMatch(/qemu-img/);
    expect(blocker.reason.split('\n')).toHaveLength(1);
  }
  return source.blockers.map((blocker) => blocker.feature);
}

describe('info() like qemu-img info, for feature-laden images', () => {
  it('persistent bitmaps', async () => {
    const file = tmp.path('bitmaps.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    sh('qemu-img', ['bitmap', '--add', file, 'b0']);
    sh('qemu-img', ['bitmap', '--add', '-g', '128k', file, 'b1']);
    sh('qemu-img', ['bitmap', '--add', '--disable', file, 'b2']);
    const info = (await openQcow2(file)).info();
    expect(info.formatSpecific).toEqual(qemuInfo(file, 'qcow2')['format-specific']);
    expect((info.formatSpecific?.data.bitmaps as unknown[]).length).toBe(3);
    expect(await blockersOf(file)).toEqual(['persistent bitmaps']);
  });

  for (const raw of [false, true]) {
    it(`external data file (data_file_raw=${raw ? 'on' : 'off'})`, async () => {
      const file = tmp.path(`datafile-${raw}.qcow2`);
      // An absolute name: qemu-img map resolves it relative to its own working directory.
      sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${tmp.path(`data-${raw}.raw`)}${raw ? ',data_file_raw=on' : ''}`, file, '4M']);
      sh('qemu-io', ['-c', 'write -P 1 64k 64k', file]);
      const image = await openQcow2(file);
      expect(image.info().formatSpecific).toEqual(qemuInfo(file, 'qcow2')['format-specific']);
      expect(asQemuRows(await mapOf(image))).toEqual(qemuRows(file));
      expect(await blockersOf(file)).toEqual(['external data file']);
      expect(await errorCode(() => image.read(0, 512))).toBe('UNSUPPORTED');
      expect(await errorCode(() => openQcow2(file, { untrusted: true }))).toBe('EXTERNAL_REF');
      const report = await image.check();
      expect(report.corruptions + report.leaks).toBe(0);
    });
  }

  it('backing file name and format', async () => {
    const base = tmp.path('base.qcow2');
    const file = tmp.path('overlay.qcow2');
    qemuCreate(base, 'qcow2', 16 * M);
    qemuIo(base, 'qcow2', ['write -P 1 0 1M']);
    qemuCreate(file, 'qcow2', 16 * M, { backing: 'base.qcow2', backingFormat: 'qcow2', cwd: tmp.dir });
    qemuIo(file, 'qcow2', ['write -P 2 512k 64k', 'write -z 768k 64k']);
    const image = await openQcow2(file);
    const info = image.info();
    const theirs = qemuInfo(file, 'qcow2');
    expect(info.backing).toEqual({ name: theirs['backing-filename'], format: theirs['backing-filename-format'] });
    expect(info.formatSpecific).toEqual(theirs['format-specific']);
    // Depth 0: what qemu reads from the backing file is "unallocated" here.
    expect(asQemuRows(await mapOf(image))).toEqual(qemuRows(file));
    expect(await blockersOf(file)).toEqual([]);
    const source = await image.conversionSource();
    expect(source.options.backing).toEqual({ name: 'base.qcow2', format: 'qcow2' });
    // The backing file name lies in the header cluster, which is one range as a whole.
    expect(await metadataRangesOf(source)).toContainEqual({ offset: 0, length: 65536, kind: 'header', role: 'header cluster' });
    expect(await errorCode(() => openQcow2(file, { untrusted: true }))).toBe('EXTERNAL_REF');
    // With the backing image given, unallocated ranges read through it.
    const withBacking = await openQcow2(file, { backing: await openQcow2(base) });
    const bytes = await withBacking.read(0, M);
    expect(bytes[0]).toBe(1);
    expect(bytes[512 * 1024]).toBe(2);
    expect(bytes[768 * 1024]).toBe(0);
    expect((await image.read(0, 512)).every((b) => b === 0)).toBe(true);
  });

  it('a backing file without a recorded format', async () => {
    const file = tmp.path('noformat.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    // Point at a backing name by hand (qemu-img create always records -F today).
    const name = new TextEncoder().encode('some-base.img');
    poke(file, 0x400, [...name]);
    poke(file, 8, u64be(0x400));
    poke(file, 16, [0, 0, 0, name.length]);
    const source = await (await openQcow2(file)).conversionSource();
    expect(source.options.backing).toEqual({ name: 'some-base.img', format: undefined });
    expect(qemuInfo(file, 'qcow2')['backing-filename']).toBe('some-base.img');
  });
});

describe('conversionSource() blockers', () => {
  it('none for a plain image, also when dirty', async () => {
    const file = tmp.path('dirty.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'lazy_refcounts=on' });
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'abort', file]);
    const image = await openQcow2(file);
    expect(image.info().dirty).toBe(true);
    expect(await blockersOf(file)).toEqual([]);
  });

  it('compressed clusters', async () => {
    const raw = tmp.path('c.raw');
    const file = tmp.path('c.qcow2');
    qemuCreate(raw, 'raw', 4 * M);
    qemuIo(raw, 'raw', ['write -P 5 0 128k']);
    sh('qemu-img', ['convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, file]);
    // Compressed clusters are no blocker of the description: the conversion's walk of the map refuses them.
    expect(await blockersOf(file)).toEqual([]);
    const pieces = (await mapOf(await openQcow2(file))).map((extent) => extent.kind);
    expect(pieces).toContain('compressed');
    // Without a decompressor, reading compressed data is refused with a typed error.
    const io = await import('@ic/core/node').then(({ FileIO }) => FileIO.open(file));
    const { qcow2Driver } = await import('../src/index.js');
    const image = await qcow2Driver.open(io, {});
    expect(await errorCode(() => image.read(0, 4096))).toBe('UNSUPPORTED');
    await io.close();
  });

  it('internal snapshots', async () => {
    const file = tmp.path('snap.qcow2');
    qemuCreate(file, 'qcow2', 16 * M);
    qemuIo(file, 'qcow2', ['write -P 1 0 64k']);
    sh('qemu-img', ['snapshot', '-c', 'one', file]);
    const blockers = await blockersOf(file);
    expect(blockers).toEqual(['internal snapshots']);
    const source = await (await openQcow2(file)).conversionSource();
    expect(source.blockers[0]!.reason).toMatch(/qemu-img snapshot -d/);
    expect((await metadataRangesOf(source)).some((range) => range.role === 'snapshot table')).toBe(true);
  });

  it('extended L2', async () => {
    const file = tmp.path('ext.qcow2');
    qemuCreate(file, 'qcow2', 16 * M, { o: 'extended_l2=on' });
    qemuIo(file, 'qcow2', ['write -P 1 0 4k']);
    expect(await blockersOf(file)).toEqual(['extended L2 (subclusters)']);
  });

  it('LUKS encryption', async () => {
    const file = tmp.path('luks.qcow2');
    // qemu times PBKDF iterations with getrusage and sometimes finds the clock too coarse: try again.
    for (let attempt = 0; ; attempt++) {
      const result = run('qemu-img', ['create', '-q', '-f', 'qcow2', '--object', 'secret,id=sec0,data=abc', '-o', 'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10', file, '16M']);
      if (result.code === 0) break;
      if (attempt === 9) throw new Error(result.stderr);
    }
    sh('qemu-io', ['--object', 'secret,id=sec0,data=abc', '--image-opts', '-c', 'write -P 1 0 64k', `driver=qcow2,file.filename=${file},encrypt.key-secret=sec0`]);
    expect(await blockersOf(file)).toEqual(['encryption']);
    const image = await openQcow2(file);
    const extents = await mapOf(image);
    expect(extents[0]).toMatchObject({ kind: 'encrypted', guestOffset: 0, length: 65536 });
    expect(await errorCode(() => image.read(0, 512))).toBe('UNSUPPORTED');
    const source = await image.conversionSource();
    expect(await metadataRangesOf(source)).toContainEqual({ offset: 0x40000, length: 0x1f9000, kind: 'metadata', role: 'encryption header' });
  });

  it('corrupt bit and unknown autoclear bits', async () => {
    const base = tmp.path('plain.qcow2');
    qemuCreate(base, 'qcow2', 16 * M);
    qemuIo(base, 'qcow2', ['write -P 1 0 64k']);
    const corrupt = tmp.path('corrupt.qcow2');
    copyFileSync(base, corrupt);
    poke(corrupt, 72, u64be(2));
    const image = await openQcow2(corrupt);
    expect(image.info().formatSpecific?.data.corrupt).toBe(true);
    expect(image.info().formatSpecific).toEqual(qemuInfo(corrupt, 'qcow2')['format-specific']);
    expect(await blockersOf(corrupt)).toEqual(['corrupt bit']);
    const autoclear = tmp.path('autoclear.qcow2');
    copyFileSync(base, autoclear);
    poke(autoclear, 88, u64be(1n << 7n));
    // The spec: a writer that does not know an autoclear bit clears it and treats what it describes as invalid.
    // No target keeps autoclear bits, so the conversion proceeds.
    expect(await blockersOf(autoclear)).toEqual([]);
  });
});

describe('conversionSource() metadata ranges', () => {
  it('lists header bytes, L1, every L2, refcount table and blocks of a qemu image', async () => {
    const file = tmp.path('ranges.qcow2');
    qemuCreate(file, 'qcow2', 2048 * M);
    qemuIo(file, 'qcow2', ['write -P 1 0 64k', 'write -P 2 1536M 64k']);
    const source = await (await openQcow2(file)).conversionSource();
    expect(source.options).toEqual({ virtualSize: 2048 * M, clusterSize: 65536 });
    expect(source.blockers).toEqual([]);
    expect(await metadataRangesOf(source)).toEqual([
      { offset: 0, length: 0x10000, kind: 'header', role: 'header cluster' },
      { offset: 0x30000, length: 32, kind: 'metadata', role: 'L1 table' },
      { offset: 0x10000, length: 0x10000, kind: 'metadata', role: 'refcount table' },
      { offset: 0x20000, length: 0x10000, kind: 'metadata', role: 'refcount block' },
      { offset: 0x40000, length: 0x10000, kind: 'metadata', role: 'L2 table' },
      { offset: 0x60000, length: 0x10000, kind: 'metadata', role: 'L2 table' },
    ]);
  });
});
