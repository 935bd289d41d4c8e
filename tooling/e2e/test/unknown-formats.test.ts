/**
 * No silent raw (DESIGN.md §6): a file no installed driver but raw recognises is never written unless `-f raw`
 * says it is raw, and the refusal names a well-known format whose signature it carries. Through the real CLI,
 * on images qemu-img makes in formats ic has no driver for.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, writeFileSync } from 'node:fs';
import { IC_ERROR_LINE, icCli, qemuCompare, qemuCreate, requireBuiltIc, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';

const scratch = tempDir('ic-unknown-');
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => scratch.cleanup());

// Formats qemu-img makes; those that ic's CLI bundles a driver for are left out (the list shrinks as drivers land).
const cases = [
  { label: 'VDI', format: 'vdi', o: undefined, says: 'a VirtualBox VDI image' },
  { label: 'VHD (dynamic)', format: 'vpc', o: undefined, says: 'a VHD image' },
  { label: 'VHD (fixed, footer only)', format: 'vpc', o: 'subformat=fixed', says: 'a VHD image' },
  { label: 'VHDX', format: 'vhdx', o: undefined, says: 'a VHDX (Hyper-V) image' },
  { label: 'Parallels', format: 'parallels', o: undefined, says: 'a Parallels image' },
].filter((testCase) => registry.find(testCase.format) === undefined);

describe('files only raw would claim', () => {
  for (const testCase of cases) {
    it(`${testCase.label}: convert-inplace refuses in one line naming it, byte-identical; -f raw converts it as raw`, { timeout: 120_000 }, () => {
      const image = scratch.path(`image-${testCase.label.replace(/\W+/g, '_')}`);
      qemuCreate(image, testCase.format, '16M', testCase.o ? { o: testCase.o } : {});
      const before = sha256File(image);
      for (const args of [['convert-inplace', image, 'qcow2'], ['convert-inplace', '--dry-run', image, 'qed']]) {
        const refused = icCli(args);
        expect(refused.status, refused.stderr).toBe(1);
        expect(refused.stdout).toBe('');
        expect(refused.stderr).toMatch(IC_ERROR_LINE);
        expect(refused.stderr).toContain('no installed driver recognised the file');
        expect(refused.stderr).toContain(testCase.says);
        expect(refused.stderr).toContain('-f raw');
        expect(refused.stderr).toContain('[WRONG_FORMAT]');
        expect(sha256File(image)).toBe(before);
      }
      // Reads warn once and go on.
      for (const command of ['info', 'map']) {
        const read = icCli([command, image]);
        expect(read.status, read.stderr).toBe(0);
        expect(read.stderr).toMatch(/^ic: warning: [^\n]*probing guessed raw[^\n]*\n$/);
        expect(read.stderr).toContain(testCase.says);
      }
      const check = icCli(['check', image]);
      expect(check.status).toBe(63); // raw has no check, as with qemu-img
      expect(check.stderr.match(/^ic: warning: /gm)).toHaveLength(1);
      // -f raw: no warning, and the conversion proceeds as it always did (the container becomes the guest disk).
      const pristine = scratch.path('pristine');
      copyFileSync(image, pristine);
      expect(icCli(['info', '-f', 'raw', image]).stderr).toBe('');
      const converted = icCli(['convert-inplace', '-f', 'raw', image, 'qcow2']);
      expect(converted.status, converted.stderr).toBe(0);
      expect(converted.stderr).toBe('');
      expect(qemuCompare(image, 'qcow2', pristine, 'raw').code).toBe(0);
    });
  }

  it('a file with no known signature: refused for writing without naming a format, warned about for reading', () => {
    const image = scratch.path('plain.bin');
    writeFileSync(image, new Uint8Array(1 << 20).fill(7));
    const before = sha256File(image);
    const refused = icCli(['convert-inplace', image, 'qed']);
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(IC_ERROR_LINE);
    expect(refused.stderr).not.toContain('looks like');
    expect(sha256File(image)).toBe(before);
    const info = icCli(['info', '--output=json', image]);
    expect(info.status).toBe(0);
    expect(JSON.parse(info.stdout).format).toBe('raw');
    expect(info.stderr.match(/^ic: warning: /gm)).toHaveLength(1);
  });
});
