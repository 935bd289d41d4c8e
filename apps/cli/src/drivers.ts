/**
 * The ONE place where ic names its first-party driver packages. Everything else in the CLI finds formats
 * through the Registry built here and reads capabilities as data; no code branches on a format name.
 *
 * A driver package may export its driver under any name (and also as default): every export that has the
 * shape of a Driver is taken, once. The order of this list is the registry order (probing ties, `ic formats`,
 * the demo's conversion cycle).
 */
import * as qcow2Package from '@ic/qcow2';
import * as qedPackage from '@ic/qed';
import * as vmdkPackage from '@ic/vmdk';
import * as rawPackage from '@ic/raw';
import { Registry, isIcError, type Driver } from '@ic/core';

const BUNDLED_PACKAGES: readonly { packageName: string; exports: Record<string, unknown> }[] = [
  { packageName: '@ic/qcow2', exports: qcow2Package },
  { packageName: '@ic/qed', exports: qedPackage },
  { packageName: '@ic/vmdk', exports: vmdkPackage },
  { packageName: '@ic/raw', exports: rawPackage },
];

/** True for a value with the shape of a Driver (the Registry validates the rest). */
export function looksLikeDriver(value: unknown): value is Driver {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Partial<Driver>;
  return (
    typeof candidate.name === 'string' &&
    typeof candidate.apiVersion === 'number' &&
    typeof candidate.probe === 'function' &&
    typeof candidate.open === 'function'
  );
}

/** Every Driver-shaped export of the given module namespaces, each driver once, in order. */
export function driversFromModules(modules: readonly Record<string, unknown>[]): Driver[] {
  const found: Driver[] = [];
  for (const namespace of modules) {
    for (const value of Object.values(namespace)) {
      if (looksLikeDriver(value) && !found.includes(value)) found.push(value);
    }
  }
  return found;
}

/** The drivers shipped with the CLI, in registry order. */
export function bundledDrivers(): Driver[] {
  return driversFromModules(BUNDLED_PACKAGES.map((entry) => entry.exports));
}

export interface BundledRegistry {
  registry: Registry;
  /** Drivers that could not be registered (e.g. built against another driver API), one line each. */
  problems: string[];
}

/** A Registry of the bundled drivers. A driver the registry refuses is left out and reported, not fatal. */
export function createRegistry(drivers: readonly Driver[] = bundledDrivers()): BundledRegistry {
  const registry = new Registry();
  const problems: string[] = [];
  for (const driver of drivers) {
    try {
      registry.register(driver);
    } catch (error) {
      problems.push(isIcError(error) ? error.message : String(error));
    }
  }
  return { registry, problems };
}
