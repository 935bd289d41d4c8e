import { convertInPlace, isIcError, parseOptions, recover, type ConversionReport, type Image } from '@ic/core';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, UsageError, printable, usage, type Context } from '../context.js';
import { BackingChain, namedDriver, openFile, probeDriver } from '../images.js';
import { createProgress } from '../progress.js';
import { sizeToString } from '../qemu-text.js';

export interface ConvertOptions {
  format?: string;
  o: string[];
  progress: boolean;
  dryRun: boolean;
  zeroScan?: boolean;
  compact?: string;
  output: 'human' | 'json';
}

function bytes(value: number): string {
  return value < 1024 ? `${value} bytes` : `${value} bytes (${sizeToString(value)})`;
}

/** The human summary of a conversion or of its plan (--dry-run). */
export function conversionSummary(filename: string, report: ConversionReport): string {
  const lines: string[] = [];
  const pair = `${report.sourceFormat} to ${report.targetFormat}`;
  lines.push(report.dryRun ? `Plan for converting '${filename}' from ${pair} in place (dry run: nothing was written)\n` : `Converted '${filename}' from ${pair} in place\n`);
  const row = (label: string, text: string) => lines.push(`  ${`${label}:`.padEnd(15)} ${text}\n`);
  row('virtual size', `${sizeToString(report.virtualSize)} (${report.virtualSize} bytes)`);
  row('cluster size', `${report.sourceClusterSize} -> ${report.targetClusterSize} (${report.geometryReason})`);
  row(
    'clusters',
    `${report.clustersKept} kept in place, ${report.clustersRelocated} relocated (${bytes(report.bytesRelocated)} ${report.dryRun ? 'to move' : 'moved'}), ` +
      `${report.zeroClusters} zero, ${report.unallocatedClusters} unallocated`,
  );
  row('metadata', `${bytes(report.metadataBytes)} of tables, ${report.headerBytes}-byte header${report.dryRun ? '' : ` (commit: ${report.commit})`}`);
  row('file size', `${bytes(report.fileSizeBefore)} -> ${bytes(report.fileSizeAfter)}${report.dryRun ? ' (planned)' : ''}`);
  row('I/O', `${bytes(report.io.bytesRead)} read, ${bytes(report.io.bytesWritten)} written, ${report.io.flushes} flushes`);
  row('time', `${report.durationMs} ms`);
  if (!report.dryRun) row('verified', report.verified ? 'yes (reopened: the new map matches the plan)' : 'no');
  return lines.join('');
}

/** `ic convert-inplace`: rewrites the metadata around the data already in the file (see @ic/core convertInPlace). */
export async function convertCommand(context: Context, filename: string, targetName: string, options: ConvertOptions): Promise<number> {
  const named = namedDriver(context, options.format);
  const target = usage(() => context.registry.get(targetName));
  const targetOptions = usage(() => parseOptions(options.o, target.options ?? [], target.name));
  // The target's cluster size option is checked against the sizes its in-place factory declares, as a usage error.
  const clusterSizeOption = target.inPlace?.clusterSizeOption;
  const requested = clusterSizeOption === undefined ? undefined : targetOptions[clusterSizeOption];
  if (target.inPlace && typeof requested === 'number') {
    const { min, max } = target.inPlace.clusterSizes;
    if (!Number.isSafeInteger(requested) || requested < min || requested > max || (requested & (requested - 1)) !== 0) {
      throw new UsageError(`${target.name}: ${clusterSizeOption}=${requested} must be a power of two from ${min} to ${max} for an in-place conversion`);
    }
  }
  const compact = options.compact ?? 'auto';
  if (compact !== 'auto' && compact !== 'always' && compact !== 'never') throw new UsageError(`--compact takes auto, always or never, not '${compact}'`);
  // A dry run reads the whole mapping: it takes qemu-img map's read locks, so it is refused while a VM writes.
  const io = withKillSwitch(await openFile(context, filename, options.dryRun ? 'read' : 'write'));
  try {
    if (!options.dryRun) {
      // Every command that writes first finishes or undoes an interrupted conversion.
      const recovered = await recover(io);
      if (recovered.action !== 'none') context.err(`ic: ${printable(filename)}: ${recovered.detail}\n`);
    }
    // A dry run is refused like the real run when only raw would claim the file: it previews that run.
    const source = named ?? (await probeDriver(context, io, 'write'));
    // Some targets record facts about the backing file (VMDK: its CID), so open it read-only when there is one.
    const sourceImage = await source.open(io, { untrusted: context.untrusted });
    let chain: BackingChain | undefined;
    let backing: Image | undefined;
    if (sourceImage.info().backing && !context.untrusted) {
      chain = await BackingChain.start(context, { filename, io, driver: source, image: sourceImage, close: async () => undefined });
      try {
        backing = (await chain.below(chain.top))?.opened.image;
      } catch (error) {
        if (!isIcError(error)) throw error;
        context.err(`ic: warning: ${printable(error.message)}\n`);
      }
    }
    const progress = createProgress(context, options.progress);
    let report: ConversionReport;
    try {
      report = await convertInPlace({
        io,
        source,
        target,
        targetOptions,
        dryRun: options.dryRun,
        zeroScan: options.zeroScan === true,
        compact,
        // Only --no-lock writes through a file whose locks are not held; the engine refuses that otherwise.
        allowUnlocked: !context.lock,
        openOptions: { untrusted: context.untrusted, ...(backing ? { backing } : {}) },
        ...(progress.onProgress ? { onProgress: progress.onProgress } : {}),
      });
    } finally {
      progress.finish();
      await chain?.close();
    }
    context.out(options.output === 'json' ? `${JSON.stringify(report, null, 4)}\n` : conversionSummary(filename, report));
    return EXIT.OK;
  } finally {
    await io.close().catch(() => undefined);
  }
}
