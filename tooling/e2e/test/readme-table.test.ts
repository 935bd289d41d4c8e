/**
 * The README's "What converts in place" table cannot drift from the registry: its columns are exactly the bundled
 * in-place targets, its rows exactly the in-place sources, and every cell off the diagonal says yes (the in-place
 * matrix and the crash campaigns, generated from the same registry, are what make it true). A header names a driver
 * by its name or by a word of its description ("VHD" is the vpc driver, "QED" the qed driver).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Driver } from '@ic/core';
import { registry } from '../src/registry.js';

const readme = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8');

function table(): string[][] {
  const section = readme.slice(readme.indexOf('### What converts in place'));
  const rows: string[][] = [];
  for (const line of section.split('\n')) {
    if (!line.startsWith('|')) {
      if (rows.length > 0) break; // the first table of the section ends
      continue;
    }
    if (!/^\|[-| ]+\|$/.test(line)) rows.push(line.slice(1, -1).split('|').map((cell) => cell.trim()));
  }
  return rows;
}

/** The driver a header cell names: its first word is the driver's name or a whole word of its description. */
function driverNamed(label: string): Driver | undefined {
  const word = label.split(/[ (]/)[0]!;
  const matches = registry.list().filter((driver) => driver.name === word.toLowerCase() || new RegExp(`\\b${word}\\b`).test(driver.description));
  return matches.length === 1 ? matches[0] : undefined;
}

describe("the README's table of what converts in place", () => {
  const [header, ...rows] = table();

  it('has a column for every in-place target and a row for every in-place source, and nothing else', () => {
    const columns = header!.slice(1).map((label) => driverNamed(label)?.name ?? `unknown: ${label}`);
    const targets = registry.list().filter((driver) => driver.capabilities.inPlaceTarget).map((driver) => driver.name);
    expect([...columns].sort()).toEqual([...targets].sort());
    const sources = registry.list().filter((driver) => driver.capabilities.inPlaceSource).map((driver) => driver.name);
    expect(rows.map((row) => driverNamed(row[0]!)?.name ?? `unknown: ${row[0]}`).sort()).toEqual([...sources].sort());
  });

  it('says yes in every cell off the diagonal', () => {
    for (const row of rows) {
      row.slice(1).forEach((cell, i) => {
        const same = driverNamed(row[0]!) === driverNamed(header![i + 1]!);
        expect(cell, `${row[0]} -> ${header![i + 1]}`).toMatch(same ? /^—$/ : /^yes\b/);
      });
    }
  });
});
