/**
 * ic info / map / check against qemu-img on images qemu-img made: the JSON must be equal, and the text of
 * both output modes byte-identical (same key order, same spacing, same human sizes).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { qemuCreate, qemuIo, requireQemu, run, tempDir } from '@ic/test-utils';
import { runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-oracle-');
afterAll(() => work.cleanup());

function qemuImg(args: readonly string[]): { code: number; stdout: string } {
  const result = run('qemu-img', args);
  return { code: result.code, stdout: result.stdout };
}

interface Fixture {
  name: string;
  format: string;
  file: string;
}

/** Images covering the mapping kinds: data, zero (v3 zero clusters), discarded, unaligned writes, odd sizes. */
const FIXTURES: { name: string; format: string; size: string; o?: string; io: string[] }[] = [
  { name: 'qcow2-empty', format: 'qcow2', size: '1G', io: [] },
  {
    name: 'qcow2-mixed',
    format: 'qcow2',
    size: '64M',
    io: ['write -P 0xab 0 1M', 'write -P 0x11 3M 64k', 'write -z 5M 128k', 'write -P 0x22 7M 100k', 'discard 3M 64k', 'write -P 0x33 63M 1M'],
  },
  { name: 'qcow2-4k-v2', format: 'qcow2', size: '20M', o: 'cluster_size=4096,compat=0.10', io: ['write -P 1 0 8k', 'write -P 2 1M 4k', 'write -P 3 2M 512'] },
  { name: 'qcow2-odd-size', format: 'qcow2', size: '10000k', o: 'refcount_bits=8,lazy_refcounts=on', io: ['write -P 9 9990k 10k'] },
  { name: 'qed-empty', format: 'qed', size: '1G', io: [] },
  { name: 'qed-mixed', format: 'qed', size: '64M', io: ['write -P 0xab 0 1M', 'write -P 0x11 3M 64k', 'write -z 5M 128k', 'write -P 0x22 7M 100k', 'write -P 0x33 63M 1M'] },
  { name: 'qed-128k', format: 'qed', size: '100M', o: 'cluster_size=128k', io: ['write -P 1 1M 300k'] },
];

const fixtures: Fixture[] = [];

beforeAll(() => {
  for (const spec of FIXTURES) {
    const file = work.path(`${spec.name}.${spec.format}`);
    qemuCreate(file, spec.format, spec.size, spec.o ? { o: spec.o } : {});
    if (spec.io.length > 0) qemuIo(file, spec.format, spec.io);
    fixtures.push({ name: spec.name, format: spec.format, file });
  }
});

describe.each(FIXTURES.map((f) => f.name))('%s', (name) => {
  const fixture = () => fixtures.find((f) => f.name === name)!;

  test('info: JSON and text equal to qemu-img info', async () => {
    const { file, format } = fixture();
    for (const output of ['json', 'human']) {
      const expected = qemuImg(['info', '-f', format, `--output=${output}`, file]);
      // Probed, then named: both must agree with qemu-img.
      for (const args of [['info', `--output=${output}`, file], ['info', '-f', format, `--output=${output}`, file]]) {
        const actual = await runIc(args);
        expect(actual.stderr).toBe('');
        expect(actual.code).toBe(0);
        if (output === 'json') expect(JSON.parse(actual.stdout)).toEqual(JSON.parse(expected.stdout));
        expect(actual.stdout).toBe(expected.stdout);
      }
    }
  });

  test('map: JSON and table equal to qemu-img map', async () => {
    const { file, format } = fixture();
    for (const output of ['json', 'human']) {
      const expected = qemuImg(['map', '-f', format, `--output=${output}`, file]);
      const actual = await runIc(['map', '-f', format, `--output=${output}`, file]);
      expect(actual.stderr).toBe('');
      expect(actual.code).toBe(0);
      expect(actual.stdout).toBe(expected.stdout);
    }
  });

  test('check: JSON, text and exit status equal to qemu-img check', async () => {
    const { file, format } = fixture();
    for (const output of ['json', 'human']) {
      const expected = qemuImg(['check', '-f', format, `--output=${output}`, file]);
      const actual = await runIc(['check', '-f', format, `--output=${output}`, file]);
      expect(actual.code).toBe(expected.code);
      expect(actual.stdout).toBe(expected.stdout);
    }
  });
});
