import { CAPABILITY_HELP, type Driver } from '@ic/core';
import { EXIT, type Context } from '../context.js';
import { BUNDLED } from '../drivers.js';
import { sizeToString } from '@ic/qemu-output';

/** Every capability name: the core's list, then any extra ones a driver declares. */
function capabilityNames(drivers: readonly Driver[]): string[] {
  const names = Object.keys(CAPABILITY_HELP);
  for (const driver of drivers) for (const name of Object.keys(driver.capabilities)) if (!names.includes(name)) names.push(name);
  return names;
}

/**
 * A driver as data: what `ic formats --output=json` prints for it. `source` is 'bundled' or the path of the
 * module it was loaded from; `replaces` says which driver of the same name it replaced.
 */
export function describeDriver(driver: Driver, names: readonly string[], origin: { source: string; replaced?: string } = { source: BUNDLED }): Record<string, unknown> {
  const declared = driver.capabilities as Readonly<Record<string, unknown>>;
  return {
    name: driver.name,
    description: driver.description,
    version: driver.version,
    apiVersion: driver.apiVersion,
    source: origin.source,
    ...(origin.replaced ? { replaces: origin.replaced } : {}),
    capabilities: Object.fromEntries(names.map((name) => [name, declared[name] === true])),
    options: (driver.options ?? []).map((option) => ({ ...option })),
    inPlace: driver.inPlace
      ? { clusterSizes: { ...driver.inPlace.clusterSizes }, ...(driver.inPlace.clusterSizeOption ? { clusterSizeOption: driver.inPlace.clusterSizeOption } : {}) }
      : null,
  };
}

/** `ic formats`: the installed drivers and what each can do. */
export function formatsCommand(context: Context, options: { output: 'human' | 'json' }): number {
  const drivers = context.registry.list();
  const names = capabilityNames(drivers);
  if (options.output === 'json') {
    const json: Record<string, unknown> = { drivers: drivers.map((driver) => describeDriver(driver, names, context.driverSources.get(driver.name))) };
    if (context.registryProblems.length > 0) json['problems'] = [...context.registryProblems];
    context.out(`${JSON.stringify(json, null, 4)}\n`);
    return EXIT.OK;
  }
  const lines: string[] = [];
  const width = Math.max(6, ...drivers.map((d) => d.name.length)) + 2;
  lines.push(`${'FORMAT'.padEnd(width)}${'VERSION'.padEnd(9)}DESCRIPTION\n`);
  for (const driver of drivers) {
    const declared = driver.capabilities as Readonly<Record<string, unknown>>;
    const indent = ' '.repeat(width);
    lines.push(`${driver.name.padEnd(width)}${driver.version.padEnd(9)}${driver.description}\n`);
    const origin = context.driverSources.get(driver.name) ?? { source: BUNDLED };
    lines.push(`${indent}from: ${origin.source}${origin.replaced ? ` (replaces ${origin.replaced})` : ''}\n`);
    const yes = names.filter((name) => declared[name] === true);
    lines.push(`${indent}can: ${yes.length > 0 ? yes.join(', ') : 'nothing'}\n`);
    const options = (driver.options ?? []).map((o) => o.name);
    if (options.length > 0) lines.push(`${indent}options: ${options.join(', ')}\n`);
    if (driver.inPlace) {
      const { min, max } = driver.inPlace.clusterSizes;
      lines.push(`${indent}in-place cluster sizes: ${sizeToString(min)} to ${sizeToString(max)}\n`);
    }
  }
  if (drivers.length === 0) lines.push('(no drivers installed)\n');
  lines.push('\nCapabilities:\n');
  for (const name of names) {
    const help = (CAPABILITY_HELP as Readonly<Record<string, string>>)[name] ?? 'declared by a driver';
    lines.push(`  ${name.padEnd(14)} ${help}\n`);
  }
  lines.push('\nMore drivers load with --driver MODULE or IC_DRIVERS=MODULE,...; a loaded driver replaces a bundled one of the same name.\n');
  for (const problem of context.registryProblems) lines.push(`\nnot loaded: ${problem}\n`);
  context.out(lines.join(''));
  return EXIT.OK;
}
