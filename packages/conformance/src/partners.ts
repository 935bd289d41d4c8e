/**
 * The drivers a driver under test is converted to and from: by default ic's bundled in-place formats (qcow2,
 * QED, VMDK), loaded from wherever the caller installed them. The kit has no static dependency on them (they run
 * the kit in their own tests); a third party adds them as dev dependencies.
 */
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Driver } from '@ic/core';

/** The bundled in-place drivers: package and export name. */
export const BUNDLED_PARTNERS: readonly { module: string; exportName: string }[] = [
  { module: '@ic/qcow2', exportName: 'qcow2Driver' },
  { module: '@ic/qed', exportName: 'qedDriver' },
  { module: '@ic/vmdk', exportName: 'vmdkDriver' },
];

function asDriver(module: Record<string, unknown>, exportName: string): Driver | undefined {
  const driver = module[exportName] as Driver | undefined;
  return driver && typeof driver.probe === 'function' && typeof driver.open === 'function' ? driver : undefined;
}

/** Imports a package as the kit resolves it, else as the project in the current directory would (pnpm's strict layout). */
async function load(specifier: string): Promise<Record<string, unknown> | undefined> {
  try {
    return (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
  } catch {
    try {
      const resolved = createRequire(join(process.cwd(), 'package.json')).resolve(specifier);
      return (await import(/* @vite-ignore */ pathToFileURL(resolved).href)) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  }
}

/** The bundled in-place drivers that are installed; the missing ones are named in `missing`. */
export async function installedPartners(): Promise<{ drivers: Driver[]; missing: string[] }> {
  const drivers: Driver[] = [];
  const missing: string[] = [];
  for (const { module, exportName } of BUNDLED_PARTNERS) {
    const loaded = await load(module);
    const driver = loaded && asDriver(loaded, exportName);
    if (driver) drivers.push(driver);
    else missing.push(module);
  }
  return { drivers, missing };
}
