import { describe, expect, it } from 'vitest';
import {
  convertInPlace,
  inspectInterrupted,
  isIcError,
  MemoryIO,
  readIntent,
  recover,
  Registry,
  writeImage,
  type BlockIO,
} from '../src/index.js';
import { KilledAfter } from './killed.js';
import { makeToyDriver } from './toy-format.js';

const toyA = makeToyDriver('toya', 'TOYA', 1);
const toyB = makeToyDriver('toyb', 'TOYB', 2);
const toyWide = makeToyDriver('toyw', 'TOYW', 1);

const clusterSize = 4096;
const content = {
  virtualSize: 48 * clusterSize,
  clusterSize,
  data: [
    { guestOffset: 0, bytes: new Uint8Array(3 * clusterSize).fill(0x31) },
    { guestOffset: 30 * clusterSize + 7, bytes: new Uint8Array(100).fill(0x32) },
  ],
};
const expected = new Uint8Array(content.virtualSize);
for (const piece of content.data) expected.set(piece.bytes, piece.guestOffset);

async function sample(): Promise<MemoryIO> {
  const io = new MemoryIO(new Uint8Array(0), 'sample');
  await writeImage(io, toyA, content);
  return io;
}

async function readAs(io: BlockIO, format: typeof toyA): Promise<Uint8Array> {
  return (await format.open(io)).read(0, content.virtualSize);
}

describe('recover', () => {
  it('does nothing to an image without an interrupted conversion', async () => {
    const io = await sample();
    const before = io.snapshot();
    expect(await recover(io)).toMatchObject({ action: 'none' });
    expect(io.snapshot()).toEqual(before);
  });

  it('leaves no intent record behind after a finished conversion', async () => {
    const io = await sample();
    await convertInPlace({ io, source: toyA, target: toyB });
    expect(await readIntent(io)).toBeUndefined();
    expect(await inspectInterrupted(io)).toBe('none');
  });

  for (const [name, target] of [
    ['a header that fits one sector', toyB],
    ['the same header size', toyWide],
  ] as const) {
    it(`after a kill at every write (${name}), recover yields the old or the new image, byte-exact for the old`, async () => {
      const pristine = (await sample()).snapshot();
      const outcomes = { old: 0, new: 0 };
      for (let limit = 0; ; limit++) {
        const memory = new MemoryIO(pristine, 'killed');
        const killed = new KilledAfter(memory, limit);
        let finished = false;
        try {
          await convertInPlace({ io: killed, source: toyA, target });
          finished = true;
        } catch (error) {
          expect(isIcError(error) && error.message).toMatch(/killed/);
        }
        const drivers = new Registry([toyA, target]);
        const result = await recover(memory, { drivers });
        // Recovery is idempotent.
        expect((await recover(memory, { drivers })).action).toBe('none');
        const head = await memory.read(0, 4);
        const format = new TextDecoder().decode(head) === 'TOYA' ? toyA : target;
        expect(await readAs(memory, format)).toEqual(expected);
        if (format === toyA) {
          outcomes.old++;
          expect(memory.snapshot(), `kill after ${limit} writes, recovery ${result.action}`).toEqual(pristine);
        } else {
          outcomes.new++;
          // An interrupted packing is finished by recover: nothing is left unreferenced.
          expect((await (await target.open(memory)).check!()).leaks, `kill after ${limit} writes`).toBe(0);
        }
        if (finished) break;
      }
      expect(outcomes.old).toBeGreaterThan(2);
      expect(outcomes.new).toBeGreaterThan(0);
    });
  }

  it('refuses to convert an image with an interrupted conversion until it is recovered', async () => {
    const pristine = (await sample()).snapshot();
    const memory = new MemoryIO(pristine, 'killed');
    await convertInPlace({ io: new KilledAfter(memory, 3), source: toyA, target: toyB }).catch(() => undefined);
    expect(await inspectInterrupted(memory)).toBe('intent-record');
    const error = await convertInPlace({ io: memory, source: toyA, target: toyB }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('NEEDS_RECOVERY');
    expect((await recover(memory)).action).toBe('rolled-back');
    expect(memory.snapshot()).toEqual(pristine);
  });
});

describe('recover refuses records it cannot trust', () => {
  /** A MemoryIO that claims a file identity, as FileIO does. */
  class NamedMemory extends MemoryIO {
    constructor(
      bytes: Uint8Array,
      private readonly id: string,
    ) {
      super(bytes, id);
    }
    async identity(): Promise<string> {
      return this.id;
    }
  }

  it('a record written for another file (a copy, or forged by a guest) is not acted on', async () => {
    const original = new NamedMemory((await sample()).snapshot(), 'file:1:2:3');
    await convertInPlace({ io: new KilledAfter(original, 3), source: toyA, target: toyB }).catch(() => undefined);
    const copy = new NamedMemory(original.snapshot(), 'file:1:9:3');
    const before = copy.snapshot();
    const error = await recover(copy).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('NEEDS_RECOVERY');
    expect(copy.snapshot()).toEqual(before);
    // The user may vouch for a copy explicitly.
    expect((await recover(copy, { trustForeignRecord: true })).action).toBe('rolled-back');
    expect(await readAs(copy, toyA)).toEqual(expected);
    // The original recovers normally.
    expect((await recover(original)).action).toBe('rolled-back');
  });

  it('a sector 0 that matches neither side is left alone', async () => {
    const io = new NamedMemory((await sample()).snapshot(), 'file:7:7:7');
    await convertInPlace({ io: new KilledAfter(io, 3), source: toyA, target: toyB }).catch(() => undefined);
    await io.write(0, new Uint8Array(512).fill(0x66));
    const before = io.snapshot();
    const error = await recover(io).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('NEEDS_RECOVERY');
    expect(io.snapshot()).toEqual(before);
  });
});
