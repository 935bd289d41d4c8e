import { IcError, convertInPlace, convertToIdentity, hasCapability, isIcError, parseOptions, recover, type ConversionReport, type Driver, type IdentityReport, type Image, type OptionValues } from '@ic/core';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, UsageError, errorLine, printable, usage, type Context } from '../context.js';
import { BackingChain, namedDriver, openFile, probeDriver } from '../images.js';
import { createProgress } from '../progress.js';
import { sizeToString } from '@ic/qemu-output';

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
  const packing = report.compaction;
  if (packing) {
    row(
      'packing',
      report.dryRun
        ? `planned: ${packing.reason}`
        : packing.done
          ? `${packing.unitsMoved} clusters moved (${bytes(packing.bytesMoved)}), ${packing.leaksLeft} unreferenced left: ${packing.reason}`
          : `not done, ${packing.leaksLeft} unreferenced clusters left (qemu-img check counts them as leaks): ${packing.reason}`,
    );
  }
  const release = report.release;
  if (release) {
    const parts = [`${bytes(release.bytesReleased)} ${report.dryRun ? 'to give back (estimate)' : 'given back'} to the file system`];
    if (!report.dryRun && release.bytesTruncated > 0) parts.push(`${bytes(release.bytesTruncated)} of it by cutting the tail`);
    if (release.bytesLeft > 0) parts.push(`${bytes(release.bytesLeft)} not (${release.reason})`);
    else if (release.bytesReleased === 0) parts.push(release.reason);
    row('released', parts.join(', '));
  }
  row('time', `${report.durationMs} ms`);
  if (!report.dryRun) row('verified', report.verified ? 'yes (reopened: the new map matches the plan)' : 'no');
  return lines.join('');
}

/** The human summary of a conversion to an identity format (raw), or of its plan. */
export function identitySummary(filename: string, report: IdentityReport): string {
  const lines: string[] = [];
  const pair = `${report.sourceFormat} to ${report.targetFormat}`;
  lines.push(report.dryRun ? `Plan for converting '${filename}' from ${pair} in place (dry run: nothing was written)\n` : `Converted '${filename}' from ${pair} in place\n`);
  const row = (label: string, text: string) => lines.push(`  ${`${label}:`.padEnd(15)} ${text}\n`);
  row('virtual size', `${sizeToString(report.virtualSize)} (${report.virtualSize} bytes)`);
  row('cluster size', `${report.clusterSize}`);
  row('clusters', `${report.dataUnits} data clusters, ${report.unitsOutOfPlace} units out of place (data off its guest offset, tables)`);
  row(report.dryRun ? 'moves' : 'moved', `${report.unitsMoved} units${report.dryRun ? ' to move' : ''}, ${bytes(report.bytesMoved)}, in ${report.waves} waves`);
  row('zero-filled', `${report.clustersZeroed} clusters (left by moved data and old metadata)`);
  if (!report.dryRun) row('holes punched', `${report.clustersPunched} clusters given back to the file system (old places of moved data, zero-filled clusters)`);
  row('at the commit', `${report.reservedClusters} clusters under the old header and fixed metadata: ${report.reservedData} get their data, the rest zeros`);
  row('file size', `${bytes(report.fileSizeBefore)} -> ${bytes(report.fileSizeAfter)}${report.dryRun ? ' (planned)' : ''}`);
  row('extra space', `${bytes(report.extraBytes)} past the larger of the old file and the disk, at most`);
  return lines.join('');
}

/** Prints the report; a signal that arrived while the engine found no safe point to stop is said and counted. */
function finished(context: Context, filename: string, text: string, targetFormat: string, signal: AbortSignal | undefined): number {
  context.out(text);
  if (signal?.aborted) {
    // The engine did not stop (it found no safe point before the end): the conversion is complete and valid.
    context.err(errorLine(`${filename}: ${context.interrupts.cause} arrived, but the conversion could not be stopped before it completed: the image is now ${targetFormat}`, 'INTERRUPTED'));
    return context.interrupts.exitStatus();
  }
  return EXIT.OK;
}

/** `ic convert-inplace IMAGE raw`: the data permuted into guest order, the metadata dropped (see @ic/core convertToIdentity). */
async function identityFile(context: Context, filename: string, target: Driver, options: ConvertOptions, signal: AbortSignal | undefined, named: Driver | undefined): Promise<number> {
  const { activity, interrupts } = context;
  activity.phase = 'open';
  const io = withKillSwitch(await openFile(context, filename, options.dryRun ? 'read' : 'write'));
  try {
    if (signal) interrupts.throwIfStopped(filename, 'before anything was written; the image is unchanged');
    if (!options.dryRun) {
      activity.phase = 'recover';
      const recovery = await recover(io, { drivers: context.registry });
      if (recovery.action !== 'none') context.err(`ic: ${printable(filename)}: ${recovery.detail}\n`);
      // An interrupted conversion to this very format that the recovery finished: the job is done.
      if (recovery.action === 'rolled-forward' && recovery.format === target.name) {
        context.out(`'${filename}' is ${target.name} now: the recovery finished the interrupted conversion\n`);
        return EXIT.OK;
      }
    }
    activity.phase = 'probe';
    const source = named ?? (await probeDriver(context, io, 'write'));
    if (source === target) throw new IcError('UNSUPPORTED', `${filename}: the image is ${target.name} already`, { path: filename });
    const report = await convertToIdentity(io, source, target, {
      dryRun: options.dryRun,
      allowUnlocked: !context.lock,
      openOptions: { untrusted: context.untrusted },
      onProgress: (phase, done, total) => Object.assign(activity, { phase, done, total }),
      ...(signal ? { signal } : {}),
    });
    return finished(context, filename, options.output === 'json' ? `${JSON.stringify(report, null, 4)}\n` : identitySummary(filename, report), report.targetFormat, signal);
  } finally {
    await io.close().catch(() => undefined);
  }
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
  if (hasCapability(target, 'identityTarget')) {
    if (options.o.length > 0 || options.zeroScan || (options.compact ?? 'auto') !== 'auto') throw new UsageError(`${target.name}: -o, --zero-scan and --compact do not apply to a conversion to ${target.name}`);
    const body = (signal: AbortSignal | undefined) => identityFile(context, filename, target, options, signal, named);
    return options.dryRun ? body(undefined) : context.interrupts.during(body);
  }
  const compact = options.compact ?? 'auto';
  if (compact !== 'auto' && compact !== 'always' && compact !== 'never') throw new UsageError(`--compact takes auto, always or never, not '${compact}'`);
  // A dry run writes nothing, so SIGINT simply ends it; a real run stops at the engine's next safe point.
  const body = (signal: AbortSignal | undefined) => convertFile(context, filename, target, targetOptions, compact, options, signal, named);
  return options.dryRun ? body(undefined) : context.interrupts.during(body);
}

async function convertFile(
  context: Context,
  filename: string,
  target: Driver,
  targetOptions: OptionValues,
  compact: 'auto' | 'always' | 'never',
  options: ConvertOptions,
  signal: AbortSignal | undefined,
  named: Driver | undefined,
): Promise<number> {
  const { activity, interrupts } = context;
  // A dry run reads the whole mapping: it takes qemu-img map's read locks, so it is refused while a VM writes.
  activity.phase = 'open';
  const io = withKillSwitch(await openFile(context, filename, options.dryRun ? 'read' : 'write'));
  let recovered = false;
  try {
    if (signal) interrupts.throwIfStopped(filename, 'before anything was written; the image is unchanged');
    if (!options.dryRun) {
      // Every command that writes first finishes or undoes an interrupted conversion.
      activity.phase = 'recover';
      const recovery = await recover(io, { drivers: context.registry });
      recovered = recovery.action !== 'none';
      if (recovered) context.err(`ic: ${printable(filename)}: ${recovery.detail}\n`);
    }
    // A dry run is refused like the real run when only raw would claim the file: it previews that run.
    activity.phase = 'probe';
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
    if (signal) {
      interrupts.throwIfStopped(
        filename,
        recovered
          ? `before the conversion started (only the earlier interrupted conversion was dealt with, as said above); the image is ${source.name}`
          : `before anything was written; the image is unchanged (still ${source.name})`,
      );
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
        onProgress: (event) => {
          Object.assign(activity, event);
          progress.onProgress?.(event);
        },
        ...(signal ? { signal } : {}),
      });
    } catch (error) {
      // Stopped before its commit, the engine has put the file back as it was: say in which format that is.
      if (isIcError(error) && error.code === 'INTERRUPTED' && error.imageFormat === undefined && !error.message.includes('ic recover')) {
        throw new IcError('INTERRUPTED', `${error.message}; the image is still ${source.name}, as it was`, { path: filename, cause: error });
      }
      // Past the commit the file is already the new format: a script reading the JSON must learn that too.
      if (isIcError(error) && error.imageFormat !== undefined && options.output === 'json') {
        const failure = { filename, sourceFormat: source.name, targetFormat: target.name, committed: true, imageFormat: error.imageFormat, dataIntact: true, recover: `ic recover ${filename}`, error: { code: error.code, message: error.message } };
        context.out(`${JSON.stringify(failure, null, 4)}\n`);
      }
      throw error;
    } finally {
      progress.finish();
      await chain?.close();
    }
    return finished(context, filename, options.output === 'json' ? `${JSON.stringify(report, null, 4)}\n` : conversionSummary(filename, report), report.targetFormat, signal);
  } finally {
    await io.close().catch(() => undefined);
  }
}
