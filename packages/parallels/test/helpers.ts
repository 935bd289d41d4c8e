import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { collectExtents, mergeQemuMapEntries, toQemuMapEntry, type Extent, type Image, type QemuMapEntry } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuMap, run } from '@ic/test-utils';
import { parallelsDriver, type ParallelsImage } from '../src/index.js';

/** Opens `path` with the Parallels driver, read-only, runs `body`, closes. */
export async function withImage<T>(path: string, body: (image: ParallelsImage, io: FileIO) => Promise<T>): Promise<T> {
  const io = await FileIO.open(path);
  try {
    return await body((await parallelsDriver.open(io)) as ParallelsImage, io);
  } finally {
    await io.close();
  }
}

/** Our map as qemu-img map rows. */
export async function ourQemuMap(image: Image): Promise<QemuMapEntry[]> {
  const extents: Extent[] = await collectExtents(image.map());
  return mergeQemuMapEntries(extents.map((extent) => toQemuMapEntry(extent)));
}

/** qemu-img map rows, merged the same way. */
export function theirQemuMap(path: string): QemuMapEntry[] {
  return mergeQemuMapEntries(qemuMap(path, 'parallels'));
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

/** Bytes [offset, offset+length) of a plain file. */
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
  const result = run('qemu-img', ['check', '-f', 'parallels', '--output=json', path]);
  return { code: result.code, json: JSON.parse(result.stdout) as Record<string, number | string> };
}
