import { dirname, isAbsolute, join } from 'node:path';
import { convertInPlace, type ConversionReport, type Image, type OptionValues } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { registry } from './registry.js';

async function openImage(path: string, format?: string): Promise<{ io: FileIO; image: Image }> {
  const io = await FileIO.open(path);
  const driver = format ? registry.get(format) : await registry.probe(io);
  return { io, image: await driver.open(io) };
}

/**
 * Probes the file and converts it in place to `targetName` through the library, as `ic convert-inplace`
 * does: the backing file (a plain path relative to the image) is opened read-only so that targets can
 * record facts about it (VMDK records its parent's CID).
 */
export async function convertFile(
  path: string,
  targetName: string,
  options: { targetOptions?: OptionValues; dryRun?: boolean } = {},
): Promise<ConversionReport> {
  const io = await FileIO.open(path, { writable: !options.dryRun, lock: !options.dryRun });
  const opened: FileIO[] = [];
  try {
    const source = await registry.probe(io);
    const backingReference = (await source.open(io)).info().backing;
    let backing: Image | undefined;
    if (backingReference) {
      const backingPath = isAbsolute(backingReference.name) ? backingReference.name : join(dirname(path), backingReference.name);
      const { io: backingIo, image } = await openImage(backingPath, backingReference.format);
      opened.push(backingIo);
      backing = image;
    }
    return await convertInPlace({
      io,
      source,
      target: registry.get(targetName),
      ...(options.targetOptions ? { targetOptions: options.targetOptions } : {}),
      ...(options.dryRun ? { dryRun: true } : {}),
      ...(backing ? { openOptions: { backing } } : {}),
    });
  } finally {
    await io.close();
    for (const other of opened) await other.close();
  }
}
