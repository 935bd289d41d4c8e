import type { Driver } from '@ic/core';

/**
 * The first-party drivers that are installed, loaded without a static dependency: the kit must not depend
 * on the drivers it tests (they depend on it). A package that is missing or exports no driver is left out.
 */
export async function installedDrivers(): Promise<Driver[]> {
  const load = async (specifier: string, exportName: string): Promise<Driver | undefined> => {
    try {
      const module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
      const driver = module[exportName] as Driver | undefined;
      return driver && typeof driver.probe === 'function' && typeof driver.open === 'function' ? driver : undefined;
    } catch {
      return undefined;
    }
  };
  const found = await Promise.all([load('@ic/qcow2', 'qcow2Driver'), load('@ic/qed', 'qedDriver'), load('@ic/vmdk', 'vmdkDriver'), load('@ic/raw', 'rawDriver')]);
  return found.filter((driver): driver is Driver => driver !== undefined);
}
