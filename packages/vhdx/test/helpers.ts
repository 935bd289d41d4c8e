import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { FileIO } from '@ic/core/node';
import { run } from '@ic/test-utils';
import { HEADER_FIELDS, HEADER_OFFSETS, HEADER_SIZE, setChecksum, vhdxDriver, type VhdxImage } from '../src/index.js';

/** Opens `path` with the VHDX driver, read-only, runs `body`, closes. */
export async function withImage<T>(path: string, body: (image: VhdxImage, io: FileIO) => Promise<T>): Promise<T> {
  const io = await FileIO.open(path);
  try {
    return await body((await vhdxDriver.open(io)) as VhdxImage, io);
  } finally {
    await io.close();
  }
}

export function pokeBytes(path: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

export function peekBytes(path: string, offset: number, length: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(length);
    readSync(fd, out, 0, length, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** `qemu-img check --output=json` parsed (undefined when qemu could not open the image), with the exit code. */
export function qemuCheckJson(path: string): { code: number; json: Record<string, number | string> | undefined; stderr: string } {
  const result = run('qemu-img', ['check', '-f', 'vhdx', '--output=json', path]);
  let json: Record<string, number | string> | undefined;
  try {
    json = JSON.parse(result.stdout) as Record<string, number | string>;
  } catch {
    json = undefined;
  }
  return { code: result.code, json, stderr: result.stderr };
}

/** Rewrites a header field in both headers and fixes their CRC-32C. */
export function patchHeaders(path: string, offset: number, bytes: Uint8Array): void {
  for (const at of HEADER_OFFSETS) {
    const block = peekBytes(path, at, HEADER_SIZE);
    block.set(bytes, offset);
    setChecksum(block, HEADER_FIELDS.checksum.offset);
    pokeBytes(path, at, block);
  }
}

/** qemu leaves its last log entry in the log after resetting the header's log GUID: pointing the GUID back at it makes a log qemu must replay. */
export function reviveLastLogEntry(path: string): void {
  patchHeaders(path, HEADER_FIELDS.logGuid.offset, peekBytes(path, 1024 * 1024 + 32, 16));
}
