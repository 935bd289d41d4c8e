import { convertInPlace, FileIO, type ConversionReport, type OptionValues } from '@ic/core';
import { registry } from './registry.js';

/** Probes the file and converts it in place to `targetName` through the library, as `ic convert-inplace` does. */
export async function convertFile(path: string, targetName: string, options: { targetOptions?: OptionValues; dryRun?: boolean } = {}): Promise<ConversionReport> {
  const io = await FileIO.open(path, { writable: !options.dryRun });
  try {
    const source = await registry.probe(io);
    return await convertInPlace({
      io,
      source,
      target: registry.get(targetName),
      ...(options.targetOptions ? { targetOptions: options.targetOptions } : {}),
      ...(options.dryRun ? { dryRun: true } : {}),
    });
  } finally {
    await io.close();
  }
}
