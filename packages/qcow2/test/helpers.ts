import { inflateRawSync, inflateSync } from 'node:zlib';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { collectExtents, isIcError, mergeQemuMapEntries, toQemuMapEntry, type CheckReport, type Extent, type Image, type OpenOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuCheck, qemuMap, type QemuMapEntry } from '@ic/test-utils';
import { Qcow2Image, qcow2Driver } from '../src/index.js';

/** zlib for compressed clusters (qcow2 stores raw deflate streams). */
export const inflate: NonNullable<OpenOptions['inflate']> = (data, kind) =>
  new Uint8Array(kind === 'zlib' ? inflateSync(data) : inflateRawSync(data, { finishFlush: 2 }));

const openFiles: FileIO[] = [];

/** Opens a file read-only with our driver; closeAll() closes the files. */
export async function openQcow2(path: string, options: OpenOptions = {}): Promise<Qcow2Image> {
  const io = await FileIO.open(path);
  openFiles.push(io);
  return (await qcow2Driver.open(io, { inflate, ...options })) as Qcow2Image;
}

/** Opens a file for writing with our driver, runs `body`, closes the file. */
export async function withWritable<T>(file: string, body: (image: Qcow2Image) => Promise<T>): Promise<T> {
  const io = await FileIO.open(file, { writable: true });
  try {
    return await body((await qcow2Driver.open(io, { inflate })) as Qcow2Image);
  } finally {
    await io.close();
  }
}

export async function closeAll(): Promise<void> {
  for (const io of openFiles.splice(0)) await io.close();
}

export async function mapOf(image: Image): Promise<Extent[]> {
  return collectExtents(image.map());
}

/** Our map as qemu-img map rows (depth 0), merged like qemu-img merges them. */
export function asQemuRows(extents: readonly Extent[]): QemuMapEntry[] {
  return mergeQemuMapEntries(extents.map((extent) => toQemuMapEntry(extent)));
}

/**
 * qemu's map at depth 0. With `dropUnallocatedOffsets`, the offset qemu shows for unallocated subclusters of an
 * allocated cluster (extended L2) is dropped: the Extent union has no "unallocated with host offset".
 */
export function qemuRows(file: string, options: { dropUnallocatedOffsets?: boolean } = {}): QemuMapEntry[] {
  const rows = qemuMap(file, 'qcow2').map((row) => {
    if (row.depth !== 0) return { start: row.start, length: row.length, depth: 0, present: false, zero: true, data: false };
    if (options.dropUnallocatedOffsets && !row.present && row.offset !== undefined) {
      const { offset: _offset, ...rest } = row;
      return rest;
    }
    return row;
  });
  return mergeQemuMapEntries(rows);
}

/** Runs `fn` and returns the IcError code it threw (undefined when it did not throw). Rethrows anything else. */
export async function errorCode(fn: () => unknown): Promise<string | undefined> {
  try {
    await fn();
  } catch (error) {
    if (isIcError(error)) return error.code;
    throw error;
  }
  return undefined;
}

/** Overwrites bytes of a file in place (like qemu's iotests poke_file). */
export function poke(path: string, offset: number, bytes: Uint8Array | number[]): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Uint8Array.from(bytes), 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

export function peek(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

export function u64be(value: bigint | number): number[] {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value));
  return [...bytes];
}

export function u32be(value: number): number[] {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value);
  return [...bytes];
}

export { pattern } from '@ic/conformance';

/** The exit status and the numbers of `qemu-img check --output=json` (0 where qemu-img leaves a field out). */
export function qemuCheckVerdict(file: string) {
  const result = qemuCheck(file, 'qcow2');
  const json = result.json ?? {};
  const n = (key: string) => (json[key] as number | undefined) ?? 0;
  return {
    exit: result.code,
    numbers: {
      corruptions: n('corruptions'),
      leaks: n('leaks'),
      checkErrors: n('check-errors'),
      totalClusters: n('total-clusters'),
      allocatedClusters: n('allocated-clusters'),
      fragmentedClusters: n('fragmented-clusters'),
      compressedClusters: n('compressed-clusters'),
      imageEndOffset: n('image-end-offset'),
    },
  };
}

/** The same from our report (the exit status as `ic check` derives it). */
export function ourCheckVerdict(report: CheckReport) {
  return {
    exit: report.checkErrors > 0 ? 1 : report.corruptions > 0 ? 2 : report.leaks > 0 ? 3 : 0,
    numbers: {
      corruptions: report.corruptions,
      leaks: report.leaks,
      checkErrors: report.checkErrors,
      totalClusters: report.totalClusters,
      allocatedClusters: report.allocatedClusters,
      fragmentedClusters: report.fragmentedClusters,
      compressedClusters: report.compressedClusters,
      imageEndOffset: report.imageEndOffset,
    },
  };
}

export const qemuCheckNumbers = (file: string) => qemuCheckVerdict(file).numbers;
export const ourCheckNumbers = (report: CheckReport) => ourCheckVerdict(report).numbers;
