/**
 * ENOSPC and EIO at every write and truncate of the mover (and EIO at every flush): ic defrag, ic compact (plain and
 * --zero-scan) and ic convert-inplace IMAGE raw on qemu-made qcow2, QED and VMDK images, run in process through the
 * engine calls the CLI makes (defragImage, compactImage, convertToIdentity) over packages/conformance's FaultyIO.
 * After each fault:
 *  - the operation rejects with a typed IcError carrying the injected code (or keeping the injected error as a cause);
 *  - the image as left is byte-identical to the original, or, after recover() (what the CLI runs first), a valid
 *    image (qemu-img check exit 0) whose guest reads identical to the original (qemu-img compare);
 *  - running the operation again (recover, then the operation, as the CLI does) completes it: the result is the
 *    undisturbed run's (defrag: 0 fragmented clusters; to raw: the file is raw of the virtual size), check clean,
 *    compare identical.
 * IC_KIT_COVERAGE=covering (`npm test`'s default): every third fault point (rotated per case); full: every one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { compactImage, convertToIdentity, defragImage, isIcError, MemoryIO, recover, type BlockIO, type Driver } from '@ic/core';
import { coverageOf, describeFault, FaultyIO, type Fault } from '@ic/conformance';
import { qemuCompare, requireQemu, run, tempDir } from '@ic/test-utils';
import { registry } from '../src/registry.js';
import { makeFragmented, reverse, shuffled, type MoverImage } from './mover-images.js';

/** holes: qemu-io leaves clusters the image no longer references (qcow2 frees them on write -z and discard), so a plain compact has work. */
const images: (MoverImage & { holes?: boolean })[] = [
  {
    label: 'qcow2 v3 64k reverse, zeros and a discard over data',
    format: 'qcow2',
    o: 'compat=1.1',
    size: '4M',
    clusterSize: 65536,
    order: reverse(8),
    after: ['write -z 128k 128k', 'write -P 0 384k 64k', 'discard 320k 64k'],
    holes: true,
  },
  { label: 'qed 64k reverse, zeros over data', format: 'qed', size: '4M', clusterSize: 65536, order: reverse(8), after: ['write -z 64k 128k', 'write -P 0 320k 64k'] },
  { label: 'vmdk random, zeros over data', format: 'vmdk', size: '4M', clusterSize: 65536, order: shuffled(8, 7), after: ['write -z 0 128k', 'write -P 0 384k 64k'] },
];

interface Operation {
  name: string;
  run(io: BlockIO, driver: Driver): Promise<unknown>;
  /** The format the image is in once the operation completed. */
  resultFormat(driver: Driver): Driver;
  /** Checks an undisturbed (or rerun) result. */
  expectDone(report: unknown, io: BlockIO, driver: Driver): Promise<void>;
}

const raw = registry.get('raw');
const operations: Operation[] = [
  {
    name: 'defrag',
    run: (io, driver) => defragImage(io, driver),
    resultFormat: (driver) => driver,
    expectDone: async (report) => {
      const defrag = report as Awaited<ReturnType<typeof defragImage>>;
      expect(defrag.done).toBe(true);
      expect(defrag.after.fragmentedClusters).toBe(0);
    },
  },
  { name: 'compact', run: (io, driver) => compactImage(io, driver), resultFormat: (driver) => driver, expectDone: async () => undefined },
  { name: 'compact --zero-scan', run: (io, driver) => compactImage(io, driver, { zeroScan: true }), resultFormat: (driver) => driver, expectDone: async () => undefined },
  {
    name: 'convert-inplace raw',
    run: (io, driver) => convertToIdentity(io, driver, raw),
    resultFormat: () => raw,
    expectDone: async (report, io) => {
      const identity = report as Awaited<ReturnType<typeof convertToIdentity>>;
      expect(await io.size()).toBe(identity.virtualSize);
    },
  },
];

/** The faults of one case: every write and truncate (ENOSPC and EIO), every flush (EIO); covering: every third, rotated. */
function faultsOf(writes: number, truncates: number, flushes: number, rotate: number): Fault[] {
  const all: Fault[] = [];
  for (let at = 1; at <= writes; at++) for (const code of ['NO_SPACE', 'IO'] as const) all.push({ on: 'write', at, code });
  for (let at = 1; at <= truncates; at++) for (const code of ['NO_SPACE', 'IO'] as const) all.push({ on: 'truncate', at, code });
  for (let at = 1; at <= flushes; at++) all.push({ on: 'flush', at });
  return coverageOf(undefined) === 'full' ? all : all.filter((_, i) => (i + rotate) % 3 === 0);
}

/** Whether `error` is the injected error, or a typed error of its code that keeps it as a cause or quotes it. */
function passesOn(error: unknown, injected: Error | undefined): boolean {
  if (!isIcError(error) || injected === undefined || !isIcError(injected)) return false;
  if (error === injected) return true;
  if (error.code !== injected.code) return false;
  for (let cause: unknown = error.cause; cause instanceof Error; cause = cause.cause) if (cause === injected || cause.message === injected.message) return true;
  return error.message.includes(injected.message);
}

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));

describe('ENOSPC and EIO at every write (EIO at every flush) of defrag, compact and convert-inplace raw', () => {
  const scratch = tempDir('ic-mover-faults-');
  beforeAll(() => requireQemu());
  afterAll(() => scratch.cleanup());

  for (const [n, image] of images.entries()) {
    for (const [m, operation] of operations.entries()) {
      // A plain compact (no zero scan) only returns space nothing references: only the images qemu leaves holes in.
      if (operation.name === 'compact' && !image.holes) continue;
      it(`${operation.name} on ${image.label}`, { timeout: 300_000 }, async () => {
        const pristineFile = scratch.path(`pristine-${n}.${image.format}`);
        makeFragmented(pristineFile, image);
        const pristine = new Uint8Array(readFileSync(pristineFile));
        const driver = registry.get(image.format);
        const file = scratch.path(`image-${n}-${m}`);
        /** qemu-img check exit status 0 and compare identical to the original, of `store` read as `format`. */
        const judge = (store: MemoryIO, format: Driver, where: string) => {
          writeFileSync(file, store.snapshot());
          const check = run('qemu-img', ['check', '-f', format.name, file]);
          // A format qemu has no check for (raw) answers 63 "does not support checks": compare alone judges it.
          const unchecked = check.code === 63 && /does not support checks/.test(check.stderr);
          if (!unchecked) expect(check.code, `${where}: qemu-img check: ${check.stdout}${check.stderr}`).toBe(0);
          const compare = qemuCompare(file, format.name, pristineFile, image.format);
          expect(compare.code, `${where}: qemu-img compare: ${compare.stdout}${compare.stderr}`).toBe(0);
        };

        // The undisturbed run: how many writes and flushes there are to fail, and what done looks like.
        const counting = new FaultyIO(new MemoryIO(pristine.slice(), image.label));
        await operation.expectDone(await operation.run(counting, driver), counting, driver);
        expect(counting.writes).toBeGreaterThan(0);
        const faults = faultsOf(counting.writes, counting.truncates, counting.flushes, n + m);
        const seen = { identical: 0, validAsIs: 0, recoveredBack: 0, recoveredForward: 0, rerunCompleted: 0 };
        const codes = new Map<string, number>();
        for (const fault of faults) {
          const where = `${operation.name} on ${image.label}, ${describeFault(fault)}`;
          const store = new MemoryIO(pristine.slice(), image.label);
          const faulty = new FaultyIO(store, fault);
          const failure = await operation.run(faulty, driver).then(
            () => undefined,
            (error: unknown) => error,
          );
          expect(failure, `${where}: completed despite the fault`).toBeDefined();
          expect(isIcError(failure), `${where}: untyped ${String(failure)}`).toBe(true);
          expect(passesOn(failure, faulty.injected), `${where}: rejected with ${String(failure)}, not the injected ${String(faulty.injected)}`).toBe(true);
          const code = isIcError(failure) ? failure.code : 'untyped';
          codes.set(code, (codes.get(code) ?? 0) + 1);

          // The image as left: byte-identical, or valid with the same guest data after recover().
          let format = driver;
          if (sameBytes(store.snapshot(), pristine)) seen.identical++;
          else {
            const recovery = await recover(store, { drivers: registry });
            if (recovery.action === 'none') seen.validAsIs++;
            else if (recovery.action === 'rolled-back') seen.recoveredBack++;
            else seen.recoveredForward++;
            if (recovery.format !== undefined) format = registry.get(recovery.format);
            else if (driver.probe(await store.read(0, 512), await store.size()) === 0) format = operation.resultFormat(driver);
            judge(store, format, `${where} (${recovery.action}: ${recovery.detail})`);
          }

          // Running it again (recover first, as the CLI does) completes it.
          await recover(store, { drivers: registry });
          if (format === driver) {
            await operation.expectDone(await operation.run(store, driver), store, driver);
            seen.rerunCompleted++;
          }
          judge(store, operation.resultFormat(driver), `${where}, run again`);
        }
        console.log(
          `${operation.name} on ${image.label}: ${counting.writes} writes, ${counting.truncates} truncates, ${counting.flushes} flushes; ${faults.length} faults injected (${coverageOf(undefined)}); ` +
            `errors ${JSON.stringify(Object.fromEntries(codes))}; left ${JSON.stringify(seen)}`,
        );
        expect(faults.length).toBeGreaterThan(0);
      });
    }
  }
});
