/**
 * Crash campaigns on the first-party drivers that are installed: every ordered pair (source: an in-place
 * source that can build images, or a raw-like driver built by hand; target: an in-place target) × every
 * crash shape. Drivers are found by capability; a package that is missing or exports no driver is skipped.
 */
import { describe, expect, it } from 'vitest';
import { convertInPlace, hasCapability, isIcError, Registry, type Driver } from '@ic/core';
import {
  buildCrashSource,
  canBeCrashSource,
  crashShapes,
  DroppedFlushesIO,
  runCrashCampaign,
  summariseCampaign,
  type CampaignResult,
  type GeneratorName,
} from '../src/crash/index.js';

/** Loads a driver without a static dependency: conformance must not depend on the drivers it tests. */
async function loadDriver(specifier: string, exportName: string): Promise<Driver | undefined> {
  try {
    const module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
    const driver = module[exportName] as Driver | undefined;
    return driver && typeof driver.probe === 'function' && typeof driver.open === 'function' ? driver : undefined;
  } catch {
    return undefined;
  }
}

const found = await Promise.all([
  loadDriver('@ic/qcow2', 'qcow2Driver'),
  loadDriver('@ic/qed', 'qedDriver'),
  loadDriver('@ic/vmdk', 'vmdkDriver'),
  loadDriver('@ic/raw', 'rawDriver'),
]);
const drivers = found.filter((d): d is Driver => d !== undefined);
const registry = new Registry(drivers);
const sources = drivers.filter(canBeCrashSource);
const targets = drivers.filter((d) => hasCapability(d, 'inPlaceTarget') && d.inPlace !== undefined);

const CLUSTER_SIZE = 65536;
const GENERATORS: GeneratorName[] = ['prefix', 'omit-one', 'tear-512', 'subsets', 'extension', 'random'];
const SAMPLES = 200;

function expectSafe(result: CampaignResult): void {
  const list = (r: Pick<CampaignResult, 'failures'>) => r.failures.map((f) => `${f.phase} ${f.outcome} [${f.generator}] ${f.state}: ${f.detail}`).join('\n');
  for (const outcome of ['SILENT_BAD', 'DATA_LOSS', 'UNTYPED_ERROR'] as const) expect(result.totals[outcome], list(result)).toBe(0);
  expect(result.totals.DETECTED_REFUSED, list(result)).toBe(0);
  expect(result.totals.OLD_INTACT + result.totals.RECOVERED_OLD, 'the old image is seen').toBeGreaterThan(0);
  expect(result.totals.NEW_INTACT + result.totals.RECOVERED_NEW, 'the new image is seen').toBeGreaterThan(0);
  // A raw source grows without a record only while the record itself is in flight (the first epoch).
  result.epochs.slice(1).forEach((epoch, i) => expect(epoch.outcomes.OLD_INTACT_GROWN, `epoch ${i + 1}`).toBe(0));
  const recovery = result.recovery.result;
  expect(recovery, 'recovery was crashed too').toBeDefined();
  for (const outcome of ['SILENT_BAD', 'DATA_LOSS', 'UNTYPED_ERROR', 'DETECTED_REFUSED'] as const) expect(recovery!.totals[outcome], list(recovery!)).toBe(0);
}

const ran: string[] = [];

describe.runIf(sources.length > 0 && targets.length > 0)(`crash campaigns on installed drivers (${drivers.map((d) => d.name).join(', ')})`, () => {
  for (const source of sources) {
    for (const target of targets) {
      if (source === target) continue;
      describe(`${source.name} → ${target.name}`, () => {
        for (const shape of crashShapes) {
          const needsBacking = shape.needsBacking === true;
          if (needsBacking && !(hasCapability(source, 'backing') && hasCapability(target, 'backing'))) continue;
          it(shape.name, async (context) => {
            const built = await buildCrashSource(source, shape, CLUSTER_SIZE);
            const result = await runCrashCampaign({
              registry,
              sourceDriver: source.name,
              targetDriver: target.name,
              buildSource: async () => built.io,
              expectedContent: built.expected,
              ...(built.openOptions ? { openOptions: built.openOptions } : {}),
              generators: GENERATORS,
              samples: SAMPLES,
              maxSubsetOps: 10,
              recoveryCrashes: 3,
              recoverySamples: 30,
              viewBeforeRecovery: false,
              seed: 1,
            }).catch((error: unknown) => error);
            if (isIcError(result) && result.code === 'UNSUPPORTED') {
              // The target cannot represent this image (refused before anything is written): nothing to crash.
              context.skip(result.message);
              return;
            }
            if (result instanceof Error) throw result;
            const campaign = result as CampaignResult;
            console.log(`${shape.name}: ${summariseCampaign(campaign)}`);
            expectSafe(campaign);
            ran.push(`${source.name}->${target.name}`);
          });
        }
      });
    }
  }

  it('catches an engine that drops its flushes (the harness can fail)', async () => {
    const source = sources.find((d) => d.inPlace) ?? sources[0]!;
    const target = targets.find((d) => d !== source)!;
    const shape = crashShapes.find((s) => s.name === 'checkerboard')!;
    const built = await buildCrashSource(source, shape, CLUSTER_SIZE);
    const result = await runCrashCampaign({
      registry,
      sourceDriver: source.name,
      targetDriver: target.name,
      buildSource: async () => built.io,
      operation: async (io) => {
        await convertInPlace({ io: new DroppedFlushesIO(io), source, target });
        await io.flush();
      },
      generators: ['omit-one', 'random'],
      samples: 150,
      recoveryCrashes: 0,
      viewBeforeRecovery: false,
    });
    console.log(`without flushes: ${summariseCampaign(result)}`);
    expect(result.totals.SILENT_BAD + result.totals.DATA_LOSS).toBeGreaterThan(0);
  });

  it('ran campaigns for every pair', () => {
    const pairs = new Set(ran);
    for (const source of sources) for (const target of targets) if (source !== target) expect(pairs.has(`${source.name}->${target.name}`), `${source.name} → ${target.name}`).toBe(true);
  });
});
