import { stat } from 'node:fs/promises';
import { EXIT, printable, type Context } from '../context.js';
import { describeFeature } from './amend.js';
import { namedDriver, openImage } from '../images.js';
import { infoHuman, infoJson, qemuJson } from '@ic/qemu-output';

export interface InfoOptions {
  format?: string;
  output: 'human' | 'json';
  /** Also list the features the image uses (not in qemu-img's output, so only when asked). */
  features?: boolean;
}

/** Bytes the file occupies on disk, as qemu-img's "actual-size" (st_blocks * 512). */
export async function allocatedBytes(filename: string): Promise<number | undefined> {
  try {
    return (await stat(filename)).blocks * 512;
  } catch {
    return undefined;
  }
}

/** `ic info`: what qemu-img info says. The backing file is named, never opened. */
export async function infoCommand(context: Context, filename: string, options: InfoOptions): Promise<number> {
  const driver = namedDriver(context, options.format);
  const opened = await openImage(context, filename, { driver, access: 'info' });
  try {
    const json = infoJson(opened.image.info(), filename, await allocatedBytes(filename));
    if (!options.features) {
      context.out(options.output === 'json' ? qemuJson(json) : infoHuman(json));
      return EXIT.OK;
    }
    const features = opened.image.features ? await opened.image.features() : [];
    if (options.output === 'json') {
      context.out(qemuJson({ ...json, features }));
    } else {
      const lines = features.map((feature) => `    ${printable(describeFeature(feature))}\n`).join('');
      context.out(`${infoHuman(json)}Features:${features.length === 0 ? ' none\n' : `\n${lines}`}`);
    }
    return EXIT.OK;
  } finally {
    await opened.close();
  }
}
