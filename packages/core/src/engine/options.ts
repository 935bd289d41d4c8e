import { IcError } from '../sdk/index.js';
import type { OptionDescriptor, OptionValues } from '../sdk/index.js';

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5, e: 1024 ** 6 };

/** Parses a size the way qemu-img does: "65536", "64k", "64K", "1G", "1.5G". */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)(?:i?b)?\s*$/i.exec(text);
  if (!match) throw new IcError('INVALID', `invalid size '${text}'`);
  const value = Number(match[1]) * SIZE_UNITS[(match[2] ?? '').toLowerCase()]!;
  if (!Number.isSafeInteger(Math.round(value)) || value < 0) throw new IcError('INVALID', `size '${text}' is out of range`);
  return Math.round(value);
}

function parseBoolean(name: string, text: string): boolean {
  if (/^(on|true|yes|1)$/i.test(text)) return true;
  if (/^(off|false|no|0)$/i.test(text)) return false;
  throw new IcError('INVALID', `option ${name} expects on or off, got '${text}'`);
}

/**
 * Parses qemu-img style option strings ("cluster_size=64k,compat=0.10", possibly several) against a
 * driver's descriptors. Unknown names and malformed values are usage errors.
 */
export function parseOptions(texts: readonly string[], descriptors: readonly OptionDescriptor[], format: string): OptionValues {
  const values: Record<string, string | number | boolean> = {};
  for (const text of texts) {
    for (const part of text.split(',')) {
      if (part.trim() === '') continue;
      const eq = part.indexOf('=');
      const name = (eq < 0 ? part : part.slice(0, eq)).trim();
      const raw = eq < 0 ? 'on' : part.slice(eq + 1).trim();
      const descriptor = descriptors.find((d) => d.name === name);
      if (!descriptor) {
        const known = descriptors.map((d) => d.name).join(', ') || 'none';
        throw new IcError('INVALID', `${format} has no option '${name}' (options: ${known})`);
      }
      switch (descriptor.type) {
        case 'size':
          values[name] = parseSize(raw);
          break;
        case 'integer': {
          if (!/^-?\d+$/.test(raw)) throw new IcError('INVALID', `option ${name} expects an integer, got '${raw}'`);
          values[name] = Number(raw);
          break;
        }
        case 'boolean':
          values[name] = parseBoolean(name, raw);
          break;
        case 'enum':
          if (!descriptor.values?.includes(raw)) {
            throw new IcError('INVALID', `option ${name} must be one of ${descriptor.values?.join(', ')}, got '${raw}'`);
          }
          values[name] = raw;
          break;
        case 'string':
          values[name] = raw;
          break;
      }
    }
  }
  return values;
}
