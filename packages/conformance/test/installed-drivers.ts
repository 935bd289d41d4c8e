import type { Driver } from '@ic/core';

/** The first four first-party drivers, and the four that came after them (VDI, VHD, Parallels, VHDX). */
const FIRST: readonly (readonly [string, string])[] = [['@ic/qcow2', 'qcow2Driver'], ['@ic/qed', 'qedDriver'], ['@ic/vmdk', 'vmdkDriver'], ['@ic/raw', 'rawDriver']];
const LATER: readonly (readonly [string, string])[] = [['@ic/vdi', 'vdiDriver'], ['@ic/vpc', 'vpcDriver'], ['@ic/parallels', 'parallelsDriver'], ['@ic/vhdx', 'vhdxDriver']];

/**
 * The first-party drivers that are installed, loaded without a static dependency: the kit must not depend
 * on the drivers it tests (they depend on it). A package that is missing or exports no driver is left out.
 * The kit's own tests use the first four; `all` adds the later four (the crash report runs every pair).
 */
export async function installedDrivers(options: { all?: boolean } = {}): Promise<Driver[]> {
  const load = async (specifier: string, exportName: string): Promise<Driver | undefined> => {
    try {
      const module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
      const driver = module[exportName] as Driver | undefined;
      return driver && typeof driver.probe === 'function' && typeof driver.open === 'function' ? driver : undefined;
    } catch {
      return undefined;
    }
  };
  const found = await Promise.all([...FIRST, ...(options.all ? LATER : [])].map(([specifier, name]) => load(specifier, name)));
  return found.filter((driver): driver is Driver => driver !== undefined);
}
