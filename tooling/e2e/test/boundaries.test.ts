import { describe, expect, it } from 'vitest';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { tempDir } from '@ic/test-utils';
import { checkBoundaries } from '../src/boundaries.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const formats = ['qcow2', 'qed', 'vmdk', 'raw', 'vdi', 'vhd', 'vpc', 'vhdx'];

describe('package boundaries', () => {
  it('hold in this repository', () => {
    expect(checkBoundaries(root, formats)).toEqual([]);
  });

  it('catch a driver importing another driver, core naming a format, and a driver importing node:fs', () => {
    const scratch = tempDir();
    try {
      const write = (path: string, text: string) => {
        mkdirSync(join(scratch.dir, path, '..'), { recursive: true });
        writeFileSync(join(scratch.dir, path), text);
      };
      write('packages/core/package.json', JSON.stringify({ name: '@ic/core' }));
      write('packages/core/src/x.ts', "export const f = (n: string) => n === 'qcow2';\n");
      write('packages/a/package.json', JSON.stringify({ name: '@ic/a', dependencies: { '@ic/b': '*' } }));
      write('packages/a/src/index.ts', "import { b } from '@ic/b';\nimport { readFileSync } from 'node:fs';\n");
      write('packages/b/package.json', JSON.stringify({ name: '@ic/b' }));
      const problems = checkBoundaries(scratch.dir, formats);
      expect(problems).toHaveLength(4);
      expect(problems.join('\n')).toMatch(/depends on driver @ic\/b/);
      expect(problems.join('\n')).toMatch(/imports driver @ic\/b/);
      expect(problems.join('\n')).toMatch(/imports node:fs/);
      expect(problems.join('\n')).toMatch(/compares with a format name/);
    } finally {
      scratch.cleanup();
      rmSync(scratch.dir, { recursive: true, force: true });
    }
  });
});
