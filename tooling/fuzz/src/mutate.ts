import { Random, deriveSeed } from '../../../packages/conformance/src/crash/random.js';
import { crc32c } from '@ic/core';
import type { Checksum, Field, FieldMap, SeedLayout, TextRegion } from './fields.js';
import type { Seed } from './seeds.js';

/**
 * One change to one file of a seed. Mutations are plain data (JSON): a finding is reported as a seed name plus
 * its mutations, and a regression test rebuilds the mutant from them byte for byte.
 */
export type Mutation =
  /** Stores `value` (decimal string: values go up to 2^64 - 1) as an unsigned integer of `width` bytes. */
  | { op: 'set'; offset: number; width: 1 | 2 | 4 | 8; endian: 'le' | 'be'; value: string; file?: string; field?: string }
  | { op: 'flip'; offset: number; bit: number; file?: string }
  /** Overwrites bytes (hex) at `offset`; the file grows if they run past its end. */
  | { op: 'write'; offset: number; hex: string; file?: string; what?: string }
  /** Cuts or extends (with `fill` bytes) the file to `length`. */
  | { op: 'resize'; length: number; fill?: number; file?: string };

export interface Mutant {
  seed: string;
  /** The index of the mutant in its seed's stream (with the campaign seed, it regenerates the mutations). */
  index: number;
  mutations: Mutation[];
}

export interface MutantFiles {
  main: Uint8Array;
  companions: Record<string, Uint8Array>;
}

export function toHex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

function fromHex(hex: string): Uint8Array {
  return new Uint8Array(Buffer.from(hex, 'hex'));
}

function resized(bytes: Uint8Array, length: number, fill = 0): Uint8Array {
  const out = new Uint8Array(length);
  out.set(bytes.subarray(0, Math.min(length, bytes.length)));
  if (length > bytes.length && fill !== 0) out.fill(fill, bytes.length);
  return out;
}

/** Applies mutations to copies of the seed's files (the seed itself is never changed). */
export function applyMutations(seed: Pick<Seed, 'bytes' | 'companions'>, mutations: readonly Mutation[]): MutantFiles {
  const files: MutantFiles = { main: seed.bytes.slice(), companions: {} };
  for (const [name, bytes] of Object.entries(seed.companions)) files.companions[name] = bytes;
  const touched = new Set<string>();
  for (const mutation of mutations) {
    const name = mutation.file;
    let bytes: Uint8Array;
    if (name === undefined) bytes = files.main;
    else {
      const original = files.companions[name];
      if (!original) throw new Error(`mutation names companion '${name}', which the seed does not have`);
      bytes = touched.has(name) ? original : original.slice();
      touched.add(name);
    }
    switch (mutation.op) {
      case 'set': {
        const value = BigInt(mutation.value) & ((1n << BigInt(mutation.width * 8)) - 1n);
        if (mutation.offset + mutation.width > bytes.length) bytes = resized(bytes, mutation.offset + mutation.width);
        for (let i = 0; i < mutation.width; i++) {
          const shift = BigInt(mutation.endian === 'le' ? i : mutation.width - 1 - i) * 8n;
          bytes[mutation.offset + i] = Number((value >> shift) & 0xffn);
        }
        break;
      }
      case 'flip':
        if (mutation.offset < bytes.length) bytes[mutation.offset]! ^= 1 << (mutation.bit & 7);
        break;
      case 'write': {
        const data = fromHex(mutation.hex);
        if (mutation.offset + data.length > bytes.length) bytes = resized(bytes, mutation.offset + data.length);
        bytes.set(data, mutation.offset);
        break;
      }
      case 'resize':
        bytes = resized(bytes, mutation.length, mutation.fill ?? 0);
        break;
    }
    if (name === undefined) files.main = bytes;
    else files.companions[name] = bytes;
  }
  return files;
}

const TWO_64 = 1n << 64n;

/** The boundary values of issue #7 and QEMU's image fuzzer, for fields of every width (masked to the width). */
export const BOUNDARY_VALUES: readonly bigint[] = [
  0n,
  1n,
  2n,
  0x7fn,
  0x80n,
  0xffn,
  0x100n,
  0x1ffn,
  0x200n,
  0x1000n,
  0x7fffn,
  0x8000n,
  0xffffn,
  0x10000n,
  0x7fffffffn,
  0x80000000n,
  0xffffffffn,
  0x100000000n,
  (1n << 53n) - 1n,
  1n << 53n,
  (1n << 53n) + 1n,
  (1n << 56n) - 512n,
  1n << 63n,
  (1n << 63n) - 1n,
  TWO_64 - 1n,
  TWO_64 - 512n,
];

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x22, 0x3d, 0x23, 0x20];

function readField(bytes: Uint8Array, field: Field): bigint {
  let value = 0n;
  for (let i = 0; i < field.width; i++) {
    const at = field.endian === 'le' ? field.offset + field.width - 1 - i : field.offset + i;
    value = (value << 8n) | BigInt(bytes[at] ?? 0);
  }
  return value;
}

function pick<T>(random: Random, items: readonly T[]): T {
  return items[random.below(items.length)]!;
}

/** A value for a field: a boundary, the current value nudged, a structure's offset, or a flag flipped. */
function fieldValue(random: Random, field: Field, current: bigint, map: FieldMap, fileSize: number): bigint {
  const mask = (1n << BigInt(field.width * 8)) - 1n;
  // Fields with values of their own (states, sentinels, limits) get one of those a third of the time; the others
  // draw nothing here, so their mutant streams stay what they were.
  if (field.values && random.chance(0.35)) return pick(random, field.values) & mask;
  const unit = BigInt(Math.max(1, map.unit));
  const size = BigInt(fileSize);
  const roll = random.below(100);
  let value: bigint;
  if (roll < 40) value = pick(random, BOUNDARY_VALUES);
  else if (roll < 55) value = current + pick(random, [1n, -1n, 2n, -2n, 8n, -8n, 512n, -512n, unit, -unit, 2n * unit]);
  else if (roll < 65) value = current * pick(random, [2n, 3n, 16n, 1024n, 1n << 20n]) + pick(random, [0n, 1n]);
  else if (roll < 75) value = current ^ (1n << BigInt(random.below(field.width * 8)));
  else if (roll < 85) {
    // Sizes of the file itself: just past the end, the last byte, the last cluster.
    const candidates = [size, size - 1n, size + 1n, size + unit, size - unit, size / 2n, size * 2n];
    value = pick(random, candidates);
    if (field.role !== 'offset' && field.role !== 'entry' && field.role !== 'size' && field.role !== 'length') value = value / unit;
  } else if (roll < 95 && map.pointers.length > 0) {
    // Another structure's offset (aliasing, overlaps), in the unit the field counts in.
    const target = BigInt(pick(random, map.pointers)) + pick(random, [0n, 0n, 1n, -512n, 512n]);
    value = field.endian === 'le' && field.width === 4 && field.role === 'entry' ? target / 512n : target;
    if (field.role === 'entry' && field.width === 8) value |= pick(random, [0n, 1n << 63n, 1n << 62n, 1n]);
  } else value = BigInt(random.below(2 ** 32)) * (field.width === 8 ? BigInt(random.below(2 ** 32)) + 1n : 1n);
  return ((value % (mask + 1n)) + mask + 1n) & mask;
}

// ---- descriptor text ----

const NUMBER_TOKENS = ['0', '-1', '1', '512', '4294967295', '4294967296', '9007199254740993', '18446744073709551615', '99999999999999999999', '0x7fffffff', '-9223372036854775808'];
const QUOTED_VALUES = [
  '',
  '/etc/hosts',
  '../../etc/shadow',
  'json:{"file":{"driver":"file","filename":"/etc/passwd"}}',
  'nbd://127.0.0.1:10809/x',
  'A'.repeat(600),
  'B'.repeat(5000),
  'x.vmdk" RW 100 FLAT "/dev/sda',
  'caf\u00e9\u0000.vmdk',
];
const CREATE_TYPES = ['monolithicSparse', 'streamOptimized', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfs', 'vmfsSparse', 'seSparse', 'vmfsRDM', 'fullDevice', 'custom', ''];
const EXTENT_WORDS = ['RW', 'RDONLY', 'NOACCESS', 'rw', 'FLAT', 'SPARSE', 'ZERO', 'VMFS', 'VMFSSPARSE', 'SESPARSE', 'VMFSRDM'];
const EXTRA_LINES = [
  'parentFileNameHint="/etc/hosts"',
  'parentCID=12345678',
  'CID=fffffffe',
  'RW 2048 FLAT "/etc/hosts" 0',
  'RW 99999999999999 SPARSE "other.vmdk"',
  'RW 0 FLAT "zero.vmdk" 0',
  'RDONLY 2048 SPARSE "ro.vmdk"',
  'createType="monolithicFlat"',
  'version=3',
  'ddb.adapterType = "lsilogic"',
  'encoding="UTF-8"',
  '\u0000\u0001\u00ff',
];

/** A mutated descriptor: one edit of the kinds a hostile or damaged descriptor shows. */
function mutateDescriptor(random: Random, text: string): string {
  const lines = text.split('\n');
  const lineIndex = random.below(Math.max(1, lines.length));
  const line = lines[lineIndex] ?? '';
  switch (random.below(9)) {
    case 0: {
      const numbers = [...text.matchAll(/-?(?:0x)?[0-9a-fA-F]+/g)].filter((m) => /\d/.test(m[0]));
      if (numbers.length === 0) break;
      const match = pick(random, numbers);
      return text.slice(0, match.index) + pick(random, NUMBER_TOKENS) + text.slice(match.index! + match[0].length);
    }
    case 1:
      lines.splice(lineIndex, 1);
      return lines.join('\n');
    case 2:
      lines.splice(lineIndex, 0, line);
      return lines.join('\n');
    case 3: {
      const other = random.below(Math.max(1, lines.length));
      [lines[lineIndex], lines[other]] = [lines[other] ?? '', line];
      return lines.join('\n');
    }
    case 4: {
      const quotes = [...text.matchAll(/"([^"\n]*)"/g)];
      if (quotes.length === 0) break;
      const match = pick(random, quotes);
      const value = random.chance(0.2) ? `"${pick(random, QUOTED_VALUES)}` : `"${pick(random, QUOTED_VALUES)}"`;
      return text.slice(0, match.index) + value + text.slice(match.index! + match[0].length);
    }
    case 5:
      return text.replace(/createType="[^"\n]*"/, `createType="${pick(random, CREATE_TYPES)}"`);
    case 6: {
      const words = [...text.matchAll(/\b(RW|RDONLY|NOACCESS|FLAT|SPARSE|VMFS|VMFSSPARSE|SESPARSE|ZERO)\b/g)];
      if (words.length === 0) break;
      const match = pick(random, words);
      return text.slice(0, match.index) + pick(random, EXTENT_WORDS) + text.slice(match.index! + match[0].length);
    }
    case 7:
      lines.splice(lineIndex, 0, pick(random, EXTRA_LINES));
      return lines.join('\n');
    case 8: {
      const at = random.below(text.length + 1);
      return random.chance(0.5) ? text.slice(0, at) : text.slice(0, at) + pick(random, ['\u0000', '\r', '"', '=', '#', '\n\n']) + text.slice(at);
    }
  }
  return `${text}\n${pick(random, EXTRA_LINES)}\n`;
}

/** A stored name replaced by a hostile one of the same length (its size field is mutated separately). */
function hostileName(random: Random, length: number): Uint8Array {
  const names = ['/etc/hosts', '/etc/shadow', 'json:{"driver":"file","filename":"/etc/passwd"}', 'nbd://localhost/x', '../../../../dev/sda', '\u0000', 'qcow2'];
  const text = new TextEncoder().encode(pick(random, names));
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = text[i % text.length]!;
  return out;
}

function textMutations(random: Random, bytes: Uint8Array, region: TextRegion, file: string | undefined): Mutation[] {
  const withFile = <T extends Mutation>(mutation: T): T => (file === undefined ? mutation : { ...mutation, file });
  if (region.kind === 'name') {
    return [withFile({ op: 'write', offset: region.offset, hex: toHex(hostileName(random, region.length)), what: region.name })];
  }
  const text = Buffer.from(bytes.subarray(region.offset, region.offset + region.length)).toString('latin1');
  const mutated = new Uint8Array(Buffer.from(mutateDescriptor(random, text), 'latin1'));
  if (region.capacity === 'file') {
    return [withFile({ op: 'resize', length: mutated.length }), withFile({ op: 'write', offset: 0, hex: toHex(mutated), what: region.name })];
  }
  // In place: the new text, then NULs over whatever is left of the old text, never past the window.
  const window = new Uint8Array(Math.min(region.capacity, Math.max(mutated.length, region.length)));
  window.set(mutated.subarray(0, window.length));
  return [withFile({ op: 'write', offset: region.offset, hex: toHex(window), what: region.name })];
}

/** Mutation weights: field values first, then bit flips, text, truncation, growth, copies. */
function oneMutation(random: Random, bytes: Uint8Array, map: FieldMap, file: string | undefined): Mutation[] {
  const withFile = <T extends Mutation>(mutation: T): T => (file === undefined ? mutation : { ...mutation, file });
  // Splices (another magic, a GUID from elsewhere in the file): only maps that have them draw for them.
  if (map.splices && map.splices.length > 0 && random.chance(0.08)) {
    const splice = pick(random, map.splices);
    return [withFile({ op: 'write', offset: splice.offset, hex: splice.hex, what: splice.name })];
  }
  const roll = random.below(100);
  if (roll < 50 && map.fields.length > 0) {
    const field = pick(random, map.fields);
    const value = fieldValue(random, field, readField(bytes, field), map, bytes.length);
    return [withFile({ op: 'set', offset: field.offset, width: field.width, endian: field.endian, value: value.toString(), field: field.name })];
  }
  if (roll < 62 && map.texts.length > 0) return textMutations(random, bytes, pick(random, map.texts), file);
  if (roll < 77) {
    const region = map.regions.length > 0 && random.chance(0.85) ? pick(random, map.regions) : { offset: 0, length: bytes.length };
    const offset = region.offset + random.below(Math.max(1, region.length));
    if (random.chance(0.8)) return [withFile({ op: 'flip', offset, bit: random.below(8) })];
    return [withFile({ op: 'write', offset, hex: toHex(Uint8Array.of(pick(random, INTERESTING_BYTES))) })];
  }
  if (roll < 88) {
    // Truncation: anywhere, at a structure's edge, or at a round size.
    const edges = [...map.fields.map((f) => f.offset), ...map.fields.map((f) => f.offset + f.width), ...map.regions.map((r) => r.offset), ...map.pointers];
    const candidates = [0, 1, 4, 64, 511, 512, 4096, bytes.length - 1, bytes.length - 512, bytes.length - map.unit, ...edges];
    const length = random.chance(0.5) ? random.below(bytes.length) : Math.max(0, Math.min(bytes.length - 1, pick(random, candidates) + pick(random, [0, 0, -1, 1])));
    return [withFile({ op: 'resize', length })];
  }
  if (roll < 94) {
    const grow = pick(random, [1, 511, 512, 4096, 65536, map.unit, 3 * map.unit + 7]);
    return [withFile({ op: 'resize', length: bytes.length + grow, fill: pick(random, [0, 0, 0xff, 0x4b]) })];
  }
  // Copy one field's bytes over another of the same width (two tables naming one cluster, a header copied).
  const same = map.fields.filter((f) => f.width === 8 || f.width === 4);
  if (same.length < 2) return [withFile({ op: 'flip', offset: random.below(Math.max(1, bytes.length)), bit: random.below(8) })];
  const from = pick(random, same);
  const to = pick(random, same.filter((f) => f.width === from.width));
  return [withFile({ op: 'write', offset: to.offset, hex: toHex(bytes.subarray(from.offset, from.offset + from.width)), what: `${from.name} -> ${to.name}` })];
}

/** The checksum `checksum` describes, computed over `bytes` (its own field taken as zero). */
export function computeChecksum(bytes: Uint8Array, checksum: Checksum): number {
  const covered = bytes.slice(checksum.offset, checksum.offset + checksum.length);
  covered.fill(0, checksum.at - checksum.offset, checksum.at - checksum.offset + 4);
  if (checksum.kind === 'crc32c') return crc32c(covered);
  let sum = 0;
  for (const byte of covered) sum += byte;
  return ~sum >>> 0;
}

function storedChecksum(bytes: Uint8Array, checksum: Checksum): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(checksum.at, checksum.kind === 'crc32c');
}

/**
 * For every checksum that held before a mutation and does not after it: most of the time a `set` that stores the
 * right value again (the mutant gets past the checksum gate), else nothing (the gate itself is tested).
 */
function checksumFixups(random: Random, map: FieldMap, before: Uint8Array, after: Uint8Array, file: string | undefined): Mutation[] {
  const out: Mutation[] = [];
  for (const checksum of map.checksums ?? []) {
    const end = checksum.offset + checksum.length;
    if (end > before.length || end > after.length) continue;
    if (storedChecksum(before, checksum) !== computeChecksum(before, checksum)) continue;
    const value = computeChecksum(after, checksum);
    if (storedChecksum(after, checksum) === value || !random.chance(0.6)) continue;
    const fix: Mutation = { op: 'set', offset: checksum.at, width: 4, endian: checksum.kind === 'crc32c' ? 'le' : 'be', value: String(value), field: `${checksum.name} checksum (fixed up)` };
    out.push(file === undefined ? fix : { ...fix, file });
  }
  return out;
}

/**
 * The mutant `index` of a seed: 1 to 4 mutations (mostly 1), each on the main file or, for seeds with
 * structured companions (sparse extent files), sometimes on one of those. Deterministic: the same
 * (campaignSeed, seed, index) always gives the same mutations.
 */
export function generateMutant(seed: Seed, layout: SeedLayout, index: number, campaignSeed: number): Mutant {
  const random = new Random(deriveSeed(campaignSeed, `${seed.name}#${index}`));
  const count = pick(random, [1, 1, 1, 1, 1, 2, 2, 3, 4]);
  const mutations: Mutation[] = [];
  let files: MutantFiles = { main: seed.bytes, companions: seed.companions };
  const companions = Object.keys(layout.companions);
  for (let i = 0; i < count; i++) {
    const file = companions.length > 0 && random.chance(0.3) ? pick(random, companions) : undefined;
    const map = file === undefined ? layout.main : layout.companions[file]!;
    const bytes = file === undefined ? files.main : files.companions[file]!;
    const next = oneMutation(random, bytes, map, file);
    files = applyMutations({ bytes: files.main, companions: files.companions }, next);
    if (map.checksums) {
      const after = file === undefined ? files.main : files.companions[file]!;
      const fixes = checksumFixups(random, map, bytes, after, file);
      next.push(...fixes);
      if (fixes.length > 0) files = applyMutations({ bytes: files.main, companions: files.companions }, fixes);
    }
    mutations.push(...next);
  }
  return { seed: seed.name, index, mutations };
}
