/** `ic info` and `ic map --output=json` agree with qemu-img for VMDK and raw images (issue 3). */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuConvert, qemuCreate, qemuInfo, qemuIo, qemuMap, requireQemu, tempDir } from '@ic/test-utils';
import { icJson } from './helpers.js';

interface Case {
  name: string;
  format: string;
  make(path: (name: string) => string): string;
}

const cases: Case[] = [
  {
    name: 'VMDK monolithicSparse',
    format: 'vmdk',
    make: (path) => {
      qemuCreate(path('a.vmdk'), 'vmdk', '100M');
      qemuIo(path('a.vmdk'), 'vmdk', ['write -P 0x11 0 64k', 'write -P 0x12 1000 3000', 'write -P 0x13 99M 1M']);
      return path('a.vmdk');
    },
  },
  {
    name: 'VMDK zeroed_grain=on with zero grains, odd size',
    format: 'vmdk',
    make: (path) => {
      qemuCreate(path('z.vmdk'), 'vmdk', String(50 * 1024 * 1024 + 512), { o: 'zeroed_grain=on' });
      qemuIo(path('z.vmdk'), 'vmdk', ['write -P 0x21 0 128k', 'write -z 1M 128k']);
      return path('z.vmdk');
    },
  },
  {
    name: 'VMDK streamOptimized',
    format: 'vmdk',
    make: (path) => {
      qemuCreate(path('p.raw'), 'raw', '16M');
      qemuIo(path('p.raw'), 'raw', ['write -P 0x31 0 1M', 'write -P 0x32 8M 64k']);
      qemuConvert(path('p.raw'), 'raw', path('s.vmdk'), 'vmdk', 'subformat=streamOptimized');
      return path('s.vmdk');
    },
  },
  {
    name: 'VMDK with a VMDK parent',
    format: 'vmdk',
    make: (path) => {
      qemuCreate(path('base.vmdk'), 'vmdk', '32M');
      qemuIo(path('base.vmdk'), 'vmdk', ['write -P 0x41 0 1M']);
      qemuCreate(path('child.vmdk'), 'vmdk', '32M', { backing: 'base.vmdk', backingFormat: 'vmdk', cwd: path('') });
      qemuIo(path('child.vmdk'), 'vmdk', ['write -P 0x42 512k 64k']);
      return path('child.vmdk');
    },
  },
  {
    name: 'sparse raw',
    format: 'raw',
    make: (path) => {
      qemuCreate(path('r.raw'), 'raw', '64M');
      qemuIo(path('r.raw'), 'raw', ['write -P 0x51 0 64k', 'write -P 0x52 10M 1M', 'write -P 0x53 63M 4k']);
      return path('r.raw');
    },
  },
];

describe('ic info/map JSON for VMDK and raw, against qemu-img', () => {
  const scratch = tempDir('ic-cli-vmdk-raw-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const testCase of cases) {
    it(testCase.name, async () => {
      const file = testCase.make((name) => (name === '' ? scratch.dir : scratch.path(name)));
      expect(await icJson(['info', '-f', testCase.format, file])).toEqual(qemuInfo(file, testCase.format));
      expect(await icJson(['map', '-f', testCase.format, file])).toEqual(qemuMap(file, testCase.format));
      // Probing finds the same format.
      expect(((await icJson(['info', file])) as { format: string }).format).toBe(testCase.format);
    });
  }
});
