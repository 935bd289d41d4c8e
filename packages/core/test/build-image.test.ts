import { describe, expect, it } from 'vitest';
import { collectExtents, MemoryIO, writeImage } from '../src/index.js';
import { makeToyDriver } from './toy-format.js';

const C = 4096;

describe('writeImage', () => {
  for (const hostOrder of ['guest', 'reverse'] as const) {
    it(`builds an image of a prefixed target (each cluster's prefix written by the target, ${hostOrder} order) that checks clean`, async () => {
      const prefixed = makeToyDriver('toyx', 'TOYX', 1, { min: C, max: C }, { placement: { kind: 'prefixed', prefix: 512 }, hostAlignment: 512 });
      const data = [0, 3, 4, 9].map((cluster) => ({ guestOffset: cluster * C, bytes: new Uint8Array(C).fill(0x30 + cluster) }));
      const io = new MemoryIO(new Uint8Array(0), 'built');
      await writeImage(io, prefixed, { virtualSize: 12 * C, clusterSize: C, data, hostOrder });
      const image = await prefixed.open(io);
      const report = await image.check!();
      expect(report.messages).toEqual([]);
      const hosts = (await collectExtents(image.map())).filter((e) => e.kind === 'data').map((e) => (e.kind === 'data' ? e.hostOffset : 0));
      expect(hosts).toHaveLength(4);
      for (const host of hosts) expect(host % C).toBe(0);
      const bytes = await image.read(0, 12 * C);
      for (const { guestOffset, bytes: expected } of data) expect(bytes.subarray(guestOffset, guestOffset + C)).toEqual(expected);
      expect(bytes.subarray(C, 3 * C).every((b) => b === 0)).toBe(true);
    });
  }
});
