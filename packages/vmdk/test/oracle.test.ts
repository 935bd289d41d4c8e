import { metadataRangesOf } from '@ic/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertCoverage, convertInPlace } from '@ic/core';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuInfo, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { asQemuRows, closeAll, errorCode, exitCode, mapOf, openVmdk, pattern, qemuRowsAtDepth0, writeOurRaw } from './helpers.js';
import { streamWithFooter } from './stream-fixture.js';
import { FileIO } from '@ic/core/node';
import { vmdkDriver, type VmdkOpenOptions } from '../src/index.js';

const tmp = tempDir('ic-vmdk-oracle-');
beforeAll(() => requireQemu());
afterAll(async () => {
  await closeAll();
  tmp.cleanup();
});

/** map, info, read and check of our driver against qemu-img for one file. */
async function compareWithQemu(file: string, options: { backed?: boolean } = {}) {
  const image = await openVmdk(file);
  const info = image.info();
  const qinfo = qemuInfo(file, 'vmdk');
  expect(info.virtualSize).toBe(qinfo['virtual-size']);
  expect(info.clusterSize).toBe(qinfo['cluster-size']);
  expect(info.formatSpecific).toEqual(qinfo['format-specific']);
  expect(info.backing?.name).toBe(qinfo['backing-filename']);
  const extents = await mapOf(image);
  assertCoverage(extents, info.virtualSize);
  expect(asQemuRows(extents)).toEqual(qemuRowsAtDepth0(file));
  if (!options.backed) {
    await writeOurRaw(image, `${file}.ours.raw`);
    expect(qemuCompare(file, 'vmdk', `${file}.ours.raw`, 'raw').stdout).toContain('Images are identical');
  }
  const report = await image.check!();
  const q = qemuCheck(file, 'vmdk');
  expect(exitCode(report)).toBe(q.code);
  await image.close();
  return { image, extents, info };
}

describe('monolithicSparse vs qemu-img', () => {
  it('default create, one write', async () => {
    const file = tmp.path('a.vmdk');
    qemuCreate(file, 'vmdk', '1G');
    qemuIo(file, 'vmdk', ['write -P 0xab 0 64k']);
    await compareWithQemu(file);
  });

  it('zeroed_grain=on with write -z, odd size, last grain, unaligned writes', async () => {
    const file = tmp.path('z.vmdk');
    qemuCreate(file, 'vmdk', 100 * 1024 * 1024 + 7 * 512, { o: 'zeroed_grain=on' });
    qemuIo(file, 'vmdk', ['write -P 0x33 0 64k', 'write -z 64k 128k', 'write -z 1M 32k', 'write -P 1 99M 4k', 'write -P 7 1000k 3k', `write -P 9 ${100 * 1024 * 1024} 3584`]);
    const { extents } = await compareWithQemu(file);
    expect(extents.some((e) => e.kind === 'zero')).toBe(true);
  });
});

describe('a VMDK with a VMDK parent', () => {
  it('maps depth 0 like qemu, reports the parent, reads through it', async () => {
    const base = tmp.path('base.vmdk');
    const child = tmp.path('child.vmdk');
    qemuCreate(base, 'vmdk', '64M');
    qemuIo(base, 'vmdk', ['write -P 0x44 0 1M', 'write -P 0x45 40M 64k']);
    qemuCreate(child, 'vmdk', '64M', { backing: 'base.vmdk', backingFormat: 'vmdk', cwd: tmp.dir });
    qemuIo(child, 'vmdk', ['write -P 0x55 64k 64k', 'write -P 0x56 50M 4k']);
    const { info } = await compareWithQemu(child, { backed: true });
    expect(info.backing).toEqual({ name: 'base.vmdk', format: 'vmdk' });
    const parentCid = Number.parseInt(/CID=([0-9a-f]+)/.exec(readFileSync(base, 'latin1'))![1]!, 16);
    expect(info.formatSpecific?.data['parent-cid']).toBe(parentCid);

    const parent = await openVmdk(base);
    const withParent = await openVmdk(child, { backing: parent });
    await writeOurRaw(withParent, tmp.path('child.full.raw'), { everything: true });
    expect(qemuCompare(child, 'vmdk', tmp.path('child.full.raw'), 'raw').stdout).toContain('Images are identical');
  });

  it('refuses to read through a parent whose CID differs, like qemu', async () => {
    const base = tmp.path('base2.vmdk');
    const child = tmp.path('child2.vmdk');
    qemuCreate(base, 'vmdk', '4M');
    qemuCreate(child, 'vmdk', '4M', { backing: 'base2.vmdk', backingFormat: 'vmdk', cwd: tmp.dir });
    qemuIo(base, 'vmdk', ['write -P 1 0 64k']); // the parent's CID changes on its first write
    const parent = await openVmdk(base);
    const image = await openVmdk(child, { backing: parent });
    expect(await errorCode(() => image.read(0, 4096))).toBe('CORRUPT');
    expect(run('qemu-io', ['-f', 'vmdk', '-c', 'read 0 4k', child]).stdout).toMatch(/Invalid argument/);
  });

  it('a child whose parentCID no longer matches: check agrees with qemu-img check (clean), conversion refuses, parentCID is never rewritten', async () => {
    const base = tmp.path('base3.vmdk');
    const child = tmp.path('child3.vmdk');
    qemuCreate(base, 'vmdk', '4M');
    qemuCreate(child, 'vmdk', '4M', { backing: 'base3.vmdk', backingFormat: 'vmdk', cwd: tmp.dir });
    qemuIo(child, 'vmdk', ['write -P 2 1M 64k'], tmp.dir);
    qemuIo(base, 'vmdk', ['write -P 1 0 64k']); // the parent's CID changes: the child's parentCID is stale
    const parentCidOf = (file: string) => /parentCID=([0-9a-f]+)/.exec(readFileSync(file, 'latin1'))![1]!;
    const staleParentCid = parentCidOf(child);
    expect(/\nCID=([0-9a-f]+)/.exec(readFileSync(base, 'latin1'))![1]).not.toBe(staleParentCid);

    // qemu-img check looks at the child only: "No errors were found on the image.", exit 0. So does ic.
    const theirs = qemuCheck(child, 'vmdk');
    expect(theirs.code).toBe(0);
    expect(theirs.text).toContain('No errors were found on the image.');
    const parent = await openVmdk(base);
    const image = await openVmdk(child, { backing: parent });
    const ours = await image.check!();
    expect({ corruptions: ours.corruptions, leaks: ours.leaks, checkErrors: ours.checkErrors }).toEqual({ corruptions: 0, leaks: 0, checkErrors: 0 });
    expect(exitCode(ours)).toBe(theirs.code);

    // Conversion (here to VMDK, which would "fix" parentCID with the parent's new CID) is refused, nothing written.
    const before = readFileSync(child);
    for (const dryRun of [true, false]) {
      const io = await FileIO.open(child, { writable: true });
      try {
        const error = await convertInPlace({ io, source: vmdkDriver, target: vmdkDriver, dryRun, openOptions: { backing: parent } }).catch((e: unknown) => e);
        expect(error).toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/parentCID mismatch: the child records parentCID [0-9a-f]+ but its parent's CID is [0-9a-f]+/) });
        expect(String((error as Error).message)).not.toContain('\n');
      } finally {
        await io.close();
      }
      expect(readFileSync(child).equals(before)).toBe(true);
    }

    // The caller may say the change is harmless: then the child is re-linked to the parent as it is now.
    const io = await FileIO.open(child, { writable: true });
    try {
      await convertInPlace({ io, source: vmdkDriver, target: vmdkDriver, openOptions: { backing: parent, acceptParentCidMismatch: true } as VmdkOpenOptions });
    } finally {
      await io.close();
    }
    expect(parentCidOf(child)).not.toBe(staleParentCid);
    expect(run('qemu-io', ['-f', 'vmdk', '-c', 'read -P 1 0 64k', '-c', 'read -P 2 1M 64k', child]).stdout).not.toMatch(/fail|Invalid|mismatch/i);
  });
});

describe('streamOptimized (qemu-img convert -o subformat=streamOptimized)', () => {
  it('info, map (compressed, no offset), read via inflate, check', async () => {
    const source = tmp.path('so-src.vmdk');
    const file = tmp.path('so.vmdk');
    qemuCreate(source, 'vmdk', 33 * 1024 * 1024 + 512);
    qemuIo(source, 'vmdk', ['write -P 0x11 0 64k', 'write -P 0x12 1M 192k', 'write -P 0x13 32M 64k', `write -P 0x14 ${33 * 1024 * 1024} 512`]);
    qemuConvert(source, 'vmdk', file, 'vmdk', 'subformat=streamOptimized');
    const { extents, image } = await compareWithQemu(file);
    expect(extents.some((e) => e.kind === 'compressed')).toBe(true);
    const source2 = await image.conversionSource!();
    expect(source2.blockers.map((b) => b.reason)).toEqual(['streamOptimized VMDK stores deflate-compressed grains; convert it with qemu-img convert']);
  });

  it('read without a decompressor is UNSUPPORTED', async () => {
    const file = tmp.path('so.vmdk');
    const image = await openVmdk(file, { inflate: undefined });
    expect(await errorCode(() => image.read(0, 512))).toBe('UNSUPPORTED');
  });
});

describe('qemu-img check parity on damaged images', () => {
  it('a grain past EOF is a corruption for both', async () => {
    const file = tmp.path('trunc.vmdk');
    qemuCreate(file, 'vmdk', '64M');
    qemuIo(file, 'vmdk', ['write -P 1 0 64k', 'write -P 2 1M 64k']);
    // qemu: first grain at 0x10000*... find the second grain and cut the file there
    const image = await openVmdk(file);
    const data = (await mapOf(image)).filter((e) => e.kind === 'data') as { hostOffset: number }[];
    const last = Math.max(...data.map((e) => e.hostOffset));
    truncateSync(file, last);
    const q = qemuCheck(file, 'vmdk');
    expect(q.code).toBe(1); // qemu counts a corruption, then reports "Check failed"
    expect(q.text).toMatch(/points after EOF/);
    const damaged = await openVmdk(file);
    const report = await damaged.check!();
    expect(report.corruptions).toBe(1);
    expect(exitCode(report)).toBe(1);
    expect(report.messages.join('\n')).toMatch(/after EOF/);
    // A conversion (here a dry run) refuses it.
    const io = await FileIO.open(file);
    expect(await errorCode(() => convertInPlace({ io, source: vmdkDriver, target: vmdkDriver, dryRun: true }))).toBe('CORRUPT');
    await io.close();
  });

  it('primary and redundant tables that disagree are a corruption for us (qemu only reads the primary)', async () => {
    const file = tmp.path('rgd.vmdk');
    qemuCreate(file, 'vmdk', '64M');
    qemuIo(file, 'vmdk', ['write -P 1 0 64k']);
    const bytes = readFileSync(file);
    const rgd = bytes.readUInt32LE(48);
    const rgt = bytes.readUInt32LE(rgd * 512);
    bytes.writeUInt32LE(0, rgt * 512); // redundant GTE 0 forgets the grain
    writeFileSync(file, bytes);
    expect(qemuCheck(file, 'vmdk').code).toBe(0);
    const report = await (await openVmdk(file)).check!();
    expect(report.corruptions).toBe(1);
    expect(report.messages[0]).toMatch(/redundant/);
  });
});

describe('streamOptimized with the grain directory at the end (footer)', () => {
  it('qemu and we read the footer the same way', async () => {
    const virtualSize = 40 * 1024 * 1024;
    const grains = [0, 5, 600].map((index, i) => ({ guestOffset: index * 65536, data: pattern(65536, i + 3) }));
    grains.push({ guestOffset: 7 * 65536, data: new Uint8Array(65536).fill(0x61) });
    const file = tmp.path('footer.vmdk');
    writeFileSync(file, streamWithFooter(virtualSize, grains));
    const expected = new Uint8Array(virtualSize);
    for (const grain of grains) expected.set(grain.data, grain.guestOffset);
    writeFileSync(tmp.path('footer.expected.raw'), expected);
    expect(qemuCompare(file, 'vmdk', tmp.path('footer.expected.raw'), 'raw').stdout).toContain('Images are identical');
    const { image } = await compareWithQemu(file);
    const source = await image.conversionSource!();
    expect((await metadataRangesOf(source)).map((range) => range.role)).toContain('footer');
    expect(source.blockers).toHaveLength(1);
  });

  it('a damaged footer is CORRUPT, like qemu refuses it', async () => {
    const bytes = streamWithFooter(4 * 1024 * 1024, [{ guestOffset: 0, data: pattern(65536, 1) }]);
    bytes[bytes.length - 512 + 12] = 9; // end-of-stream marker type
    const file = tmp.path('badfooter.vmdk');
    writeFileSync(file, bytes);
    expect(run('qemu-img', ['info', '-f', 'vmdk', file]).stderr).toMatch(/Invalid footer/);
    expect(await errorCode(() => openVmdk(file))).toBe('CORRUPT');
  });
});
