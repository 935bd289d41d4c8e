import { IcError, inspectInterrupted, parseOptions, type AmendReport, type ImageFeature } from '@ic/core';
import { EXIT, usage, type Context } from '../context.js';
import { namedDriver, openImage, type OpenedImage } from '../images.js';

/** Opens an image for an in-place change of its features: written under QEMU's exclusive locks, no interrupted conversion. */
async function openForChange(context: Context, filename: string, format: string | undefined): Promise<OpenedImage> {
  const opened = await openImage(context, filename, { driver: namedDriver(context, format), access: 'write', killSwitch: true });
  try {
    if ((await inspectInterrupted(opened.io)) !== 'none') {
      throw new IcError('NEEDS_RECOVERY', `${filename}: an in-place conversion was interrupted; run \`ic recover ${filename}\` first`, { path: filename });
    }
    return opened;
  } catch (error) {
    await opened.close();
    throw error;
  }
}

function printChanges(context: Context, report: AmendReport): void {
  if (report.changes.length === 0) context.out('Nothing to change.\n');
  for (const change of report.changes) context.out(`${change}\n`);
}

/** `ic amend -o OPTIONS IMAGE`: qemu-img amend's option names; options not named keep their values. */
export async function amendCommand(context: Context, filename: string, options: { format?: string; o: string[] }): Promise<number> {
  if (options.o.length === 0) usage(() => { throw new IcError('INVALID', 'amend needs -o OPTIONS'); });
  const opened = await openForChange(context, filename, options.format);
  try {
    const { driver, image } = opened;
    if (!image.amend || !driver.amendOptions) throw new IcError('UNSUPPORTED', `${driver.name}: this driver cannot amend images`);
    const values = usage(() => parseOptions(options.o, driver.amendOptions ?? [], driver.name));
    printChanges(context, await image.amend(values));
    return EXIT.OK;
  } finally {
    await opened.close();
  }
}

/** One line for a feature: name, kind, description, and whether demote can remove it. */
export function describeFeature(feature: ImageFeature): string {
  const removal = feature.removal.possible ? `removable (${feature.removal.cost}: ${feature.removal.how})` : `not removable: ${feature.removal.why}`;
  return `${feature.name} [${feature.kind}]: ${feature.description}; ${removal}`;
}

/**
 * `ic demote [--feature NAME]... IMAGE`: removes the named features (all removable ones without --feature) so
 * that an older reader opens the image, and lists those that stay, with why. Generic: the steps are the driver's.
 */
export async function demoteCommand(context: Context, filename: string, options: { format?: string; feature: string[] }): Promise<number> {
  const opened = await openForChange(context, filename, options.format);
  try {
    const { driver, image } = opened;
    if (!image.features || !image.demote) throw new IcError('UNSUPPORTED', `${driver.name}: this driver cannot demote images`);
    const features = await image.features();
    const named = options.feature.length > 0;
    const chosen = named ? options.feature : features.filter((feature) => feature.removal.possible).map((feature) => feature.name);
    if (chosen.length > 0) printChanges(context, await image.demote(chosen));
    else context.out('Nothing to remove.\n');
    if (!named) {
      for (const feature of features) if (!feature.removal.possible) context.out(`kept ${feature.name}: ${feature.removal.why}\n`);
    }
    return EXIT.OK;
  } finally {
    await opened.close();
  }
}
