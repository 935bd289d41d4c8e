/**
 * `ic info --features` and `ic demote` on QED zero clusters and VMDK zeroed grains made by qemu-io `write -z`,
 * judged by qemu-img; and `ic check -r` on each VMDK subformat against `qemu-img check -r` (which answers 63).
 */
import { afterAll, expect, test } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { copyFile, qemuCheck, qemuCompare, qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-demote-zeros-');
afterAll(() => work.cleanup());

const cases = [
  { format: 'qed', o: undefined, feature: 'zero_clusters', gone: /zero clusters expanded: 2/ },
  { format: 'vmdk', o: 'zeroed_grain=on', feature: 'zeroed_grains', gone: /zeroed grains expanded: 2 .*zeroed-grain flag cleared/ },
] as const;

let serial = 0;
function makeImage(format: string, o: string | undefined, backing: boolean): { image: string; original: string } {
  const dir = work.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/image.${format}`;
  const backingFormat = format === 'vmdk' ? 'vmdk' : 'raw';
  if (backing) {
    qemuCreate(`${dir}/base.${backingFormat}`, backingFormat, '8M');
    qemuIo(`${dir}/base.${backingFormat}`, backingFormat, ['write -P 0xbb 0 8M']);
  }
  qemuCreate(image, format, '8M', { ...(o ? { o } : {}), ...(backing ? { backing: `base.${backingFormat}`, backingFormat, cwd: dir } : {}) });
  qemuIo(image, format, ['write -P 1 0 128k', 'write -z 1M 128k']);
  const original = `${dir}/original.${format}`;
  copyFile(image, original);
  return { image, original };
}

for (const { format, o, feature, gone } of cases) {
  test.each([false, true])(`${format}: info --features lists ${feature}; demote removes it (backing file: %s); qemu-img agrees`, async (backing) => {
    const { image, original } = makeImage(format, o, backing);
    const listed = await runIc(['info', '--features', image]);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`^ {4}${feature} \\[incompatible\\]: .*removable \\(${backing ? 'zeros' : 'metadata'}: `, 'm'));
    const json = JSON.parse((await runIc(['info', '--features', '--output=json', image])).stdout) as { features: { name: string }[] };
    expect(json.features.map((entry) => entry.name)).toContain(feature);
    const result = await runIc(['demote', image]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(gone);
    expect((await runIc(['info', '--features', image])).stdout).not.toContain(feature);
    expect(qemuCheck(image, format).code).toBe(0);
    expect(qemuCompare(image, format, original, format).code).toBe(0);
    expect(qemuIo(image, format, ['write -P 7 1M 64k', 'read -P 7 1M 64k', `read -P 0 ${1024 * 1024 + 65536} 64k`, 'read -P 1 0 128k'])).not.toMatch(/fail|mismatch/i);
    // A second demote has nothing left to do of this kind.
    expect((await runIc(['demote', '--feature', feature, image])).code).not.toBe(0);
  });
}

test('vmdk check -r leaks|all: qemu-img answers 63 for every subformat; ic checks and repairs what the format allows (README says why)', async () => {
  for (const subformat of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    const dir = work.path(`${serial++}`);
    run('mkdir', ['-p', dir]);
    const image = `${dir}/${subformat}.vmdk`;
    qemuCreate(image, 'vmdk', '8M', { o: `subformat=${subformat}` });
    qemuIo(image, 'vmdk', ['write -P 1 0 128k']);
    for (const mode of ['leaks', 'all']) {
      const qemu = run('qemu-img', ['check', '-r', mode, '-f', 'vmdk', image]);
      expect(qemu.code, `${subformat} -r ${mode}`).toBe(63);
      expect(qemu.stderr).toContain('does not support checks');
      const before = sha256File(image);
      const ic = await runIc(['check', '-r', mode, image]);
      expect(ic.code, `${subformat} -r ${mode}: ${ic.stderr}`).toBe(0);
      expect(ic.stdout + ic.stderr).toContain('nothing to repair');
      expect(sha256File(image), `${subformat} -r ${mode}`).toBe(before);
    }
    // Without -r both run the check and agree.
    expect((await runIc(['check', image])).code).toBe(run('qemu-img', ['check', '-f', 'vmdk', image]).code);
  }
});

test('vmdk check -r on damage: qemu-img 63 without looking, ic one line, exit 1, nothing written', async () => {
  const dir = work.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/bad.vmdk`;
  qemuCreate(image, 'vmdk', '8M');
  qemuIo(image, 'vmdk', ['write -P 1 0 128k']);
  // The first GTE names a grain far past the end of the file.
  const bytes = readFileSync(image);
  const grainTable = bytes.readUInt32LE(Number(bytes.readBigUInt64LE(56)) * 512) * 512;
  bytes.writeUInt32LE(0xffffff, grainTable);
  writeFileSync(image, bytes);
  expect(run('qemu-img', ['check', '-r', 'all', '-f', 'vmdk', image]).code).toBe(63);
  const before = sha256File(image);
  const ic = await runIc(['check', '-r', 'all', image]);
  expect(ic.code).toBe(1);
  expect(ic.stderr).toMatch(ERROR_LINE);
  expect(ic.stderr).toContain('nothing was written');
  expect(sha256File(image)).toBe(before);
});

for (const { format, o } of cases) {
  test(`${format}: zero entries over a backing file read as zeros in ic map and survive convert-inplace to qcow2`, async () => {
    const { image, original } = makeImage(format, o, true);
    const ours = JSON.parse((await runIc(['map', '--output=json', image])).stdout) as unknown[];
    expect(ours).toEqual(JSON.parse(run('qemu-img', ['map', '--output=json', '-f', format, image]).stdout));
    expect(ours).toContainEqual(expect.objectContaining({ start: 1024 * 1024, length: 128 * 1024, depth: 0, zero: true, data: false }));
    const result = await runIc(['convert-inplace', image, 'qcow2']);
    expect(result.code, result.stderr).toBe(0);
    expect(qemuCheck(image, 'qcow2').code).toBe(0);
    expect(qemuCompare(image, 'qcow2', original, format).code).toBe(0);
  });
}

test('vmdk twoGbMaxExtentSparse with zeroed grains: listed per extent, kept by demote with why, nothing written', async () => {
  const dir = work.path(`${serial++}`);
  run('mkdir', ['-p', dir]);
  const image = `${dir}/split.vmdk`;
  qemuCreate(image, 'vmdk', '8M', { o: 'subformat=twoGbMaxExtentSparse,zeroed_grain=on' });
  qemuIo(image, 'vmdk', ['write -P 1 0 64k', 'write -z 1M 64k']);
  const extent = `${dir}/split-s001.vmdk`;
  const before = [sha256File(image), sha256File(extent)];
  const listed = await runIc(['info', '--features', image]);
  expect(listed.stdout).toMatch(/^ {4}zeroed_grains \[incompatible\]: .*1 grain table entries of 1.*\(extent "split-s001\.vmdk"\); not removable: /m);
  const all = await runIc(['demote', image]);
  expect(all.code, all.stderr).toBe(0);
  expect(all.stdout).toMatch(/^Nothing to remove\.\nkept zeroed_grains: extents of a multi-file VMDK are never written in place/);
  const named = await runIc(['demote', '--feature', 'zeroed_grains', image]);
  expect(named.code).toBe(1);
  expect(named.stderr).toMatch(ERROR_LINE);
  expect([sha256File(image), sha256File(extent)]).toEqual(before);
});
