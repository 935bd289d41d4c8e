import { stat } from 'node:fs/promises';
import { EXIT, type Context } from '../context.js';
import { namedDriver, openImage } from '../images.js';
import { infoHuman, infoJson, qemuJson } from '@ic/qemu-output';

export interface InfoOptions {
  format?: string;
  output: 'human' | 'json';
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
    context.out(options.output === 'json' ? qemuJson(json) : infoHuman(json));
    return EXIT.OK;
  } finally {
    await opened.close();
  }
}
