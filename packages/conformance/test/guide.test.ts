/**
 * docs/writing-a-driver.md is the contract's guide: it names every export of the SDK (@ic/core/sdk), every member
 * of the contract's interfaces, and points to no file that does not exist.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as sdk from '@ic/core/sdk';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const guidePath = join(root, 'docs/writing-a-driver.md');
const guide = readFileSync(guidePath, 'utf8');
const mentioned = (name: string) => new RegExp(`\\b${name}\\b`).test(guide);

describe('the driver guide', () => {
  it('names every value the SDK exports', () => {
    expect(Object.keys(sdk).filter((name) => !mentioned(name))).toEqual([]);
  });

  it('names every type the SDK exports and every field of the contract', () => {
    const index = readFileSync(join(root, 'packages/core/src/sdk/index.ts'), 'utf8');
    const types = [...index.matchAll(/\btype (\w+)/g)].map((m) => m[1]!);
    expect(types.length).toBeGreaterThan(30);
    expect(types.filter((name) => !mentioned(name))).toEqual([]);
    const contract = readFileSync(join(root, 'packages/core/src/sdk/contract.ts'), 'utf8');
    // Members of the contract's interfaces: "  name?: ..." or "  name(...)" at the start of a line (two spaces).
    const members = [...new Set([...contract.matchAll(/^ {2}(?:readonly )?(\w+)\??[:(]/gm)].map((m) => m[1]!))];
    expect(members.length).toBeGreaterThan(60);
    expect(members.filter((name) => !mentioned(name))).toEqual([]);
  });

  it('points to no file that does not exist', () => {
    const targets = [
      ...[...guide.matchAll(/\]\(([^)#]+)(?:#[^)]*)?\)/g)].map((m) => join(dirname(guidePath), m[1]!)),
      ...[...guide.matchAll(/`((?:packages|templates|tooling|apps|docs)\/[\w./-]+)`/g)].map((m) => join(root, m[1]!)),
    ];
    expect(targets.length).toBeGreaterThan(5);
    expect(targets.filter((path) => !existsSync(path)).map((path) => path.slice(root.length))).toEqual([]);
  });
});
