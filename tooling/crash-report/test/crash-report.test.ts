/**
 * The crash-safety report: every ordered pair of installed drivers × every crash shape, with the full
 * generator set and 10,000 random states per conversion, crashes inside recovery, an I/O error at every
 * call, qemu-img cross-checks of sampled states, and a sensitivity run (an engine that drops its flushes).
 * Prints the tables and writes them into docs/crash-safety.md between the report markers.
 *
 * Skipped unless IC_CRASH_REPORT=1:
 *   IC_CRASH_REPORT=1 pnpm exec vitest run --project @ic/crash-report
 * Knobs: IC_CRASH_SAMPLES (10000), IC_CRASH_SEED (1), IC_CRASH_CLUSTER_SIZES ("65536"), IC_CRASH_WRITE_DOC (1),
 * IC_CRASH_DRIVERS ("all": the eight first-party drivers; "first": qcow2, QED, VMDK, raw), IC_CRASH_PAIRS
 * ("from:to,..."; every ordered pair when unset).
 */
import { closeSync, existsSync, ftruncateSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { convertInPlace, hasCapability, isIcError, Registry, type Driver, type MemoryIO } from '@ic/core';
import { qemuAvailable, qemuCheck, qemuCompare, tempDir } from '@ic/test-utils';
import {
  buildCrashSource,
  canBeCrashSource,
  crashShapes,
  describeFault,
  DroppedFlushesIO,
  formatCampaignTable,
  formatTotals,
  generatorLegend,
  GENERATORS,
  OUTCOME_COLUMNS,
  OUTCOMES,
  runCrashCampaign,
  runFaultSweep,
  SparseBytes,
  summariseCampaign,
  type CampaignResult,
  type CrashSource,
  type GuestContent,
  type Outcome,
  type ReportRow,
  type View,
  WEAK_DEVICE_GENERATORS,
} from '../../../packages/conformance/src/crash/index.js';
import { installedDrivers } from '../../../packages/conformance/test/installed-drivers.js';

const enabled = process.env.IC_CRASH_REPORT === '1';
const SAMPLES = Number(process.env.IC_CRASH_SAMPLES ?? 10_000);
const SEED = Number(process.env.IC_CRASH_SEED ?? 1);
const CLUSTER_SIZES = (process.env.IC_CRASH_CLUSTER_SIZES ?? '65536').split(',').map(Number);
const WRITE_DOC = process.env.IC_CRASH_WRITE_DOC !== '0';
/** 'all' (default): the eight first-party drivers; 'first': qcow2, QED, VMDK and raw, as the first reports ran. */
const DRIVER_SET = process.env.IC_CRASH_DRIVERS ?? 'all';
/** Only these ordered pairs ("from:to,from:to"), when set; every pair otherwise. */
const PAIRS = process.env.IC_CRASH_PAIRS ? new Set(process.env.IC_CRASH_PAIRS.split(',')) : undefined;
const DOC = fileURLToPath(new URL('../../../docs/crash-safety.md', import.meta.url));
const BEGIN = '<!-- crash-report:begin -->';
const END = '<!-- crash-report:end -->';
/** Sampled states per conversion checked with qemu-img (one per outcome and epoch, up to this many). */
const QEMU_SAMPLES = 8;


function writeSparse(path: string, bytes: SparseBytes): void {
  const fd = openSync(path, 'w');
  try {
    for (const [offset, chunk] of bytes.dataChunks()) writeSync(fd, chunk, 0, chunk.length, offset);
    ftruncateSync(fd, bytes.length);
  } finally {
    closeSync(fd);
  }
}

function writeGuest(path: string, content: GuestContent, windowSize: number): void {
  const fd = openSync(path, 'w');
  try {
    for (const [w, bytes] of content.windows) writeSync(fd, bytes, 0, bytes.length, w * windowSize);
    ftruncateSync(fd, content.virtualSize);
  } finally {
    closeSync(fd);
  }
}

interface QemuSample {
  outcome: Outcome;
  format: string;
  bytes: SparseBytes;
  state: string;
}

interface QemuTally {
  checked: number;
  checkAgrees: number;
  compared: number;
  compareAgrees: number;
  disagreements: string[];
}

/**
 * IC_CRASH_CLUSTER_SIZES moved into a source's range (VDI and VHDX have 1 MiB blocks only): each size, or the
 * nearest bound of the driver's inPlace.clusterSizes.
 */
function sourceClusterSizes(driver: Driver): number[] {
  const range = driver.inPlace?.clusterSizes;
  if (!range) return CLUSTER_SIZES;
  return [...new Set(CLUSTER_SIZES.map((size) => Math.min(range.max, Math.max(range.min, size))))];
}

function row(cells: readonly (string | number)[]): string {
  return `| ${cells.join(' | ')} |`;
}

describe.runIf(enabled)('crash-safety report', () => {
  it('measures every pair × shape and writes docs/crash-safety.md', { timeout: 6 * 3600_000 }, async () => {
    const started = Date.now();
    const drivers = await installedDrivers({ all: DRIVER_SET !== 'first' });
    const registry = new Registry(drivers);
    const sources = drivers.filter(canBeCrashSource);
    const targets = drivers.filter((d) => hasCapability(d, 'inPlaceTarget') && d.inPlace !== undefined);
    expect(sources.length).toBeGreaterThan(0);
    expect(targets.length).toBeGreaterThan(0);
    const useQemu = qemuAvailable();
    const scratch = tempDir('ic-crash-report-');

    const rows: ReportRow[] = [];
    const skipped: string[] = [];
    const failures: string[] = [];
    const qemu: QemuTally = { checked: 0, checkAgrees: 0, compared: 0, compareAgrees: 0, disagreements: [] };
    const faultRows: string[] = [];
    const mutantRows: string[] = [];
    const beforeRecovery: Partial<Record<View, number>> = {};
    /** Non-intact views before recovery, by pair and reason. */
    const unrecoveredViews = new Map<string, number>();
    const weakRows: ReportRow[] = [];
    const weakBad = new Map<string, number>();

    try {
      for (const source of sources) {
        for (const target of targets) {
          if (source === target || (PAIRS && !PAIRS.has(`${source.name}:${target.name}`))) continue;
          const pair = `${source.name} → ${target.name}`;
          for (const clusterSize of sourceClusterSizes(source)) {
            for (const shape of crashShapes) {
              if (shape.needsBacking && !(hasCapability(source, 'backing') && hasCapability(target, 'backing'))) continue;
              let built: CrashSource;
              try {
                built = await buildCrashSource(source, shape, clusterSize);
              } catch (error) {
                skipped.push(`${pair}, ${shape.name}, ${clusterSize}: source not built (${isIcError(error) ? error.message : String(error)})`);
                continue;
              }
              const samples: QemuSample[] = [];
              const sampled = new Set<string>();
              let result: CampaignResult;
              try {
                result = await runCrashCampaign({
                  registry,
                  sourceDriver: source.name,
                  targetDriver: target.name,
                  buildSource: async () => built.io,
                  expectedContent: built.expected,
                  ...(built.openOptions ? { openOptions: built.openOptions } : {}),
                  generators: GENERATORS,
                  samples: SAMPLES,
                  seed: SEED,
                  onState: async ({ phase, state, classification, io, describe: describeState }) => {
                    const view = classification.beforeRecovery;
                    if (view && view !== 'old' && view !== 'new' && view !== 'old-grown') {
                      const reason = `${pair}: ${view}: ${(classification.beforeRecoveryDetail ?? '').replace(/\d+/g, 'N')}`;
                      unrecoveredViews.set(reason, (unrecoveredViews.get(reason) ?? 0) + 1);
                    }
                    if (!useQemu || phase !== 'conversion' || samples.length >= QEMU_SAMPLES) return;
                    const outcome = classification.outcome;
                    if (!['OLD_INTACT', 'NEW_INTACT', 'RECOVERED_OLD', 'RECOVERED_NEW'].includes(outcome)) return;
                    const slot = `${outcome}:${state.epoch}`;
                    if (sampled.has(slot)) return;
                    sampled.add(slot);
                    const format = outcome.endsWith('OLD') || outcome === 'OLD_INTACT' ? source.name : target.name;
                    samples.push({ outcome, format, bytes: await SparseBytes.fromIO(io as MemoryIO), state: describeState() });
                  },
                });
              } catch (error) {
                if (isIcError(error) && error.code === 'UNSUPPORTED') {
                  skipped.push(`${pair}, ${shape.name}, ${clusterSize}: ${error.message}`);
                } else {
                  // The undisturbed conversion itself failed: nothing to enumerate, and a failure to report.
                  failures.push(`${pair}, ${shape.name}, ${clusterSize}: the conversion failed: ${error instanceof Error ? error.message : String(error)}`);
                }
                continue;
              }
              console.log(`${shape.name} (${clusterSize}): ${summariseCampaign(result)}`);
              rows.push({ pair, shape: shape.name, clusterSize, result });
              for (const [view, count] of Object.entries(result.beforeRecovery) as [View, number][]) beforeRecovery[view] = (beforeRecovery[view] ?? 0) + count;
              for (const f of [...result.failures, ...(result.recovery.result?.failures ?? [])]) failures.push(`${pair}, ${shape.name}: ${f.phase} ${f.outcome} [${f.generator}] ${f.state}: ${f.detail}`);

              // qemu-img's view of sampled intact states: check clean (leaks allowed) and the same guest bytes.
              if (samples.length > 0) {
                const pristinePath = scratch.path('pristine.raw');
                writeGuest(pristinePath, built.expected, 1024 * 1024);
                if (built.backingIo && built.expected.backingName) writeSparse(scratch.path(built.expected.backingName), await SparseBytes.fromIO(built.backingIo));
                for (const sample of samples) {
                  const statePath = scratch.path('state.img');
                  writeSparse(statePath, sample.bytes);
                  const driver = registry.get(sample.format);
                  if (hasCapability(driver, 'check')) {
                    const check = qemuCheck(statePath, sample.format);
                    qemu.checked++;
                    if (check.code === 0 || check.code === 3) qemu.checkAgrees++;
                    else qemu.disagreements.push(`${pair}, ${shape.name}: ${sample.outcome} ${sample.state}: qemu-img check exit ${check.code}: ${check.text.trim().split('\n')[0]}`);
                  }
                  const compare = qemuCompare(statePath, sample.format, pristinePath, 'raw');
                  qemu.compared++;
                  if (compare.code === 0) qemu.compareAgrees++;
                  else qemu.disagreements.push(`${pair}, ${shape.name}: ${sample.outcome} ${sample.state}: qemu-img compare exit ${compare.code}: ${(compare.stdout + compare.stderr).trim().split('\n')[0]}`);
                }
              }

              // Beyond the model: LINEAR tears and GARBAGE sectors (measured, not required to be clean).
              const weak = await runCrashCampaign({
                registry,
                sourceDriver: source.name,
                targetDriver: target.name,
                buildSource: async () => built.io,
                expectedContent: built.expected,
                ...(built.openOptions ? { openOptions: built.openOptions } : {}),
                generators: WEAK_DEVICE_GENERATORS,
                samples: 0,
                seed: SEED,
                recoveryCrashes: 0,
                viewBeforeRecovery: false,
                keepFailures: 1000,
              });
              weakRows.push({ pair, shape: shape.name, clusterSize, result: weak });
              for (const f of weak.failures) {
                // Name the write the weak model damaged (the one torn at a byte or filled with garbage).
                const hit = /write (\d+)@(\d+): (sectors garbage|torn \(t1\[)/.exec(f.state);
                const damaged = hit ? `a ${hit[3]!.startsWith('torn') ? 'byte-torn' : 'garbage-filled'} ${hit[1]}-byte write ${Number(hit[2]) < 512 ? 'in sector 0' : 'past sector 0'}` : f.state;
                const reason = `${pair}: ${f.outcome} after ${damaged}: ${f.detail.replace(/\d+/g, 'N')}`;
                weakBad.set(reason, (weakBad.get(reason) ?? 0) + 1);
              }

              // G7: an I/O error at every call, on the checkerboard shape only (one per pair and cluster size).
              if (shape.name === 'checkerboard') {
                try {
                  const sweep = await runFaultSweep({
                    registry,
                    sourceDriver: source.name,
                    targetDriver: target.name,
                    buildSource: async () => built.io,
                    expectedContent: built.expected,
                  });
                  const outcomes = OUTCOMES.filter((o) => sweep.outcomes[o] > 0)
                    .map((o) => `${OUTCOME_COLUMNS[o]} ${sweep.outcomes[o]}`)
                    .join(', ');
                  faultRows.push(row([pair, clusterSize, `${sweep.writes}/${sweep.truncates}/${sweep.flushes}`, sweep.runs.length, sweep.wrongErrors.length, sweep.unsafe.length, outcomes]));
                  for (const run of [...sweep.wrongErrors, ...sweep.unsafe]) {
                    failures.push(`${pair} fault ${describeFault(run.fault)}: ${run.result === 'completed' ? 'completed' : run.result.message} → ${run.classification.outcome} ${run.classification.detail}`);
                  }

                  // Sensitivity: the same conversion with its flushes dropped must be caught.
                  const mutant = await runCrashCampaign({
                    registry,
                    sourceDriver: source.name,
                    targetDriver: target.name,
                    buildSource: async () => built.io,
                    operation: async (io) => {
                      await convertInPlace({ io: new DroppedFlushesIO(io), source, target });
                      await io.flush();
                    },
                    generators: ['omit-one', 'subsets', 'random'],
                    samples: 2000,
                    seed: SEED,
                    recoveryCrashes: 0,
                    viewBeforeRecovery: false,
                  });
                  mutantRows.push(row([pair, clusterSize, mutant.states, mutant.unique, ...OUTCOMES.map((o) => mutant.totals[o])]));
                } catch (error) {
                  failures.push(`${pair}, ${clusterSize}: fault sweep or sensitivity run failed: ${error instanceof Error ? error.message : String(error)}`);
                }
              }
            }
          }
        }
      }
    } finally {
      scratch.cleanup();
    }

    const minutes = ((Date.now() - started) / 60_000).toFixed(1);
    const versions = drivers.map((d) => `${d.name} ${d.version}`).join(', ');
    const views = Object.entries(beforeRecovery)
      .map(([view, count]) => `${view} ${count}`)
      .join(', ');
    const report = [
      `Measured ${new Date().toISOString().slice(0, 10)} on Node ${process.version}: drivers ${versions}; seed ${SEED}; ${SAMPLES} random states (G5) per conversion; cluster sizes ${CLUSTER_SIZES.join(', ')}; ${minutes} min.`,
      `Command: \`IC_CRASH_REPORT=1 IC_CRASH_SAMPLES=${SAMPLES} IC_CRASH_CLUSTER_SIZES=${CLUSTER_SIZES.join(',')} IC_CRASH_DRIVERS=${DRIVER_SET}${PAIRS ? ` IC_CRASH_PAIRS=${[...PAIRS].join(',')}` : ''} pnpm exec vitest run --project @ic/crash-report\`.`,
      '',
      '#### Totals',
      '',
      formatTotals(rows.map((r) => r.result)),
      '',
      '#### Per conversion',
      '',
      `Generator columns count the states each generator produced (duplicates included; "unique" counts distinct states, each classified once): ${generatorLegend()}. "ops (w/f)" is the recorded trace (writes / flushes); "max |P|" the largest number of pending operations in one epoch. "recovery crash states" are the crash states of recordings of recover() itself (up to 6 interrupted states per conversion, both directions), each classified after a second recovery; "recovery bad" counts SILENT_BAD + DATA_LOSS + UNTYPED among them.`,
      '',
      formatCampaignTable(rows),
      '',
      '#### What a reader that does not recover sees',
      '',
      `States that carry an interrupted-conversion mark (intent record or transitional sector), opened as they are by probing (old = the source, intact; old-grown = a raw source with the record appended; new = the target, intact; other-format = probed as another format, e.g. raw; wrong = opens with wrong content): ${views || 'none'}.`,
      '',
      unrecoveredViews.size > 0
        ? `Where such a reader does not see an intact image (count of distinct states, numbers in messages replaced by N):\n\n${[...unrecoveredViews].map(([reason, count]) => `- ${count} × ${reason}`).join('\n')}`
        : 'Every such state reads intact without recovery.',
      '',
      '#### qemu-img cross-check of sampled states',
      '',
      useQemu
        ? `${qemu.checked} sampled intact or recovered states checked with \`qemu-img check -f FMT\` (${qemu.checkAgrees} clean or leaks only), ${qemu.compared} compared with the pristine guest bytes by \`qemu-img compare -f FMT -F raw\` (${qemu.compareAgrees} identical).${qemu.disagreements.length > 0 ? ` Disagreements:\n\n${qemu.disagreements.map((d) => `- ${d}`).join('\n')}` : ''}`
        : 'qemu-img was not installed: no cross-check.',
      '',
      '#### I/O errors at every call (G7), checkerboard shape',
      '',
      row(['pair', 'cluster', 'writes/truncates/flushes', 'runs', 'wrong error', 'unsafe store', 'outcomes of the store left behind']),
      row(['---', '---', '---', '---', '---', '---', '---']),
      ...faultRows,
      '',
      '#### Sensitivity: the same conversions with every flush dropped',
      '',
      'An engine that forgets its barriers turns the whole conversion into one epoch. The harness must report failures here; a row of zeros in SILENT_BAD and DATA_LOSS would mean it cannot see a broken write order.',
      '',
      row(['pair', 'cluster', 'states', 'unique', ...OUTCOMES.map((o) => OUTCOME_COLUMNS[o])]),
      row(['---', '---', '---', '---', ...OUTCOMES.map(() => '---')]),
      ...mutantRows,
      '',
      '#### Beyond the model: devices that are not 512-byte atomic',
      '',
      `LINEAR = a write cut at a byte that is not a sector boundary (up to 4 cuts per write); G3 = every sector a write overlaps filled with random bytes. Each with the rest of the epoch kept or lost. Not required to be clean; DETECTED_REFUSED is the acceptable result here (reliability.md §2.2).`,
      '',
      formatCampaignTable(weakRows, WEAK_DEVICE_GENERATORS),
      '',
      weakBad.size > 0
        ? `Where these models produce SILENT_BAD, DATA_LOSS or UNTYPED (distinct states; numbers replaced by N):\n\n${[...weakBad].map(([reason, count]) => `- ${count} × ${reason}`).join('\n')}`
        : 'No SILENT_BAD, DATA_LOSS or UNTYPED under these models either.',
      '',
      '#### Not run',
      '',
      skipped.length > 0 ? skipped.map((s) => `- ${s}`).join('\n') : 'Nothing was skipped.',
      '',
      '#### Failing states',
      '',
      failures.length > 0 ? failures.slice(0, 50).map((f) => `- ${f}`).join('\n') : 'None: SILENT_BAD, DATA_LOSS and UNTYPED_ERROR are 0 in every conversion, every crashed recovery and every fault run.',
    ].join('\n');
    console.log(report);

    if (WRITE_DOC) {
      const doc = existsSync(DOC) ? readFileSync(DOC, 'utf8') : `# Crash safety\n\n${BEGIN}\n${END}\n`;
      const from = doc.indexOf(BEGIN);
      const to = doc.indexOf(END);
      const next = from >= 0 && to > from ? `${doc.slice(0, from + BEGIN.length)}\n${report}\n${doc.slice(to)}` : `${doc.trimEnd()}\n\n${BEGIN}\n${report}\n${END}\n`;
      writeFileSync(DOC, next);
    }

    expect(failures, failures.slice(0, 10).join('\n')).toEqual([]);
    expect(qemu.disagreements, qemu.disagreements.slice(0, 10).join('\n')).toEqual([]);
  });
});
