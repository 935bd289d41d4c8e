import { describe, expect, it } from 'vitest';
import {
  ByteView,
  convertInPlace,
  DRIVER_API_VERSION,
  IcError,
  inspectInterrupted,
  isIcError,
  MemoryIO,
  readExtents,
  recover,
  Registry,
  type BlockIO,
  type Driver,
  type Extent,
  type HostRange,
  type Image,
} from '../src/index.js';
import { KilledAfter } from './killed.js';
import { makeToyDriver } from './toy-format.js';

const C = 4096;
const toyA = makeToyDriver('toya', 'TOYA', 1);

/**
 * A toy A image laid out by hand: header in cluster 0, its table in cluster `tableCluster`, and guest cluster g's
 * data (filled with a byte of its own) in host cluster `hosts[g]` (undefined: unallocated).
 */
function handmade(clusters: number, tableCluster: number, hosts: readonly (number | undefined)[]): { io: MemoryIO; expected: Uint8Array } {
  const end = Math.max(tableCluster, ...hosts.map((h) => h ?? 0)) + 1;
  const file = new Uint8Array(end * C);
  const header = new ByteView(file.subarray(0, 28));
  header.bytes.set(new TextEncoder().encode('TOYA'), 0);
  header.setU32le(4, C);
  header.setU64le(8, clusters * C);
  header.setU64le(16, tableCluster * C);
  header.setU32le(24, 1);
  const table = new ByteView(file.subarray(tableCluster * C, tableCluster * C + clusters * 8));
  const expected = new Uint8Array(clusters * C);
  hosts.forEach((host, guest) => {
    if (host === undefined) return;
    table.setU64le(guest * 8, host * C);
    file.fill(0x40 + guest, host * C, (host + 1) * C);
    expected.fill(0x40 + guest, guest * C, (guest + 1) * C);
  });
  return { io: new MemoryIO(file, 'handmade'), expected };
}

async function content(io: BlockIO, driver: Driver, size: number): Promise<Uint8Array> {
  const image = await driver.open(io);
  try {
    return await image.read(0, size);
  } finally {
    await image.close();
  }
}

async function dataHosts(io: BlockIO, driver: Driver): Promise<number[]> {
  const image = await driver.open(io);
  const hosts: number[] = [];
  for await (const item of image.map()) {
    for (const extent of Array.isArray(item) ? (item as Extent[]) : [item as Extent]) {
      if (extent.kind === 'data') for (let at = 0; at < extent.length; at += C) hosts.push(extent.hostOffset + at);
    }
  }
  return hosts;
}

async function checkOf(io: BlockIO, driver: Driver) {
  const image = await driver.open(io);
  try {
    return await image.check!();
  } finally {
    await image.close();
  }
}


/**
 * Kills a conversion after every possible number of writes, recovers, and checks the file is the old image
 * byte-exact or a valid new one with the same content. Returns how many kills left each state.
 */
async function killEverywhere(pristine: Uint8Array, source: Driver, target: Driver, expected: Uint8Array, isNew: (io: BlockIO) => Promise<boolean>) {
  const outcomes = { old: 0, new: 0, marker: 0 };
  for (let limit = 0; ; limit++) {
    const memory = new MemoryIO(pristine, 'killed');
    let finished = false;
    try {
      await convertInPlace({ io: new KilledAfter(memory, limit), source, target });
      finished = true;
    } catch (error) {
      expect(isIcError(error) && error.message).toMatch(/killed/);
    }
    const drivers = new Registry([source, target]);
    if ((await inspectInterrupted(memory)) === 'transitional') outcomes.marker++;
    await recover(memory, { drivers });
    expect((await recover(memory, { drivers })).action).toBe('none');
    if (await isNew(memory)) {
      outcomes.new++;
      expect(await content(memory, target, expected.length), `kill after ${limit} writes`).toEqual(expected);
      if (target.capabilities.check) expect((await checkOf(memory, target)).corruptions, `kill after ${limit} writes`).toBe(0);
    } else {
      outcomes.old++;
      expect(memory.snapshot(), `kill after ${limit} writes`).toEqual(pristine);
    }
    if (finished) return outcomes;
  }
}

const magicIs = (magic: string) => async (io: BlockIO) => new TextDecoder().decode(await io.read(0, 4)) === magic;

describe("placement 'packed'", () => {
  const packed = makeToyDriver('toyp', 'TOYP', 1, { min: C, max: C }, { placement: { kind: 'packed', start: C }, hostAlignment: 512 });

  it('keeps the clusters whose slot is below n, fills the free slots, and moves a slot holding source metadata through scratch space', async () => {
    // Slots from host cluster 1: guest data in host clusters 1-4 and 6, the table in 5, guest 5 in 9 (past n).
    const { io, expected } = handmade(8, 5, [1, 2, 3, 4, 6, 9, undefined, undefined]);
    const report = await convertInPlace({ io, source: toyA, target: packed });
    expect(report.clustersKept).toBe(5);
    expect(report.clustersRelocated).toBe(1);
    expect(report.commit).toBe('transitional');
    expect(await content(io, packed, 8 * C)).toEqual(expected);
    expect((await checkOf(io, packed)).corruptions).toBe(0);
    const hosts = await dataHosts(io, packed);
    expect([...hosts].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6].map((k) => k * C));
    // The file ends with the target's table, allocated past the source's end (nothing of the record or scratch).
    expect(await io.size()).toBe(11 * C);
  });

  it('starts the packed run where the kept clusters are (any aligned offset past the minimum)', async () => {
    // Data in host clusters 4..7 (slots from 4 keep everything); nothing at 1..3 but the table at 2.
    const { io, expected } = handmade(4, 2, [4, 5, 6, 7]);
    const report = await convertInPlace({ io, source: toyA, target: packed });
    expect(report.clustersKept).toBe(4);
    expect(report.clustersRelocated).toBe(0);
    expect(await content(io, packed, 4 * C)).toEqual(expected);
    expect(Math.min(...(await dataHosts(io, packed)))).toBe(4 * C);
  });

  it('after a kill at every write, recover yields the old image byte-exact or the new one', async () => {
    const { io, expected } = handmade(8, 5, [1, 2, 3, 4, 6, 9, undefined, 7]);
    const outcomes = await killEverywhere(io.snapshot(), toyA, packed, expected, magicIs('TOYP'));
    expect(outcomes.old).toBeGreaterThan(2);
    expect(outcomes.new).toBeGreaterThan(2);
    // Kills between the transitional marker and the new header: the deferred writes were finished by recover.
    expect(outcomes.marker).toBeGreaterThan(1);
  });
});

describe("placement 'prefixed'", () => {
  const prefixed = makeToyDriver('toyx', 'TOYX', 1, { min: C, max: C }, { placement: { kind: 'prefixed', prefix: 512 }, hostAlignment: 512 });

  it('keeps every other cluster of a back-to-back run (the most that can stay), writing prefixes on free bytes now and on source bytes at the commit', async () => {
    // Guest 0-5 back to back in host clusters 2..7; the table in 1 (so the first prefix lies on it).
    const { io, expected } = handmade(6, 1, [2, 3, 4, 5, 6, 7]);
    const report = await convertInPlace({ io, source: toyA, target: prefixed });
    expect(report.clustersKept).toBe(3);
    expect(report.clustersRelocated).toBe(3);
    expect(await content(io, prefixed, 6 * C)).toEqual(expected);
    expect((await checkOf(io, prefixed)).corruptions).toBe(0);
    const kept = (await dataHosts(io, prefixed)).filter((host) => host < 8 * C);
    expect(kept).toEqual([2 * C, 4 * C, 6 * C]);
  });

  it('after a kill at every write, recover yields the old image byte-exact or the new one', async () => {
    const { io, expected } = handmade(6, 1, [2, 3, 4, 5, 6, 7]);
    const outcomes = await killEverywhere(io.snapshot(), toyA, prefixed, expected, magicIs('TOYX'));
    expect(outcomes.old).toBeGreaterThan(2);
    expect(outcomes.new).toBeGreaterThan(2);
    expect(outcomes.marker).toBeGreaterThan(1);
  });
});

/**
 * Identity: a footer format (data at its own offsets, a 512-byte footer "TOYF" + u64 size at the virtual size),
 * and sources described by hand (raw-like: data at its own offset, or not).
 */
const FOOTER = 512;

function footerBytes(virtualSize: number): Uint8Array {
  const footer = ByteView.alloc(FOOTER);
  footer.bytes.set(new TextEncoder().encode('TOYF'), 0);
  footer.setU64le(8, virtualSize);
  return footer.bytes;
}

const toyFooter: Driver = {
  name: 'toyf',
  description: 'toy footer format',
  version: '0.0.0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { read: true, zeroExtents: false, check: false, inPlaceSource: false, inPlaceTarget: true },
  probe: () => 0,
  open: async (io) => {
    const size = await io.size();
    const footer = new ByteView(await io.read(size - FOOTER, FOOTER));
    if (footer.text(0, 4) !== 'TOYF' || footer.u64le(8) !== size - FOOTER) throw new IcError('WRONG_FORMAT', 'toyf: no footer');
    const virtualSize = size - FOOTER;
    const extents: Extent[] = [{ kind: 'data', guestOffset: 0, length: virtualSize, hostOffset: 0 }];
    const image: Image = {
      format: 'toyf',
      info: () => ({ format: 'toyf', virtualSize, dirty: false }),
      map: async function* () {
        yield* extents;
      },
      read: (offset, length) => readExtents(io, extents, offset, length),
      close: async () => {},
    };
    return image;
  },
  inPlace: {
    clusterSizes: { min: 512, max: 512 },
    create: (request) => ({
      layout: {
        clusterSize: request.clusterSize,
        headerRegionSize: FOOTER,
        headerOffset: request.source.virtualSize,
        maxHostOffset: request.source.virtualSize,
        zeroExtents: false,
        placement: { kind: 'identity' },
      },
      problems: [],
      estimate: () => ({ metadataBytes: 0 }),
      build: async (mapping) => {
        for await (const batch of mapping) {
          for (const extent of batch) if (extent.kind === 'data' && extent.hostOffset !== extent.guestOffset) throw new IcError('INTERNAL', 'toyf: not identity');
        }
        return { header: footerBytes(request.source.virtualSize), fileSize: request.source.virtualSize + FOOTER };
      },
    }),
  },
};

/** A source whose map and metadata are given: `zeroHoles` says zero extents with a host offset read as zeros there. */
function describedSource(extents: readonly Extent[], metadata: readonly HostRange[], virtualSize: number, zeroHoles = false): Driver {
  return {
    name: 'described',
    description: 'a source described by hand',
    version: '0.0.0',
    apiVersion: DRIVER_API_VERSION,
    capabilities: { read: true, zeroExtents: true, check: false, inPlaceSource: true, inPlaceTarget: false },
    probe: () => 0,
    open: async (io) => ({
      format: 'described',
      info: () => ({ format: 'described', virtualSize, dirty: false }),
      map: async function* () {
        yield* extents;
      },
      read: (offset, length) => readExtents(io, extents, offset, length),
      conversionSource: async () => ({
        options: { virtualSize, clusterSize: 512 },
        blockers: [],
        metadataRanges: () => metadata,
        ...(zeroHoles ? { zeroHostRangesReadAsZero: true } : {}),
      }),
      close: async () => {},
    }),
  };
}

describe("placement 'identity' with a footer", () => {
  const size = 16 * C;
  const filled = () => {
    const bytes = new Uint8Array(size);
    for (let i = 0; i < size; i++) bytes[i] = (i * 7) % 253;
    bytes.fill(0, 4 * C, 6 * C);
    return bytes;
  };

  const rawLike = () =>
    describedSource(
      [
        { kind: 'data', guestOffset: 0, length: 4 * C, hostOffset: 0 },
        { kind: 'zero', guestOffset: 4 * C, length: 2 * C, hostOffset: 4 * C },
        { kind: 'data', guestOffset: 6 * C, length: 10 * C, hostOffset: 6 * C },
      ],
      [],
      size,
      true,
    );

  it('a raw-like file becomes the footer format by one footer write: nothing moves', async () => {
    const file = filled();
    const io = new MemoryIO(file, 'raw');
    const report = await convertInPlace({ io, source: rawLike(), target: toyFooter });
    expect(report.clustersRelocated).toBe(0);
    expect(report.commit).toBe('single-sector');
    expect(report.io.bytesWritten).toBeLessThan(16 * 1024);
    expect(await io.size()).toBe(size + FOOTER);
    expect(await content(io, toyFooter, size)).toEqual(file);
  });

  it('after a kill at every write, recover yields the old file byte-exact or the new image', async () => {
    const file = filled();
    const isNew = async (io: BlockIO) => (await io.size()) === size + FOOTER && new TextDecoder().decode(await io.read(size, 4)) === 'TOYF';
    const outcomes = await killEverywhere(file, rawLike(), toyFooter, file, isNew);
    expect(outcomes.old).toBeGreaterThan(1);
    expect(outcomes.new).toBeGreaterThan(0);
  });

  it('refuses data stored away from its own offset, even onto free bytes (that rewrites the file), leaving it untouched', async () => {
    // Guest 0..8 C at host 0; guest 8 C..10 C stored past the disk at host 17 C; host 8 C..17 C free garbage.
    const file = new Uint8Array(19 * C).fill(0x77);
    file.set(filled().subarray(0, 8 * C), 0);
    const source = describedSource(
      [
        { kind: 'data', guestOffset: 0, length: 8 * C, hostOffset: 0 },
        { kind: 'data', guestOffset: 8 * C, length: 2 * C, hostOffset: 17 * C },
        { kind: 'unallocated', guestOffset: 10 * C, length: 6 * C },
      ],
      [],
      size,
    );
    const io = new MemoryIO(file, 'moved');
    const error = await convertInPlace({ io, source, target: toyFooter }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('UNSUPPORTED');
    expect(io.snapshot()).toEqual(file);
  });

  it('refuses when data or zeros would have to land on bytes the source still uses, leaving the file untouched', async () => {
    const file = filled();
    const source = describedSource(
      [
        { kind: 'data', guestOffset: 0, length: 8 * C, hostOffset: 8 * C },
        { kind: 'data', guestOffset: 8 * C, length: 8 * C, hostOffset: 0 },
      ],
      [],
      size,
    );
    const io = new MemoryIO(file, 'swapped');
    const error = await convertInPlace({ io, source, target: toyFooter }).catch((e: unknown) => e);
    expect(isIcError(error) && error.code).toBe('UNSUPPORTED');
    expect(isIcError(error) && error.message).toMatch(/own host offset/);
    expect(io.snapshot()).toEqual(file);
  });
});
