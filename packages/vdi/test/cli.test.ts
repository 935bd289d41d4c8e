/** Through the real `ic`: info and map JSON as qemu-img prints them, check's report and exit statuses. */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { icCli, qemuCreate, qemuIo, requireBuiltIc, requireQemu, run, tempDir } from '@ic/test-utils';
import { pokeU32 } from './helpers.js';

const MiB = 1024 ** 2;

describe('ic info, map and check on VDI images, next to qemu-img', () => {
  const tmp = tempDir('ic-vdi-cli-');
  beforeAll(() => {
    requireQemu();
    requireBuiltIc();
  });
  afterAll(() => tmp.cleanup());

  for (const [label, o] of [
    ['dynamic', undefined],
    ['static', 'static=on'],
  ] as const) {
    it(`${label}: info and map JSON equal qemu-img's (probed, no -f)`, () => {
      const path = tmp.path(`${label}.vdi`);
      qemuCreate(path, 'vdi', 32 * MiB + 512, o ? { o } : {});
      qemuIo(path, 'vdi', ['write -P 0x11 0 4k', 'write -P 0x22 9M 1M', 'write -z 20M 64k', `write -P 0x33 ${32 * MiB} 512`]);
      const info = icCli(['info', '--output=json', path]);
      expect(info.status, info.stderr).toBe(0);
      expect(info.stderr).toBe('');
      expect(JSON.parse(info.stdout)).toEqual(JSON.parse(run('qemu-img', ['info', '--output=json', path]).stdout));
      const map = icCli(['map', '--output=json', path]);
      expect(map.status, map.stderr).toBe(0);
      const theirs = JSON.parse(run('qemu-img', ['map', '-f', 'vdi', '--output=json', path]).stdout) as Record<string, unknown>[];
      // Static images: qemu flags file holes "data": true as well as "zero" (see helpers.theirQemuMap).
      expect(JSON.parse(map.stdout)).toEqual(theirs.map((row) => (row['zero'] && row['data'] ? { ...row, data: false } : row)));
      if (label === 'dynamic') expect(map.stdout).toBe(run('qemu-img', ['map', '-f', 'vdi', '--output=json', path]).stdout);
    });
  }

  it('check: exit 0 clean, 2 with corruptions, the same JSON as qemu-img', () => {
    const path = tmp.path('check.vdi');
    qemuCreate(path, 'vdi', 16 * MiB);
    qemuIo(path, 'vdi', ['write -P 0x11 0 4k', 'write -P 0x22 3M 4k']);
    for (const damaged of [false, true]) {
      if (damaged) pokeU32(path, 0x200 + 4 * 7, 0);
      const ours = icCli(['check', '--output=json', path]);
      const theirs = run('qemu-img', ['check', '-f', 'vdi', '--output=json', path]);
      expect(ours.status).toBe(theirs.code);
      expect(ours.status).toBe(damaged ? 2 : 0);
      expect(ours.stdout).toBe(theirs.stdout);
      // qemu prints its ERROR lines on stderr; so does ic.
      expect(ours.stderr).toBe(theirs.stderr);
    }
  });
  it('ic create prints the Formatting line qemu-img create prints', () => {
    for (const options of [[], ['-o', 'static=on']]) {
      for (const dir of ['ours', 'theirs']) mkdirSync(tmp.path(dir), { recursive: true });
      const ours = icCli(['create', '-f', 'vdi', ...options, 'image', '10M'], { cwd: tmp.path('ours') });
      const theirs = run('qemu-img', ['create', '-f', 'vdi', ...options, 'image', '10M'], { cwd: tmp.path('theirs') });
      expect(ours.status, ours.stderr).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout);
    }
  });
});
