import { inflateSync } from 'node:zlib';
import { readFileSync } from 'node:fs';
import { collectExtents, isIcError, mergeQemuMapEntries, toQemuMapEntry, type CheckReport, type Extent, type Image, type OpenOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { qemuConvert, qemuMap, type QemuMapEntry } from '@ic/test-utils';
import { vmdkDriver } from '../src/index.js';

export const inflate: NonNullable<OpenOptions['inflate']> = (data, kind) =>
  new Uint8Array(kind === 'zlib' ? inflateSync(data) : inflateSync(data, { finishFlush: 2 }));

const openFiles: FileIO[] = [];

/** Opens a file read-only with our driver (the file is closed by closeAll()). */
export async function openVmdk(path: string, options: OpenOptions = {}): Promise<Image> {
  const io = await FileIO.open(path);
  openFiles.push(io);
  return vmdkDriver.open(io, { inflate, ...options });
}

export async function closeAll(): Promise<void> {
  for (const io of openFiles.splice(0)) await io.close();
}

/**
 * Writes our reading of the image into a sparse raw file (only the ranges the map says hold data, so a 1 GiB
 * image costs what it stores), for `qemu-img compare -f vmdk -F raw`.
 */
export async function writeOurRaw(image: Image, rawPath: string, options: { everything?: boolean } = {}): Promise<void> {
  const out = await FileIO.create(rawPath);
  try {
    const size = image.info().virtualSize;
    await out.truncate(size);
    for (const extent of await collectExtents(image.map())) {
      if (!options.everything && extent.kind !== 'data' && extent.kind !== 'compressed') continue;
      for (let at = extent.guestOffset; at < extent.guestOffset + extent.length; at += 4 << 20) {
        const length = Math.min(4 << 20, extent.guestOffset + extent.length - at);
        await out.write(at, await image.read(at, length));
      }
    }
  } finally {
    await out.close();
  }
}

/** Our map as qemu-img map rows (depth 0), merged like qemu-img merges them. */
export function asQemuRows(extents: readonly Extent[]): QemuMapEntry[] {
  return mergeQemuMapEntries(extents.map((extent) => toQemuMapEntry(extent)));
}

/** qemu's map restricted to what depth 0 says: rows from the backing file become "not present". */
export function qemuRowsAtDepth0(file: string): QemuMapEntry[] {
  const rows = qemuMap(file, 'vmdk').map((row) =>
    row.depth === 0 ? row : { start: row.start, length: row.length, depth: 0, present: false, zero: true, data: false },
  );
  return mergeQemuMapEntries(rows);
}

export async function mapOf(image: Image): Promise<Extent[]> {
  return collectExtents(image.map());
}

/** The guest content according to qemu (through `qemu-img convert -O raw`). */
export function qemuRaw(file: string, rawPath: string): Uint8Array {
  qemuConvert(file, 'vmdk', rawPath, 'raw');
  return new Uint8Array(readFileSync(rawPath));
}

/** Runs `fn` and returns the IcError code it threw (undefined when it did not throw an IcError). */
export async function errorCode(fn: () => unknown): Promise<string | undefined> {
  try {
    await fn();
  } catch (error) {
    if (isIcError(error)) return error.code;
    throw error;
  }
  return undefined;
}

export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** The exit status qemu-img check would give for a report (1 check failed, 2 corruptions, 3 leaks only). */
export function exitCode(report: CheckReport): number {
  if (report.checkErrors > 0) return 1;
  if (report.corruptions > 0) return 2;
  return report.leaks > 0 ? 3 : 0;
}
