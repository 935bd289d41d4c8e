/** `ic formats`: the installed drivers and their capabilities, as data. */
import { expect, test } from 'vitest';
import { CAPABILITY_HELP, hasCapability } from '@ic/core';
import { bundledDrivers, createRegistry, driversFromModules, looksLikeDriver } from '../src/index.js';
import { runIc } from './helpers.js';

interface FormatsJson {
  drivers: {
    name: string;
    version: string;
    apiVersion: number;
    description: string;
    capabilities: Record<string, boolean>;
    options: { name: string; type: string }[];
    inPlace: { clusterSizes: { min: number; max: number } } | null;
  }[];
}

test('JSON lists every registered driver in registry order with every capability as a boolean', async () => {
  const { registry, problems } = createRegistry();
  expect(problems).toEqual([]);
  const result = await runIc(['formats', '--output=json']);
  expect(result.code).toBe(0);
  expect(result.stderr).toBe('');
  const json = JSON.parse(result.stdout) as FormatsJson;
  expect(json.drivers.map((d) => d.name)).toEqual(registry.list().map((d) => d.name));
  for (const entry of json.drivers) {
    const driver = registry.get(entry.name);
    expect(entry.version).toBe(driver.version);
    for (const capability of Object.keys(CAPABILITY_HELP) as (keyof typeof CAPABILITY_HELP)[]) {
      expect(entry.capabilities[capability]).toBe(hasCapability(driver, capability));
    }
    expect(entry.options.map((o) => o.name)).toEqual((driver.options ?? []).map((o) => o.name));
    expect(entry.inPlace === null).toBe(driver.inPlace === undefined);
  }
  // The raw driver is bundled, and so are the first-party image formats.
  expect(json.drivers.length).toBeGreaterThanOrEqual(3);
});

test('human output: one block per driver and the capability legend', async () => {
  const result = await runIc(['formats']);
  expect(result.code).toBe(0);
  const { registry } = createRegistry();
  for (const driver of registry.list()) expect(result.stdout).toMatch(new RegExp(`^${driver.name} +${driver.version.replace(/\./g, '\\.')} `, 'm'));
  for (const [name, help] of Object.entries(CAPABILITY_HELP)) expect(result.stdout).toContain(`${name.padEnd(14)} ${help}`);
});

test('bundled drivers are found by shape, each once, whatever they are exported as', () => {
  const drivers = bundledDrivers();
  expect(new Set(drivers).size).toBe(drivers.length);
  const fake = { name: 'toy', apiVersion: 1, probe: () => 0, open: async () => undefined };
  expect(looksLikeDriver(fake)).toBe(true);
  expect(looksLikeDriver({ name: 'toy' })).toBe(false);
  expect(driversFromModules([{ toyDriver: fake, default: fake, HELPER: 42, other: { name: 'x' } }])).toEqual([fake]);
});

test('a driver speaking another API version is left out and reported, not fatal', () => {
  const [first] = bundledDrivers();
  const alien = { ...first!, name: 'alien', apiVersion: 999 };
  const { registry, problems } = createRegistry([first!, alien]);
  expect(registry.list().map((d) => d.name)).toEqual([first!.name]);
  expect(problems).toHaveLength(1);
  expect(problems[0]).toContain('alien');
});
