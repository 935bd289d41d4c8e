/** qemu-img's text conventions, reproduced (values checked against qemu-img 7.2 output). */
import { expect, test } from 'vitest';
import { formatG3, fixed2, fullBackingFilename, hasProtocol, sizeToString, infoHuman, mapHuman } from '../src/qemu-text.js';

test('size_to_str', () => {
  expect(sizeToString(0)).toBe('0 B');
  expect(sizeToString(512)).toBe('512 B');
  expect(sizeToString(4096)).toBe('4 KiB');
  expect(sizeToString(12288)).toBe('12 KiB');
  expect(sizeToString(266240)).toBe('260 KiB');
  expect(sizeToString(1380352)).toBe('1.32 MiB');
  expect(sizeToString(1024 * 1024 * 1024)).toBe('1 GiB');
  expect(sizeToString(67108864)).toBe('64 MiB');
  // From 1000 of a unit on, the next unit: 1000 KiB is "0.977 MiB".
  expect(sizeToString(1000 * 1024)).toBe('0.977 MiB');
  expect(sizeToString(999 * 1024)).toBe('999 KiB');
  expect(sizeToString(10240000)).toBe('9.77 MiB');
});

test('%0.3g and %0.2f', () => {
  expect(formatG3(1.5)).toBe('1.5');
  expect(formatG3(100)).toBe('100');
  expect(formatG3(0.977)).toBe('0.977');
  expect(formatG3(1234)).toBe('1.23e+03');
  expect(fixed2(1.66015625)).toBe('1.66');
  expect(fixed2(0.125)).toBe('0.12'); // an exact tie rounds to even, as glibc does
  expect(fixed2(0.375)).toBe('0.38');
  expect(fixed2(100)).toBe('100.00');
});

test('backing names: protocol detection and qemu path_combine', () => {
  expect(hasProtocol('json:{"file":{}}')).toBe(true);
  expect(hasProtocol('nbd://host/export')).toBe(true);
  expect(hasProtocol('base.qcow2')).toBe(false);
  expect(hasProtocol('./a:b.qcow2')).toBe(false);
  expect(hasProtocol('/abs/a:b')).toBe(false);
  expect(fullBackingFilename('top.qcow2', 'base.qcow2')).toBe('base.qcow2');
  expect(fullBackingFilename('sub/top.qcow2', 'base.qcow2')).toBe('sub/base.qcow2');
  expect(fullBackingFilename('sub/top.qcow2', '../base.qcow2')).toBe('sub/../base.qcow2');
  expect(fullBackingFilename('/a/top.qcow2', '/b/base.qcow2')).toBe('/b/base.qcow2');
  expect(fullBackingFilename('/a/top.qcow2', 'nbd://x')).toBe('nbd://x');
});

test('info text: dirty flag, backing without a resolvable path, nested format-specific data', () => {
  const text = infoHuman({
    'virtual-size': 1048576,
    filename: 'x.img',
    format: 'toy',
    'actual-size': 0,
    'format-specific': { type: 'toy', data: { 'some-list': [1, { 'a-b': 'c' }], flag: true } },
    'backing-filename': 'b.img',
    'dirty-flag': true,
  });
  expect(text).toBe(
    'image: x.img\nfile format: toy\nvirtual size: 1 MiB (1048576 bytes)\ndisk size: 0 B\ncleanly shut down: no\n' +
      'backing file: b.img (cannot determine actual path)\nFormat specific information:\n' +
      '    some list:\n        [0]: 1\n        [1]:\n            a b: c\n    flag: true\n',
  );
});

test('map table: zero rows are not listed; data without an offset cannot be shown', () => {
  const row = { start: 0, length: 65536, depth: 0, present: true, filename: 'f' };
  expect(mapHuman([{ ...row, zero: false, data: true, offset: 327680 }, { ...row, start: 65536, zero: true, data: false }])).toBe(
    'Offset          Length          Mapped to       File\n0               0x10000         0x50000         f\n',
  );
  expect(mapHuman([{ ...row, zero: false, data: true }])).toBeUndefined();
});
