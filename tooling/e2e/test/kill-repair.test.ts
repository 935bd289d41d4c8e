/**
 * The real executable killed with SIGKILL after every write of `ic check -r` (IC_TEST_KILL_AFTER_WRITES=N), then
 * the oracle: qemu-img check accepts the image as it is, or a rerun of the same repair completes it; the guest
 * content always equals the image qemu-img check -r repaired. And what is left of an in-place conversion killed
 * at every write: `check -r` leaves the intent record to `ic recover`, which finishes the conversion; leaks that
 * survive a recovery (a kill in the middle of packing) are freed by `check -r leaks`. The same for the Parallels
 * and VDI repairs (a truncate and a header field each). And `ic demote` (qcow2 v3 to
 * v2, QED zero clusters, VMDK zeroed grains, each over a backing file) killed at every write, finished by a rerun.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { icCli, qemuCheck, qemuCompare, qemuCreate, qemuIo, requireBuiltIc, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';

const scratch = tempDir('ic-kill-repair-');
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => scratch.cleanup());

const ic = (args: string[], killAfter?: number) => icCli(args, { env: { IC_TEST_KILL_AFTER_WRITES: killAfter === undefined ? undefined : String(killAfter) } });

/** ic check -r killed after 1, 2, ... writes until a run finishes; every state judged against `reference`. */
function killEveryWrite(damaged: string, format: string, mode: 'leaks' | 'all', reference: string) {
  const image = `${damaged}.work`;
  const outcomes = { killed: 0, acceptedAsIs: 0, completedByRerun: 0 };
  for (let killAfter = 1; killAfter < 200; killAfter++) {
    copyFileSync(damaged, image);
    const result = ic(['check', '-r', mode, '-f', format, image], killAfter);
    if (result.signal !== 'SIGKILL') {
      expect(result.status, result.stderr).toBe(0);
      expect(qemuCheck(image, format).code).toBe(0);
      expect(qemuCompare(image, format, reference, format).code).toBe(0);
      return outcomes;
    }
    outcomes.killed++;
    const where = `killed after ${killAfter} writes`;
    const state = qemuCheck(image, format);
    expect(state.code, `${where}: ${state.text}`).not.toBe(1);
    if (state.code === 0 && qemuCompare(image, format, reference, format).code === 0) {
      outcomes.acceptedAsIs++;
    } else {
      const rerun = ic(['check', '-r', mode, '-f', format, image]);
      expect(rerun.status, `${where}, rerun: ${rerun.stderr}`).toBe(0);
      outcomes.completedByRerun++;
    }
    expect(qemuCheck(image, format).code, where).toBe(0);
    expect(qemuCompare(image, format, reference, format).code, where).toBe(0);
  }
  throw new Error('the repair never finished');
}

describe('SIGKILL at every write of `ic check -r`', () => {
  it('qcow2 with lazy refcounts left dirty by a killed writer: -r all', { timeout: 300_000 }, () => {
    const dirty = scratch.path('dirty.qcow2');
    qemuCreate(dirty, 'qcow2', '64M', { o: 'lazy_refcounts=on' });
    qemuIo(dirty, 'qcow2', ['write -P 7 0 1M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 1 0 128k', '-c', 'write -P 2 8M 192k', '-c', 'abort', dirty]);
    const reference = scratch.path('dirty-qemu.qcow2');
    copyFileSync(dirty, reference);
    expect(run('qemu-img', ['check', '-r', 'all', '-f', 'qcow2', reference]).code).toBe(0);
    const outcomes = killEveryWrite(dirty, 'qcow2', 'all', reference);
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`qcow2 -r all: ${JSON.stringify(outcomes)}`);
  });

  it('QED with need-check set and holes inside the file: -r leaks', { timeout: 300_000 }, () => {
    const file = scratch.path('holes.qed');
    qemuCreate(file, 'qed', '64M');
    qemuIo(file, 'qed', ['write -P 1 0 512k', 'write -P 2 1M 256k']);
    const bytes = readFileSync(file);
    const l2 = Number(bytes.readBigUInt64LE(0x10000));
    for (let index = 1; index <= 5; index++) bytes.writeBigUInt64LE(0n, l2 + index * 8);
    writeFileSync(file, bytes);
    run('qemu-io', ['-f', 'qed', '-c', 'write -P 3 3M 64k', '-c', 'abort', file]);
    expect(qemuCheck(file, 'qed').code).toBe(3);
    const outcomes = killEveryWrite(file, 'qed', 'leaks', file);
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`qed -r leaks: ${JSON.stringify(outcomes)}`);
  });
});

describe('SIGKILL at every write of `ic check -r all` for Parallels and VDI', () => {
  it('Parallels left in use with a leaked cluster at the end: truncate, then inuse cleared', { timeout: 120_000 }, () => {
    const damaged = scratch.path('inuse.parallels');
    qemuCreate(damaged, 'parallels', '8M');
    qemuIo(damaged, 'parallels', ['write -P 1 0 2M']);
    const bytes = readFileSync(damaged);
    bytes.writeUInt32LE(0x746f6e59, 44); // inuse ("Ynot")
    writeFileSync(damaged, Buffer.concat([bytes, Buffer.alloc(1024 * 1024, 0x55)]));
    const reference = scratch.path('inuse-qemu.parallels');
    copyFileSync(damaged, reference);
    expect(run('qemu-img', ['check', '-r', 'all', '-f', 'parallels', reference]).code).toBe(0);
    const outcomes = killEveryWrite(damaged, 'parallels', 'all', reference);
    expect(outcomes.killed).toBe(2);
    console.log(`parallels -r all: ${JSON.stringify(outcomes)}`);
  });

  it('VDI with a wrong blocks_allocated: the field rewritten', { timeout: 120_000 }, () => {
    const damaged = scratch.path('count.vdi');
    qemuCreate(damaged, 'vdi', '8M');
    qemuIo(damaged, 'vdi', ['write -P 1 0 3M']);
    const bytes = readFileSync(damaged);
    bytes.writeUInt32LE(1, 0x184); // blocks_allocated: 1 for 3 blocks
    writeFileSync(damaged, bytes);
    const reference = scratch.path('count-original.vdi');
    copyFileSync(damaged, reference);
    const outcomes = killEveryWrite(damaged, 'vdi', 'all', reference);
    expect(outcomes.killed).toBe(1);
    console.log(`vdi -r all: ${JSON.stringify(outcomes)}`);
  });
});

describe('SIGKILL at every write of `ic amend -o compat=0.10`', () => {
  it('a v3 qcow2 with zero clusters over a backing file', { timeout: 300_000 }, () => {
    const dir = scratch.path('amend');
    run('mkdir', ['-p', dir]);
    qemuCreate(`${dir}/base.raw`, 'raw', '16M');
    qemuIo(`${dir}/base.raw`, 'raw', ['write -P 0xbb 0 16M']);
    const pristine = `${dir}/pristine.qcow2`;
    qemuCreate(pristine, 'qcow2', '16M', { backing: 'base.raw', backingFormat: 'raw', cwd: dir });
    qemuIo(pristine, 'qcow2', ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 4M 128k']);
    const image = `${dir}/image.qcow2`;
    const outcomes = { killed: 0, leaksLeft: 0 };
    for (let killAfter = 1; killAfter < 200; killAfter++) {
      copyFileSync(pristine, image);
      const result = ic(['amend', '-o', 'compat=0.10', image], killAfter);
      if (result.signal !== 'SIGKILL') {
        expect(result.status, result.stderr).toBe(0);
        break;
      }
      outcomes.killed++;
      const where = `killed after ${killAfter} writes`;
      expect(qemuCompare(image, 'qcow2', pristine, 'qcow2').code, where).toBe(0);
      const state = qemuCheck(image, 'qcow2').code;
      // Leaked clusters only (the new clusters of zeros, between the refcount rebuild and the switch).
      expect([0, 3], where).toContain(state);
      const rerun = ic(['amend', '-o', 'compat=0.10', image]);
      expect(rerun.status, `${where}, rerun: ${rerun.stderr}`).toBe(0);
      if (qemuCheck(image, 'qcow2').code === 3) {
        outcomes.leaksLeft++;
        expect(ic(['check', '-r', 'leaks', image]).status).toBe(0);
      }
      expect(qemuCheck(image, 'qcow2').code, where).toBe(0);
      expect(qemuCompare(image, 'qcow2', pristine, 'qcow2').code, where).toBe(0);
      expect(run('qemu-img', ['info', '--output=json', image]).stdout).toContain('"compat": "0.10"');
    }
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`amend compat=0.10 killed: ${JSON.stringify(outcomes)}`);
  });
});

describe('SIGKILL at every write of `ic amend -o compat=1.1,refcount_bits=4`', () => {
  it('a version 2 qcow2 with data over a backing file and an internal snapshot', { timeout: 300_000 }, () => {
    const dir = scratch.path('amend-up');
    run('mkdir', ['-p', dir]);
    qemuCreate(`${dir}/base.raw`, 'raw', '16M');
    qemuIo(`${dir}/base.raw`, 'raw', ['write -P 0xbb 0 16M']);
    const pristine = `${dir}/pristine.qcow2`;
    qemuCreate(pristine, 'qcow2', '16M', { o: 'compat=0.10,cluster_size=4k', backing: 'base.raw', backingFormat: 'raw', cwd: dir });
    qemuIo(pristine, 'qcow2', ['write -P 1 0 256k', 'write -P 2 5M 1M']);
    expect(run('qemu-img', ['snapshot', '-c', 's1', pristine]).code).toBe(0);
    qemuIo(pristine, 'qcow2', ['write -P 3 64k 64k']);
    const image = `${dir}/image.qcow2`;
    const options = ['amend', '-o', 'compat=1.1,refcount_bits=4', image];
    const done = () => {
      const info = JSON.parse(run('qemu-img', ['info', '--output=json', image]).stdout) as { 'format-specific': { data: Record<string, unknown> } };
      return info['format-specific'].data.compat === '1.1' && info['format-specific'].data['refcount-bits'] === 4;
    };
    const outcomes = { killed: 0, acceptedAsIs: 0, completedByRerun: 0 };
    for (let killAfter = 1; killAfter < 200; killAfter++) {
      copyFileSync(pristine, image);
      const result = ic(options, killAfter);
      if (result.signal !== 'SIGKILL') {
        expect(result.status, result.stderr).toBe(0);
        expect(done()).toBe(true);
        break;
      }
      outcomes.killed++;
      const where = `killed after ${killAfter} writes`;
      expect(qemuCompare(image, 'qcow2', pristine, 'qcow2').code, where).toBe(0);
      // No leak at any point: the new refcount structures are free space until the switch, the old ones after it.
      expect(qemuCheck(image, 'qcow2').code, where).toBe(0);
      if (done()) {
        outcomes.acceptedAsIs++;
        continue;
      }
      const rerun = ic(options);
      expect(rerun.status, `${where}, rerun: ${rerun.stderr}`).toBe(0);
      expect(qemuCheck(image, 'qcow2').code, where).toBe(0);
      expect(qemuCompare(image, 'qcow2', pristine, 'qcow2').code, where).toBe(0);
      expect(done(), where).toBe(true);
      outcomes.completedByRerun++;
    }
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`amend compat=1.1,refcount_bits=4 killed: ${JSON.stringify(outcomes)}`);
  });
});

describe('an in-place conversion killed at every write: ic recover, then check -r leaks', () => {
  it('qcow2 -> qed', { timeout: 300_000 }, () => {
    const pristine = scratch.path('pristine.qcow2');
    qemuCreate(pristine, 'qcow2', '64M');
    qemuIo(pristine, 'qcow2', ['write -P 0x11 0 1M', 'write -P 0x12 30M 64k', 'write -z 40M 64k']);
    const image = scratch.path('image');
    const outcomes = { killed: 0, refusedWhileRecordPresent: 0, leaksAfterRecover: 0 };
    for (let killAfter = 1; killAfter < 400; killAfter++) {
      copyFileSync(pristine, image);
      const result = ic(['convert-inplace', '-f', 'qcow2', image, 'qed'], killAfter);
      if (result.status === 0) break;
      expect(result.signal, result.stderr).toBe('SIGKILL');
      outcomes.killed++;
      const before = sha256File(image);
      const repair = ic(['check', '-r', 'leaks', image]);
      if (repair.status !== 0) {
        // The record is there: check -r leaves it to recover, and writes nothing.
        expect(repair.stderr).toMatch(/NEEDS_RECOVERY/);
        expect(sha256File(image)).toBe(before);
        outcomes.refusedWhileRecordPresent++;
      }
      expect(ic(['recover', image]).status).toBe(0);
      const format = (JSON.parse(ic(['info', '--output=json', image]).stdout) as { format: string }).format;
      if (qemuCheck(image, format).code === 3) {
        outcomes.leaksAfterRecover++;
        const freed = ic(['check', '-r', 'leaks', image]);
        expect(freed.status, freed.stderr).toBe(0);
      }
      expect(qemuCheck(image, format).code, `kill after ${killAfter}`).toBe(0);
      expect(qemuCompare(image, format, pristine, 'qcow2').code, `kill after ${killAfter}`).toBe(0);
    }
    expect(outcomes.killed).toBeGreaterThan(2);
    expect(outcomes.refusedWhileRecordPresent).toBeGreaterThan(0);
    console.log(`qcow2 -> qed killed: ${JSON.stringify(outcomes)}`);
  });
});

/** The names `ic info --features` lists for the image (the driver's feature model). */
function featureNames(image: string): string[] {
  const info = JSON.parse(ic(['info', '--features', '--output=json', image]).stdout) as { features: { name: string }[] };
  return info.features.map((feature) => feature.name);
}

/**
 * `ic demote` killed after 1, 2, ... writes until a run finishes. Every state the kill leaves reads the same
 * guest content as `pristine` and has no corruption (leaks at most); a state qemu-img check accepts with the
 * features gone is accepted as is, any other is finished by a rerun of `ic demote` (leaks it leaves freed by
 * `ic check -r leaks`). At the end: qemu-img check 0, compare identical, none of `removed` listed.
 */
function killEveryDemote(pristine: string, format: string, removed: readonly string[]) {
  expect(featureNames(pristine)).toEqual(expect.arrayContaining([...removed]));
  const image = pristine.replace(/pristine/, 'image');
  const outcomes = { killed: 0, acceptedAsIs: 0, completedByRerun: 0, leaksLeft: 0 };
  const finished = (where: string) => {
    expect(qemuCheck(image, format).code, where).toBe(0);
    expect(qemuCompare(image, format, pristine, format).code, where).toBe(0);
    expect(featureNames(image).filter((name) => removed.includes(name)), where).toEqual([]);
  };
  for (let killAfter = 1; killAfter < 200; killAfter++) {
    copyFileSync(pristine, image);
    const result = ic(['demote', image], killAfter);
    if (result.signal !== 'SIGKILL') {
      expect(result.status, result.stderr).toBe(0);
      finished('uninterrupted');
      return outcomes;
    }
    outcomes.killed++;
    const where = `killed after ${killAfter} writes`;
    expect(qemuCompare(image, format, pristine, format).code, where).toBe(0);
    const state = qemuCheck(image, format);
    expect([0, 3], `${where}: ${state.text}`).toContain(state.code);
    if (state.code === 0 && !featureNames(image).some((name) => removed.includes(name))) {
      outcomes.acceptedAsIs++;
    } else {
      const rerun = ic(['demote', image]);
      expect(rerun.status, `${where}, rerun: ${rerun.stderr}`).toBe(0);
      outcomes.completedByRerun++;
      if (qemuCheck(image, format).code === 3) {
        outcomes.leaksLeft++;
        expect(ic(['check', '-r', 'leaks', image]).status, where).toBe(0);
      }
    }
    finished(where);
  }
  throw new Error('the demote never finished');
}

/** A directory with a parent of 0xbb bytes and `pristine.FORMAT` over it holding data and zero clusters. */
function zerosOverParent(name: string, format: string, o: string | undefined, parentFormat: string): string {
  const dir = scratch.path(name);
  run('mkdir', ['-p', dir]);
  const parent = `${dir}/parent.${parentFormat}`;
  qemuCreate(parent, parentFormat, '16M');
  qemuIo(parent, parentFormat, ['write -P 0xbb 0 16M']);
  const pristine = `${dir}/pristine.${format}`;
  qemuCreate(pristine, format, '16M', { ...(o ? { o } : {}), backing: `parent.${parentFormat}`, backingFormat: parentFormat, cwd: dir });
  qemuIo(pristine, format, ['write -P 1 0 256k', 'write -z 64k 64k', 'write -z 4M 128k', 'write -P 2 9M 64k', 'write -z 12M 64k']);
  return pristine;
}

describe('SIGKILL at every write of `ic demote`', () => {
  it('qcow2 v3 with zero clusters over a backing file: to version 2', { timeout: 300_000 }, () => {
    const pristine = zerosOverParent('demote-qcow2', 'qcow2', undefined, 'raw');
    const outcomes = killEveryDemote(pristine, 'qcow2', ['v3', 'zero_clusters']);
    expect(run('qemu-img', ['info', '--output=json', pristine.replace(/pristine/, 'image')]).stdout).toContain('"compat": "0.10"');
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`demote qcow2: ${JSON.stringify(outcomes)}`);
  });

  it('QED with zero clusters over a backing file', { timeout: 300_000 }, () => {
    const outcomes = killEveryDemote(zerosOverParent('demote-qed', 'qed', undefined, 'raw'), 'qed', ['zero_clusters']);
    // Two writes in all here (the clusters of zeros, then the L2 table that points at them), so two kills.
    expect(outcomes.killed).toBeGreaterThanOrEqual(2);
    console.log(`demote qed: ${JSON.stringify(outcomes)}`);
  });

  it('VMDK monolithicSparse zeroed_grain=on with zeroed grains over a parent', { timeout: 300_000 }, () => {
    const pristine = zerosOverParent('demote-vmdk', 'vmdk', 'subformat=monolithicSparse,zeroed_grain=on', 'vmdk');
    const outcomes = killEveryDemote(pristine, 'vmdk', ['zeroed_grains']);
    expect(outcomes.killed).toBeGreaterThan(2);
    console.log(`demote vmdk: ${JSON.stringify(outcomes)}`);
  });
});
