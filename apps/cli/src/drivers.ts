/**
 * The ONE place where ic names its first-party driver packages. Everything else in the CLI finds formats
 * through the Registry built here and reads capabilities as data; no code branches on a format name.
 *
 * A driver package may export its driver under any name (and also as default): every export that has the
 * shape of a Driver is taken, once. The order of this list is the registry order (probing ties, `ic formats`,
 * the demo's conversion cycle).
 *
 * Other drivers come from modules (`--driver MODULE`, `IC_DRIVERS=MODULE,...`) or from main()'s options. A
 * driver with the name of one already registered replaces it, in its place: a user who installs a newer qcow2
 * driver means it to be used; `ic formats` shows where each driver came from and what it replaced.
 */
import * as qcow2Package from '@ic/qcow2';
import * as qedPackage from '@ic/qed';
import * as vmdkPackage from '@ic/vmdk';
import * as rawPackage from '@ic/raw';
import { pathToFileURL } from 'node:url';
import { DRIVER_API_VERSION, Registry, isIcError, type Driver } from '@ic/core';
import { oneLine } from '@ic/core/node';
import { resolveModule } from './resolve.js';

const BUNDLED_PACKAGES: readonly { packageName: string; exports: Record<string, unknown> }[] = [
  { packageName: '@ic/qcow2', exports: qcow2Package },
  { packageName: '@ic/qed', exports: qedPackage },
  { packageName: '@ic/vmdk', exports: vmdkPackage },
  { packageName: '@ic/raw', exports: rawPackage },
];

/** Where a driver came from: 'bundled', a module's path, or 'main() options'. */
export const BUNDLED = 'bundled';

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

/** A driver and where it came from. */
export interface SourcedDriver {
  driver: Driver;
  source: string;
}

export interface BundledRegistry {
  registry: Registry;
  /** Drivers that could not be registered (e.g. built against another driver API), one line each. */
  problems: string[];
  /** Where each registered driver came from, by name; and what it replaced, if it replaced one. */
  sources: Map<string, { source: string; replaced?: string }>;
}

/**
 * A Registry of the given drivers (default: the bundled ones), in order. A driver the registry refuses is left
 * out and reported, not fatal. A later driver with the name of an earlier one replaces it in its place.
 */
export function createRegistry(drivers: readonly (Driver | SourcedDriver)[] = bundledDrivers(), warn?: (line: string) => void): BundledRegistry {
  const chosen = new Map<string, SourcedDriver & { replaced?: string }>();
  const problems: string[] = [];
  for (const entry of drivers) {
    const sourced: SourcedDriver = looksLikeDriver(entry) ? { driver: entry, source: BUNDLED } : entry;
    const { driver, source } = sourced;
    // Refused here, with the module named, rather than by the registry: another API version, no valid name.
    try {
      new Registry([driver]);
    } catch (error) {
      const problem = `${source === BUNDLED ? '' : `${source}: `}${isIcError(error) ? error.message : String(error)}`;
      problems.push(problem);
      if (source !== BUNDLED) warn?.(`driver not loaded: ${problem}`);
      continue;
    }
    const previous = chosen.get(driver.name);
    const replaced = previous ? `${previous.source === BUNDLED ? 'the bundled' : `the one from ${previous.source},`} ${previous.driver.name} ${previous.driver.version}` : undefined;
    // Map.set on an existing key keeps its place in the order: the replacement takes the old one's place.
    chosen.set(driver.name, { ...sourced, ...(replaced ? { replaced } : {}) });
  }
  const registry = new Registry([...chosen.values()].map((entry) => entry.driver));
  const sources = new Map([...chosen.values()].map((entry) => [entry.driver.name, { source: entry.source, ...(entry.replaced ? { replaced: entry.replaced } : {}) }]));
  return { registry, problems, sources };
}

/**
 * Loads the drivers of each module (a path, or a package name resolved from `cwd` as import() from there
 * would). A module that cannot be found or loaded, or exports no driver, gives one warning line naming it and
 * is skipped; ic carries on with the others.
 */
export async function loadDriverModules(specifiers: readonly string[], cwd: string, warn: (line: string) => void): Promise<SourcedDriver[]> {
  const loaded: SourcedDriver[] = [];
  for (const specifier of specifiers) {
    let path: string;
    let namespace: Record<string, unknown>;
    try {
      path = resolveModule(specifier, cwd);
      namespace = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
    } catch (error) {
      warn(`driver module '${specifier}' could not be loaded: ${oneLine(error)}; ignored`);
      continue;
    }
    const drivers = driversFromModules([namespace]);
    if (drivers.length === 0) {
      warn(`driver module '${specifier}' (${path}) exports no driver (an object with name, apiVersion, probe and open); ignored`);
      continue;
    }
    for (const driver of drivers) {
      if (driver.apiVersion !== DRIVER_API_VERSION) {
        warn(`driver module '${specifier}' (${path}): driver ${driver.name} speaks driver API ${driver.apiVersion}, this ic speaks ${DRIVER_API_VERSION}; ignored`);
        continue;
      }
      loaded.push({ driver, source: path });
    }
  }
  return loaded;
}

/** The module list of IC_DRIVERS: comma-separated, blanks ignored. */
export function driverModulesFromEnv(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

/** Every `--driver MODULE` / `--driver=MODULE` of a command line (read before the commands are set up). */
export function driverModulesFromArgv(argv: readonly string[]): string[] {
  const found: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') break;
    if (arg === '--driver' && i + 1 < argv.length) found.push(argv[++i]!);
    else if (arg.startsWith('--driver=')) found.push(arg.slice('--driver='.length));
  }
  return found;
}
