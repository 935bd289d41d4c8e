import { truncateSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuCreate, qemuIo, requireQemu, tempDir } from '@ic/test-utils';
import { HEADER_FIELDS } from '../src/index.js';
import { pokeU32, qemuCheckJson, withImage } from './helpers.js';

const MiB = 1024 ** 2;
const BMAP = 0x200;

interface Damage {
  name: string;
  /** Patches applied to a fresh 16 MiB image with blocks 0, 3 and 9 written (indexes 0, 1, 2). */
  poke: (path: string) => void;
  corruptions: number;
}

const damages: Damage[] = [
  { name: 'clean', poke: () => {}, corruptions: 0 },
  { name: 'an entry naming an index already used', poke: (p) => pokeU32(p, BMAP + 4 * 5, 0), corruptions: 2 },
  { name: 'an index past blocks_in_image', poke: (p) => pokeU32(p, BMAP + 4 * 7, 5000), corruptions: 1 },
  { name: 'blocks_allocated too small', poke: (p) => pokeU32(p, HEADER_FIELDS.blocksAllocated.offset, 2), corruptions: 1 },
  { name: 'blocks_allocated too large', poke: (p) => pokeU32(p, HEADER_FIELDS.blocksAllocated.offset, 16), corruptions: 1 },
  {
    name: 'several at once: two duplicates, one index too large, the count off',
    poke: (p) => {
      pokeU32(p, BMAP + 4 * 1, 1);
      pokeU32(p, BMAP + 4 * 2, 1);
      pokeU32(p, BMAP + 4 * 15, 0x7fffffff);
    },
    corruptions: 4,
  },
  { name: 'a discarded entry (0xfffffffe) is not allocated', poke: (p) => pokeU32(p, BMAP + 4 * 9, 0xfffffffe), corruptions: 1 },
];

describe('check agrees with qemu-img check (counters and exit status)', () => {
  const tmp = tempDir('ic-vdi-check-');
  beforeAll(() => requireQemu());
  afterAll(() => tmp.cleanup());

  for (const [index, damage] of damages.entries()) {
    it(damage.name, async () => {
      const path = tmp.path(`c${index}.vdi`);
      qemuCreate(path, 'vdi', 16 * MiB);
      qemuIo(path, 'vdi', ['write -P 0x11 0 4k', 'write -P 0x22 3M 4k', 'write -P 0x33 9M 4k']);
      damage.poke(path);
      const qemu = qemuCheckJson(path);
      expect(qemu.code).toBe(damage.corruptions > 0 ? 2 : 0);
      expect(qemu.json['corruptions'] ?? 0).toBe(damage.corruptions);
      await withImage(path, async (image) => {
        const report = await image.check();
        expect(report.corruptions, report.messages.join('; ')).toBe(damage.corruptions);
        expect(report.leaks).toBe(0);
        expect(report.checkErrors).toBe(0);
        expect(report.totalClusters).toBeUndefined();
        expect(report.messages.every((message) => message.startsWith('ERROR: '))).toBe(true);
      });
    });
  }

  it('repair needs the image opened for writing (what it repairs, against qemu, is in repair-qemu.test.ts)', async () => {
    const path = tmp.path('c0.vdi');
    await withImage(path, async (image) => {
      await expect(image.check({ repair: 'all' })).rejects.toMatchObject({ code: 'INVALID', message: expect.stringMatching(/opened for writing/) });
    });
  });

  it('a truncated copy: qemu-img check says clean (it reads zeros), ic counts the missing block and map refuses', async () => {
    const path = tmp.path('truncated.vdi');
    qemuCreate(path, 'vdi', 16 * MiB);
    qemuIo(path, 'vdi', ['write -P 0x11 0 4k', 'write -P 0x22 3M 4k']);
    truncateSync(path, 0x1200 + MiB + 4096);
    expect(qemuCheckJson(path).code).toBe(0);
    await withImage(path, async (image) => {
      const report = await image.check();
      expect(report.corruptions).toBe(1);
      expect(report.messages[0]).toMatch(/past the end of the file/);
      await expect(image.read(3 * MiB, 512)).rejects.toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(/truncated/) });
      // The intact block still reads.
      expect((await image.read(0, 4096)).every((byte) => byte === 0x11)).toBe(true);
    });
  });
});
