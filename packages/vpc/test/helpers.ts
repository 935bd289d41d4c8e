import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { collectExtents, mergeQemuMapEntries, toQemuMapEntry, type Image, type QemuMapEntry } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuMap } from '@ic/test-utils';
import { vpcDriver, type VpcImage } from '../src/index.js';

/** Opens `path` with the VHD driver (read-only), runs `body`, closes. */
export async function withImage<T>(path: string, body: (image: VpcImage, io: FileIO) => Promise<T>): Promise<T> {
  const io = await FileIO.open(path);
  try {
    return await body((await vpcDriver.open(io)) as VpcImage, io);
  } finally {
    await io.close();
  }
}

/** Our map as qemu-img map rows. */
export async function ourQemuMap(image: Image): Promise<QemuMapEntry[]> {
  return mergeQemuMapEntries((await collectExtents(image.map())).map((extent) => toQemuMapEntry(extent)));
}

/**
 * qemu-img map rows, merged. On a fixed disk qemu asks the host file about holes (BDRV_BLOCK_RECURSE) and reports
 * them "zero": true, "data": true; ic's zero runs with a host offset print "data": false (as for raw), so those
 * rows are compared with data false.
 */
export function theirQemuMap(path: string): QemuMapEntry[] {
  return mergeQemuMapEntries(qemuMap(path, 'vpc').map((row) => (row.zero && row.data ? { ...row, data: false } : row)));
}

export function pokeBytes(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

export function pokeU32be(path: string, offset: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, false);
  pokeBytes(path, offset, bytes);
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
