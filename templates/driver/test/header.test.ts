import { describe, expect, it } from 'vitest';
import { isIcError, MemoryIO } from '@ic/core';
import { decodeHeader, encodeHeader, toyDriver } from '../src/index.js';

/** A typed error's code, or the error itself when it is not typed. */
async function codeOf(promise: Promise<unknown>): Promise<unknown> {
  const error = await promise.then(() => undefined, (e: unknown) => e);
  return isIcError(error) ? error.code : error;
}

describe('toy header', () => {
  const header = { clusterSize: 65536, virtualSize: 1 << 30, tableOffset: 65536 };

  it('round-trips', () => {
    expect(decodeHeader(encodeHeader(header), 1 << 20)).toEqual(header);
  });

  it('refuses hostile headers with typed errors, before allocating anything they claim', async () => {
    const open = async (bytes: Uint8Array, fileSize = 1 << 20) => {
      const io = new MemoryIO(new Uint8Array(fileSize));
      await io.write(0, bytes);
      return codeOf(toyDriver.open(io));
    };
    expect(await open(new TextEncoder().encode('NOTATOY!'))).toBe('WRONG_FORMAT');
    const flipped = encodeHeader(header);
    flipped[20] = flipped[20]! ^ 1; // a bit of virtual_size: the checksum no longer matches
    expect(await open(flipped)).toBe('CORRUPT');
    expect(await open(encodeHeader({ ...header, virtualSize: 2 ** 50 }))).toBe('LIMIT');
    expect(await open(encodeHeader({ ...header, tableOffset: 1 << 20 }))).toBe('CORRUPT');
    expect(await open(encodeHeader({ ...header, tableOffset: 4096 }))).toBe('CORRUPT');
  });
});
