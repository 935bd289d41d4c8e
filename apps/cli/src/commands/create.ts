import { rm } from 'node:fs/promises';
import { IcError, hasCapability, parseOptions, parseSize, type BackingReference, type Driver, type OptionValues } from '@ic/core';
import { EXIT, UsageError, usage, type Context } from '../context.js';
import { createFile, openImage } from '../images.js';
import { withKillSwitch } from '../kill-switch.js';
import { fullBackingFilename, hasProtocol } from '@ic/qemu-output';

export interface CreateOptions {
  format: string;
  o: string[];
  backing?: string;
  backingFormat?: string;
  /** -u: do not open the backing file (qemu-img's "unsafe"); SIZE is then required. */
  unsafe?: boolean;
  quiet?: boolean;
}

/** `-o help`: the options of a format, as data from its driver. */
export function optionsHelp(driver: Driver): string {
  const options = driver.options ?? [];
  if (options.length === 0) return `${driver.name} has no creation options\n`;
  const lines = [`Supported ${driver.name} options:\n`];
  for (const option of options) {
    const kind = option.type === 'enum' ? (option.values ?? []).join('|') : option.type;
    const fallback = option.default === undefined ? '' : ` (default: ${formatValue(option.default)})`;
    lines.push(`  ${option.name.padEnd(22)} <${kind}>  ${option.help}${fallback}\n`);
  }
  return lines.join('');
}

function formatValue(value: string | number | boolean): string {
  return typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
}

/** The line qemu-img create prints: `Formatting 'x', fmt=F size=N backing_file=... name=value...`. */
function formattingLine(filename: string, driver: Driver, size: number, backing: BackingReference | undefined, values: OptionValues): string {
  const parts = [`fmt=${driver.name}`, `size=${size}`];
  if (backing) parts.push(`backing_file=${backing.name}`, ...(backing.format ? [`backing_fmt=${backing.format}`] : []));
  for (const option of driver.options ?? []) {
    const value = values[option.name] ?? option.default;
    if (value !== undefined) parts.push(`${option.name}=${formatValue(value)}`);
  }
  return `Formatting '${filename}', ${parts.join(' ')}\n`;
}

/** `ic create`: an empty image laid out as qemu-img create makes it. Like qemu-img, an existing file is overwritten. */
export async function createCommand(context: Context, filename: string, sizeText: string | undefined, options: CreateOptions): Promise<number> {
  const driver = usage(() => context.registry.get(options.format));
  if (options.o.some((text) => text === 'help' || text === '?')) {
    context.out(optionsHelp(driver));
    return EXIT.OK;
  }
  const values = usage(() => parseOptions(options.o, driver.options ?? [], driver.name));
  let size = sizeText === undefined ? undefined : usage(() => parseSize(sizeText));
  if (!hasCapability(driver, 'create') || !driver.create) throw new IcError('UNSUPPORTED', `${driver.name}: the installed driver cannot create images`);

  let backing: BackingReference | undefined;
  if (options.backingFormat !== undefined && options.backing === undefined) throw new UsageError('-F needs a backing file (-b)');
  if (options.backing !== undefined) {
    if (!hasCapability(driver, 'backing')) throw new IcError('UNSUPPORTED', `${driver.name}: images of this format cannot have a backing file`);
    if (options.backingFormat === undefined) throw new UsageError('a backing file (-b) needs its format (-F), as with qemu-img');
    const backingDriver = usage(() => context.registry.get(options.backingFormat!));
    backing = { name: options.backing, format: backingDriver.name };
    if (!options.unsafe) {
      // Like qemu-img: the backing file must exist and be of the stated format; it also gives the default size.
      if (hasProtocol(options.backing)) {
        throw new IcError('EXTERNAL_REF', `backing file '${options.backing}' is not a plain local path; ic opens only local files (use -u to record it unchecked)`);
      }
      const path = fullBackingFilename(filename, options.backing) ?? options.backing;
      const opened = await openImage(context, path, { driver: backingDriver, access: 'peek' });
      try {
        size ??= opened.image.info().virtualSize;
      } finally {
        await opened.close();
      }
    }
  }
  if (size === undefined) throw new UsageError('missing SIZE (it may be left out only with a backing file)');

  const finalSize = size;
  return context.interrupts.during(async () => {
    context.interrupts.throwIfStopped(filename, 'before anything was written; nothing was created');
    // Like qemu-img create: refused, the file untouched, when another process holds it; emptied only once locked.
    // (qemu-img prints its Formatting line even then; ic prints it only once the file is really being formatted.)
    const io = withKillSwitch(await createFile(context, filename));
    if (!options.quiet) context.out(formattingLine(filename, driver, finalSize, backing, values));
    try {
      await driver.create!(io, { virtualSize: finalSize, ...(backing ? { backing } : {}), options: values });
      await io.flush();
      // SIGINT/SIGTERM during creation (drivers cannot be stopped half-way; it takes a moment): the user asked
      // for no image, so the new file goes, as after a failure.
      if (context.interrupts.stopped) throw new IcError('INTERRUPTED', `${filename}: creation interrupted by ${context.interrupts.cause}; the partly written file was removed`, { path: filename });
    } catch (error) {
      await io.close().catch(() => undefined);
      // A half-written image is worse than none (an overwritten file's old content is gone either way).
      await rm(filename, { force: true }).catch(() => undefined);
      throw error;
    }
    await io.close();
    return EXIT.OK;
  });
}
