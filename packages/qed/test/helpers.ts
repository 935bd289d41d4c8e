import { readFileSync, openSync, readSync, writeSync, closeSync } from 'node:fs';
import { collectExtents, mergeQemuMapEntries, toQemuMapEntry, type Extent, type Image, type QemuMapEntry } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuMap, run } from '@ic/test-utils';
import { qedDriver } from '../src/index.js';
import type { QedImage } from '../src/index.js';

/** Opens `path` with the QED driver (read-only unless asked), runs `body`, closes. */
export async function withImage<T>(path: string, body: (image: QedImage, io: FileIO) => Promise<T>, options: { backing?: Image } = {}): Promise<T> {
  const io = await FileIO.open(path);
  try {
    const image = (await qedDriver.open(io, options.backing ? { backing: options.backing } : {})) as QedImage;
    return await body(image, io);
  } finally {
    await io.close();
  }
}

/** Our map as qemu-img map rows (depth 0). */
export async function ourQemuMap(image: Image): Promise<QemuMapEntry[]> {
  const extents: Extent[] = await collectExtents(image.map());
  return mergeQemuMapEntries(extents.map((extent) => toQemuMapEntry(extent)));
}

/** qemu-img map rows, merged the same way and restricted to depth 0 (backing content is reported as unallocated by us). */
export function theirQemuMap(path: string): QemuMapEntry[] {
  const rows = qemuMap(path, 'qed').map((row) =>
    row.depth > 0 ? { start: row.start, length: row.length, depth: 0, present: false, zero: true, data: false } : row,
  );
  return mergeQemuMapEntries(rows.map((row) => (row.offset === undefined ? { start: row.start, length: row.length, depth: row.depth, present: row.present, zero: row.zero, data: row.data } : { ...row })));
}

/** Writes a little-endian u64 into a file (iotests' poke_file). */
export function pokeU64(path: string, offset: number, value: number | bigint): void {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  pokeBytes(path, offset, bytes);
}

export function pokeU32(path: string, offset: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  pokeBytes(path, offset, bytes);
}

export function pokeBytes(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** Reads a little-endian u64 from a file. */
export function peekU64(path: string, offset: number): number {
  const bytes = readFileSync(path).subarray(offset, offset + 8);
  return Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
}

/** Bytes [offset, offset+length) of a plain file (a raw reference made by qemu-img convert). */
export function rawRange(rawPath: string, offset: number, length: number): Uint8Array {
  const fd = openSync(rawPath, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** `qemu-img check --output=json` parsed, with the exit code. */
export function qemuCheckJson(path: string): { code: number; json: Record<string, number | string> } {
  const result = run('qemu-img', ['check', '-f', 'qed', '--output=json', path]);
  return { code: result.code, json: JSON.parse(result.stdout) as Record<string, number | string> };
}
