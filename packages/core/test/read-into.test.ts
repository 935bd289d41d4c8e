/**
 * readInto(): the reads hot loops make into one reused buffer give exactly what read() gives, through a file, the
 * counting wrapper and a read view with a new head and deferred writes over it; stale bytes of the buffer never
 * survive a read that meets the end of the file.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CountingIO, MemoryIO } from '../src/index.js';
import { readInto, type BlockIO } from '../src/sdk/index.js';
import { ReadView } from '../src/engine/view.js';
import { FileIO } from '../src/platform/index.js';

const dir = mkdtempSync(join(tmpdir(), 'ic-read-into-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function pattern(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 7 + 3) & 0xff;
  return bytes;
}

/** read() and readInto() with a buffer full of 0xee agree at every (offset, length) probed. */
async function agree(io: BlockIO, probes: [number, number][]): Promise<void> {
  for (const [offset, length] of probes) {
    const expected = await io.read(offset, length);
    const into = new Uint8Array(length).fill(0xee);
    const got = await readInto(io, offset, into);
    expect(got).toBe(into);
    expect(Buffer.from(got).equals(Buffer.from(expected)), `${offset}+${length}`).toBe(true);
  }
}

describe('readInto', () => {
  const probes: [number, number][] = [
    [0, 512],
    [1000, 4096],
    [12000, 1000], // ends past the end of the 12288-byte file
    [12288, 512], // wholly past it
    [20000, 64],
  ];

  it('reads a file as read() does, zeros past its end over stale bytes', async () => {
    const path = join(dir, 'f.bin');
    writeFileSync(path, pattern(12288));
    const io = await FileIO.open(path, { writable: false });
    try {
      expect(typeof io.readInto).toBe('function');
      await agree(io, probes);
      const counting = new CountingIO(io);
      await agree(counting, probes);
      // Each probe is a read() and a readInto(), both counted.
      expect(counting.stats.reads).toBe(2 * probes.length);
    } finally {
      await io.close();
    }
  });

  it('through a read view: its length, new head and overlay apply as to read()', async () => {
    const memory = new MemoryIO(pattern(12288));
    const overlay = {
      async apply(offset: number, out: Uint8Array): Promise<void> {
        // A deferred write of 0x77 over [5000, 5100).
        for (let at = Math.max(offset, 5000); at < Math.min(offset + out.length, 5100); at++) out[at - offset] = 0x77;
      },
    };
    const view = new ReadView(memory, 9000, new Uint8Array(600).fill(0x11), 700, overlay);
    await agree(view, [...probes, [600, 800], [4990, 200], [8900, 300]]);
    const head = await readInto(view, 650, new Uint8Array(100).fill(0xee));
    expect([...head.subarray(0, 50)]).toEqual([...pattern(700).subarray(650, 700)]);
    expect(head.subarray(50).every((byte) => byte === 0x11)).toBe(true);
    const past = await readInto(view, 8990, new Uint8Array(20).fill(0xee));
    expect([...past.subarray(10)]).toEqual(new Array(10).fill(0));
  });
});
