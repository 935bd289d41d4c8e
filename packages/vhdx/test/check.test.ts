import { copyFileSync, statSync, truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectExtents, type CheckReport } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCompare, qemuConvert, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { BAT_ENTRY_SIZE, HEADER_FIELDS, HEADER_OFFSETS, vhdxDriver } from '../src/index.js';
import { patchHeaders, peekBytes, reviveLastLogEntry, pokeBytes, qemuCheckJson, withImage } from './helpers.js';

const MiB = 1024 ** 2;

function exitCode(report: CheckReport): number {
  if (report.checkErrors > 0) return 1;
  if (report.corruptions > 0) return 2;
  if (report.leaks > 0) return 3;
  return 0;
}

/** check() and `qemu-img check` agree on the exit status and the corruption count; check() writes nothing. */
async function expectSameVerdict(path: string): Promise<CheckReport> {
  const before = sha256File(path);
  const report = await withImage(path, (image) => image.check());
  expect(sha256File(path)).toBe(before);
  const qemu = qemuCheckJson(path);
  expect({ code: exitCode(report), corruptions: report.corruptions, leaks: report.leaks }).toEqual({
    code: qemu.code,
    corruptions: qemu.json?.['corruptions'] ?? 0,
    leaks: qemu.json?.['leaks'] ?? 0,
  });
  return report;
}

function u64(value: number | bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  return bytes;
}

describe('check() on VHDX images: qemu-img check verdicts', () => {
  const tmp = tempDir('ic-vhdx-check-');
  /** 64 MiB, 1 MiB blocks [V]: log at 1 MiB, BAT at 2 MiB, metadata at 3 MiB, data from 8 MiB. */
  let base = '';
  const BAT = 2 * MiB;
  const variant = (name: string, damage: (path: string) => void): string => {
    const path = tmp.path(name);
    copyFileSync(base, path);
    damage(path);
    return path;
  };
  beforeAll(() => {
    requireQemu();
    base = tmp.path('base.vhdx');
    qemuCreate(base, 'vhdx', 64 * MiB, { o: 'block_size=1M' });
    qemuIo(base, 'vhdx', ['write -P 1 0 1M', 'write -P 2 5M 4k', 'write -P 3 63M 1M']);
  });
  afterAll(() => tmp.cleanup());

  it('clean', async () => {
    expect((await expectSameVerdict(base)).corruptions).toBe(0);
    expect(peekBytes(base, BAT, 8)[0]! & 7).toBe(6);
  });

  it('truncated: blocks past the end of the file are corruptions (qemu-img check exit 2), and reading refuses them', async () => {
    const path = variant('truncated.vhdx', (p) => truncateSync(p, statSync(p).size - MiB - 4096));
    const report = await expectSameVerdict(path);
    expect(report.corruptions).toBe(2);
    await withImage(path, async (image) => {
      await expect(collectExtents(image.map())).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/end of the file/) });
    });
  });

  it('space nothing references is no leak for qemu: 10 MiB past the end, the 5 MiB gap qemu-img leaves before the data', async () => {
    const path = variant('tail.vhdx', (p) => truncateSync(p, statSync(p).size + 10 * MiB));
    expect(await expectSameVerdict(path)).toMatchObject({ corruptions: 0, leaks: 0 });
  });

  it('a block overlapping the metadata region', async () => {
    const path = variant('overlap.vhdx', (p) => pokeBytes(p, BAT + 10 * BAT_ENTRY_SIZE, u64(3 * MiB + 6)));
    expect((await expectSameVerdict(path)).corruptions).toBe(1);
    await withImage(path, async (image) => {
      await expect(collectExtents(image.map())).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/overlaps the metadata region/) });
    });
  });

  it('a block inside the header section: qemu does not count it; ic refuses to map it', async () => {
    const path = variant('in-header.vhdx', (p) => pokeBytes(p, BAT + 11 * BAT_ENTRY_SIZE, u64(6)));
    expect((await expectSameVerdict(path)).corruptions).toBe(0);
    await withImage(path, async (image) => {
      await expect(collectExtents(image.map())).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/header section/) });
    });
  });

  it('a log that needs replaying: qemu-img refuses read-only opens, ic refuses in one line; qemu-img check -r all replays it', async () => {
    const path = variant('dirty-log.vhdx', reviveLastLogEntry);
    const info = run('qemu-img', ['info', '-f', 'vhdx', path]);
    expect(info.code).toBe(1);
    expect(info.stderr).toMatch(/contains a log that needs to be replayed/);
    expect(qemuCheckJson(path).code).toBe(1);
    const before = sha256File(path);
    const io = await FileIO.open(path);
    await expect(vhdxDriver.open(io)).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringMatching(/log that needs to be replayed/) });
    await io.close();
    expect(sha256File(path)).toBe(before);
    // qemu replays it on a read-write open (check -r all reports the replay as one fixed corruption, exit 0);
    // the entry was qemu's first BAT update, so the image goes back to that state. ic then reads what qemu reads.
    const repair = run('qemu-img', ['check', '-r', 'all', '-f', 'vhdx', path]);
    expect([repair.code, repair.stdout.includes('1 corruptions')]).toEqual([0, true]);
    expect((await expectSameVerdict(path)).corruptions).toBe(0);
    const reference = tmp.path('replayed.raw');
    qemuConvert(path, 'vhdx', reference, 'raw');
    await withImage(path, async (image) => {
      expect(Buffer.from(await image.read(0, 64 * MiB)).equals(Buffer.from(peekBytes(reference, 0, 64 * MiB)))).toBe(true);
    });
    expect(qemuCompare(path, 'vhdx', reference, 'raw').code).toBe(0);
  });

  it('a log GUID with no matching entry is no log to replay (qemu opens it too)', async () => {
    const path = variant('stale-log.vhdx', (p) => patchHeaders(p, HEADER_FIELDS.logGuid.offset, new Uint8Array(16).fill(0x5a)));
    expect(run('qemu-img', ['info', '-f', 'vhdx', path]).code).toBe(0);
    expect((await expectSameVerdict(path)).corruptions).toBe(0);
  });

  it('header damage: one bad CRC falls back to the other header; two bad ones are CORRUPT, like qemu', async () => {
    const one = variant('one-bad-header.vhdx', (p) => pokeBytes(p, HEADER_OFFSETS[1] + 100, new Uint8Array([0xff])));
    expect(run('qemu-img', ['info', '-f', 'vhdx', one]).code).toBe(0);
    expect((await expectSameVerdict(one)).corruptions).toBe(0);
    const both = variant('bad-headers.vhdx', (p) => {
      pokeBytes(p, HEADER_OFFSETS[0] + 100, new Uint8Array([0xff]));
      pokeBytes(p, HEADER_OFFSETS[1] + 100, new Uint8Array([0xff]));
    });
    expect(run('qemu-img', ['info', '-f', 'vhdx', both]).code).toBe(1);
    const io = await FileIO.open(both);
    await expect(vhdxDriver.open(io)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/no valid VHDX header/) });
    await io.close();
  });
});
