import { describe, expect, it } from 'vitest';
import { convertInPlace, hasCapability, isIcError, Registry, type Driver } from '@ic/core';
import { FAILING_OUTCOMES } from './classify.js';
import { runCrashCampaign, type CampaignResult, type EnumerationResult } from './campaign.js';
import type { GeneratorName } from './enumerate.js';
import { DroppedFlushesIO } from './recording-io.js';
import { summariseCampaign } from './report.js';
import { buildCrashSource, canBeCrashSource, crashShapes, type CrashShape } from './sources.js';
import { coverageOf, rotation, type Coverage } from '../coverage.js';

export interface CrashSuiteOptions {
  /** Cluster size the sources are built with (default 65536), moved into each source driver's range. */
  clusterSize?: number;
  /** Default: prefix, omit-one, tear-512, subsets, extension, random. */
  generators?: readonly GeneratorName[];
  /** Random states per conversion (default 200). */
  samples?: number;
  /** All subsets only for epochs of at most this many pending operations (default 10). */
  maxSubsetOps?: number;
  /** Interrupted states whose recovery is crashed, per conversion (default 3). */
  recoveryCrashes?: number;
  shapes?: readonly CrashShape[];
  /** Only the pairs with this driver as source or target (a driver's own campaigns against its partners). */
  subject?: Driver;
  /** Run only every `of`-th pair starting at `index`, so that the pairs can be spread over test files. */
  part?: { index: number; of: number };
  /** Only the ordered pairs this accepts (default: every pair), e.g. the conversions into one new driver. */
  pairs?: (source: Driver, target: Driver) => boolean;
  /** Milliseconds one campaign may take (default: vitest's testTimeout). Campaigns over large clusters take minutes. */
  timeout?: number;
  /** Also show that an engine without flushes is caught (default true for part 0). */
  selfTest?: boolean;
  /**
   * 'full' (default, or IC_KIT_COVERAGE): every shape for every pair. 'covering': one shape per pair, rotating, and a
   * quarter of the random states (every generator still runs).
   */
  coverage?: Coverage;
}

/** The cluster size the source is built with: the requested one, moved into the driver's range. */
function nearestClusterSize(driver: Driver, clusterSize: number): number {
  const range = driver.inPlace?.clusterSizes;
  return range ? Math.min(range.max, Math.max(range.min, clusterSize)) : clusterSize;
}

function failureList(result: Pick<EnumerationResult, 'failures'>): string {
  return result.failures.map((f) => `${f.phase} ${f.outcome} [${f.generator}] ${f.state}: ${f.detail}`).join('\n');
}

/** Under 'covering', the most data a campaign's source image may hold. */
const COVERING_DATA_LIMIT = 4 * 1024 * 1024;

/** Bytes of data a shape writes at `clusterSize` (its backing image not counted). */
function dataBytes(shape: CrashShape, clusterSize: number): number {
  return shape.content(clusterSize).data.reduce((sum, run) => sum + run.bytes.length, 0);
}

/**
 * No silently wrong state, no data loss, no untyped error and nothing refused, in the campaign and in its crashed
 * recoveries: what any crash-safe operation must pass under the adopted model (a conversion, a defrag, a repair).
 */
export function expectNoBadStates(result: CampaignResult): void {
  for (const outcome of [...FAILING_OUTCOMES, 'DETECTED_REFUSED'] as const) expect(result.totals[outcome], failureList(result)).toBe(0);
  const recovery = result.recovery.result;
  if (recovery) for (const outcome of [...FAILING_OUTCOMES, 'DETECTED_REFUSED'] as const) expect(recovery.totals[outcome], failureList(recovery)).toBe(0);
}

/** The assertions every conversion campaign under the adopted model must pass. */
export function expectCrashSafe(result: CampaignResult): void {
  expectNoBadStates(result);
  expect(result.totals.OLD_INTACT + result.totals.RECOVERED_OLD, 'the old image is seen').toBeGreaterThan(0);
  expect(result.totals.NEW_INTACT + result.totals.RECOVERED_NEW, 'the new image is seen').toBeGreaterThan(0);
  // A raw source grows without a record only while the record itself is in flight (the first epoch).
  result.epochs.slice(1).forEach((epoch, i) => expect(epoch.outcomes.OLD_INTACT_GROWN, `epoch ${i + 1}`).toBe(0));
  expect(result.recovery.result, 'recovery was crashed too').toBeDefined();
}

/**
 * Crash campaigns for every ordered pair of `drivers` (source: an in-place source that can build images, or
 * a raw-like driver; target: an in-place target) × every crash shape, as vitest tests. A pair whose target
 * cannot represent a shape (refused up front with UNSUPPORTED) is skipped.
 */
export function describeCrashCampaigns(drivers: readonly Driver[], options: CrashSuiteOptions = {}): void {
  const registry = new Registry(drivers);
  const sources = drivers.filter(canBeCrashSource);
  const targets = drivers.filter((d) => hasCapability(d, 'inPlaceTarget') && d.inPlace !== undefined);
  const clusterSize = options.clusterSize ?? 65536;
  const generators = options.generators ?? ['prefix', 'omit-one', 'tear-512', 'subsets', 'extension', 'random'];
  const part = options.part ?? { index: 0, of: 1 };
  const accepts = options.pairs ?? (() => true);
  const pairs = sources
    .flatMap((source) => targets.filter((target) => target !== source && accepts(source, target)).map((target) => [source, target] as const))
    .filter(([source, target]) => options.subject === undefined || source === options.subject || target === options.subject)
    .filter((_, i) => i % part.of === part.index);
  const ran = new Set<string>();
  const coverage = coverageOf(options.coverage);
  const samples = options.samples ?? (coverage === 'full' ? 200 : 50);

  describe.runIf(pairs.length > 0)(`crash campaigns (${drivers.map((d) => d.name).join(', ')}; part ${part.index + 1} of ${part.of})`, () => {
    for (const [source, target] of pairs) {
      describe(`${source.name} → ${target.name}`, () => {
        const pairShapes = (options.shapes ?? crashShapes).filter((shape) => !shape.needsBacking || (hasCapability(source, 'backing') && hasCapability(target, 'backing')));
        /** One campaign, or the target's up-front refusal (nothing written, nothing to crash). */
        const campaignOn = async (shape: CrashShape): Promise<CampaignResult | { refused: string }> => {
          const built = await buildCrashSource(source, shape, nearestClusterSize(source, clusterSize));
          const result = await runCrashCampaign({
            registry,
            sourceDriver: source.name,
            targetDriver: target.name,
            buildSource: async () => built.io,
            expectedContent: built.expected,
            ...(built.openOptions ? { openOptions: built.openOptions } : {}),
            generators,
            samples,
            maxSubsetOps: options.maxSubsetOps ?? 10,
            recoveryCrashes: options.recoveryCrashes ?? 3,
            recoverySamples: 30,
            viewBeforeRecovery: false,
            seed: 1,
          }).catch((error: unknown) => error);
          if (isIcError(result) && result.code === 'UNSUPPORTED') return { refused: result.message };
          if (result instanceof Error) throw result;
          return result as CampaignResult;
        };
        const judge = (shape: CrashShape, campaign: CampaignResult) => {
          console.log(`${source.name} → ${target.name}, ${shape.name}: ${summariseCampaign(campaign)}`);
          expectCrashSafe(campaign);
          ran.add(`${source.name}->${target.name}`);
        };
        if (coverage === 'full') {
          for (const shape of pairShapes) {
            it(shape.name, { ...(options.timeout ? { timeout: options.timeout } : {}) }, async (context) => {
              const result = await campaignOn(shape);
              if ('refused' in result) return context.skip(result.refused);
              judge(shape, result);
            });
          }
          return;
        }
        // Covering: one shape per pair, rotating from a place of the pair's own; the empty image teaches least, and a
        // shape the target refuses up front hands on to the next one. Every crash state copies the image, so shapes
        // holding more than 4 MiB of data at the source's cluster size (1 MiB blocks make 'full' 16 MiB) are left to
        // the full run.
        const sourceClusterSize = nearestClusterSize(source, clusterSize);
        const small = pairShapes.filter((shape) => shape.name !== 'empty' && dataBytes(shape, sourceClusterSize) <= COVERING_DATA_LIMIT);
        const candidates = small.length > 0 ? small : pairShapes;
        const first = rotation(`${source.name} -> ${target.name}`) % candidates.length;
        const order = [...candidates.slice(first), ...candidates.slice(0, first)];
        it(`${order[0]!.name} (covering: one shape per pair)`, { ...(options.timeout ? { timeout: options.timeout } : {}) }, async (context) => {
          for (const shape of order) {
            const result = await campaignOn(shape);
            if ('refused' in result) continue;
            return judge(shape, result);
          }
          context.skip(`${target.name} refuses every shape up front`);
        });
      });
    }

    if (options.selfTest ?? part.index === 0) {
      it('catches an engine that drops its flushes (the harness can fail)', async () => {
        const [source, target] = pairs.find(([s]) => s.inPlace !== undefined) ?? pairs[0]!;
        const shape = crashShapes.find((s) => s.name === 'checkerboard')!;
        const built = await buildCrashSource(source, shape, clusterSize);
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
    }

    it('ran campaigns for every pair', () => {
      for (const [source, target] of pairs) expect(ran.has(`${source.name}->${target.name}`), `${source.name} → ${target.name}`).toBe(true);
    });
  });
}
