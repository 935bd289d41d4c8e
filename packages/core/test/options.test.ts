import { describe, expect, it } from 'vitest';
import { IcError, isIcError, parseOptions, parseSize } from '../src/index.js';

describe('parseSize', () => {
  it('reads qemu-img style suffixes', () => {
    expect(parseSize('65536')).toBe(65536);
    expect(parseSize('64k')).toBe(65536);
    expect(parseSize('1G')).toBe(1024 ** 3);
    expect(parseSize('1.5M')).toBe(1.5 * 1024 ** 2);
  });
  it('refuses garbage with INVALID', () => {
    expect(() => parseSize('12q')).toThrowError(/invalid size/);
    try {
      parseSize('x');
    } catch (error) {
      expect(isIcError(error) ? error.code : undefined).toBe('INVALID');
    }
  });
});

describe('parseOptions', () => {
  const descriptors = [
    { name: 'cluster_size', type: 'size', help: '' },
    { name: 'compat', type: 'enum', values: ['0.10', '1.1'], help: '' },
    { name: 'lazy_refcounts', type: 'boolean', help: '' },
  ] as const;
  it('parses several comma lists', () => {
    expect(parseOptions(['cluster_size=4k,compat=0.10', 'lazy_refcounts=on'], descriptors, 'x')).toEqual({
      cluster_size: 4096,
      compat: '0.10',
      lazy_refcounts: true,
    });
  });
  it('names the unknown option', () => {
    expect(() => parseOptions(['nope=1'], descriptors, 'x')).toThrowError(IcError);
    expect(() => parseOptions(['compat=2'], descriptors, 'x')).toThrowError(/must be one of/);
  });
});
