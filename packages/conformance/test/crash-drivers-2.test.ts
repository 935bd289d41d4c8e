/**
 * Crash campaigns on the first-party drivers that are installed: the second half of the pairs (the first
 * half, and the self-test that an engine without flushes is caught, are in crash-drivers.test.ts). Drivers
 * are found by capability; a package that is missing or exports no driver is left out.
 */
import type { Driver } from '@ic/core';
import { describeCrashCampaigns } from '../src/crash/index.js';

/** Loads a driver without a static dependency: conformance must not depend on the drivers it tests. */
async function loadDriver(specifier: string, exportName: string): Promise<Driver | undefined> {
  try {
    const module = (await import(/* @vite-ignore */ specifier)) as Record<string, unknown>;
    const driver = module[exportName] as Driver | undefined;
    return driver && typeof driver.probe === 'function' && typeof driver.open === 'function' ? driver : undefined;
  } catch {
    return undefined;
  }
}

const drivers = (
  await Promise.all([loadDriver('@ic/qcow2', 'qcow2Driver'), loadDriver('@ic/qed', 'qedDriver'), loadDriver('@ic/vmdk', 'vmdkDriver'), loadDriver('@ic/raw', 'rawDriver')])
).filter((d): d is Driver => d !== undefined);

describeCrashCampaigns(drivers, { part: { index: 1, of: 2 } });
