import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { collectExtents, mergeQemuMapEntries, toQemuMapEntry, type Image, type QemuMapEntry } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuMap, run } from '@ic/test-utils';
import { vdiDriver, type VdiImage } from '../src/index.js';

/** Opens `path` with the VDI driver (read-only), runs `body`, closes. */
export async function withImage<T>(path: string, body: (image: VdiImage, io: FileIO) => Promise<T>): Promise<T> {
  const io = await FileIO.open(path);
  try {
    return await body((await vdiDriver.open(io)) as VdiImage, io);
  } finally {
    await io.close();
  }
}

/** Our map as qemu-img map rows. */
export async function ourQemuMap(image: Image): Promise<QemuMapEntry[]> {
  return mergeQemuMapEntries((await collectExtents(image.map())).map((extent) => toQemuMapEntry(extent)));
}

/**
 * qemu-img map rows, merged. For static images qemu asks the host file about holes (BDRV_BLOCK_RECURSE) and
 * reports them "zero": true, "data": true; ic's zero runs with a host offset print "data": false (the Extent
 * model has no "data that reads as zero"), so those rows are compared with data false.
 */
export function theirQemuMap(path: string): QemuMapEntry[] {
  return mergeQemuMapEntries(qemuMap(path, 'vdi').map((row) => (row.zero && row.data ? { ...row, data: false } : row)));
}

export function pokeU32(path: string, offset: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  pokeBytes(path, offset, bytes);
}

export function pokeU64(path: string, offset: number, value: number | bigint): void {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
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
export function fileRange(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** `qemu-img check --output=json` parsed (empty object when qemu printed none), with the exit code. */
export function qemuCheckJson(path: string): { code: number; json: Record<string, number | string> } {
  const result = run('qemu-img', ['check', '-f', 'vdi', '--output=json', path]);
  return { code: result.code, json: result.stdout.trim() === '' ? {} : (JSON.parse(result.stdout) as Record<string, number | string>) };
}
