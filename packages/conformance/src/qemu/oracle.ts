/**
 * The qemu oracle in the kit: samples made by qemu-img/qemu-io (with a raw reference made by `qemu-img convert`),
 * and the usability check every converted image passes where qemu knows its format: qemu-io writes new data at a
 * fresh place, over existing data and across the end of a data cluster into a partly allocated one, then
 * `qemu-img check` must exit 0 and `qemu-img compare` must find old and new data against a raw file built alongside.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { alignDown, alignUp, type BlockIO, type Driver, type Extent, type Image } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { CONTENT_WINDOW, type GuestContent } from '../crash/content.js';
import { copyToMemory, flatReference } from '../images.js';
import { qemuCheck, qemuCompare, qemuConvert, qemuCreate, qemuIo, requireQemu } from './tools.js';
import type { Sample, SampleSource } from '../samples.js';

function scratchDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const WINDOW = 1024 * 1024;

/** Writes a store's bytes to a file, leaving holes where it holds nothing (so a large sparse image stays small). */
export async function writeSparseFile(path: string, io: BlockIO): Promise<void> {
  const size = await io.size();
  const fd = openSync(path, 'w');
  try {
    const ranges = io.dataRanges ? await io.dataRanges(0, size) : [{ offset: 0, length: size }];
    for (const range of ranges) {
      for (let at = range.offset; at < range.offset + range.length; at += WINDOW) {
        const bytes = await io.read(at, Math.min(WINDOW, range.offset + range.length - at));
        if (bytes.some((b) => b !== 0)) writeSync(fd, bytes, 0, bytes.length, at);
      }
    }
    ftruncateSync(fd, size);
  } finally {
    closeSync(fd);
  }
}

async function loadFile(path: string, name: string): Promise<BlockIO> {
  const file = await FileIO.open(path, { lock: false });
  try {
    return await copyToMemory(file, name);
  } finally {
    await file.close();
  }
}

/** qemu's name for a flat file (guest byte N is file byte N). */
const FLAT_FORMAT = 'raw';

/** One sample made by qemu-img create and qemu-io. */
export interface QemuSampleSpec {
  name: string;
  /** Virtual size in bytes. */
  size: number;
  /** qemu-img create -o options, e.g. "cluster_size=4k,compat=0.10". */
  o?: string;
  /** qemu-io commands run on the new image, e.g. "write -P 0xab 0 64k", "write -z 1M 64k", "discard 0 64k". */
  writes: readonly string[];
  /**
   * A backing file made first and named by a relative name: of the sample's own format (opened with the driver),
   * or a flat raw file with `flat: true`. The reference content reads through it.
   */
  backing?: { flat?: boolean; writes: readonly string[] };
}

/**
 * Samples of `driver`'s format made by qemu's own tools, for describeDriver's `samples` option. Each image is
 * compared with a raw copy made by `qemu-img convert`. Requires qemu-img/qemu-io (a missing one fails).
 */
export function qemuSamples(driver: Driver, specs: readonly QemuSampleSpec[]): SampleSource {
  return async () => {
    requireQemu();
    const samples: Sample[] = [];
    for (const spec of specs) {
      const scratch = scratchDir('ic-kit-sample-');
      try {
        const image = join(scratch.dir, `image.${driver.name}`);
        const files: { name: string; io: BlockIO }[] = [];
        let backing: Image | undefined;
        if (spec.backing) {
          const format = spec.backing.flat ? FLAT_FORMAT : driver.name;
          const name = `base.${format}`;
          qemuCreate(join(scratch.dir, name), format, spec.size);
          if (spec.backing.writes.length > 0) qemuIo(join(scratch.dir, name), format, spec.backing.writes);
          const io = await loadFile(join(scratch.dir, name), name);
          files.push({ name, io });
          backing = spec.backing.flat ? await flatReference(io) : await driver.open(io);
          qemuCreate(image, driver.name, spec.size, { ...(spec.o ? { o: spec.o } : {}), backing: name, backingFormat: format, cwd: scratch.dir });
        } else {
          qemuCreate(image, driver.name, spec.size, spec.o ? { o: spec.o } : {});
        }
        if (spec.writes.length > 0) qemuIo(image, driver.name, spec.writes);
        const reference = join(scratch.dir, 'reference.raw');
        qemuConvert(image, driver.name, reference, 'raw');
        samples.push({
          name: spec.name,
          io: await loadFile(image, `${spec.name}.${driver.name}`),
          expected: await flatReference(await loadFile(reference, 'reference.raw'), spec.size),
          ...(backing ? { openOptions: { backing } } : {}),
          files,
        });
      } finally {
        scratch.cleanup();
      }
    }
    return samples;
  };
}

/** A guest write the usability check makes: `length` bytes of `byte` at `offset`. */
interface GuestWrite {
  offset: number;
  length: number;
  byte: number;
  where: string;
}

/**
 * Where to write, from the image's own map: a whole cluster at a fresh place (the last unallocated or zero
 * cluster), 1 KiB inside the first data extent, and 1.5 KiB across the end of the first data extent that has
 * something else after it (the next cluster becomes partly allocated, in a table that already holds entries).
 * An image without data gets a partial write into a fresh cluster instead.
 */
function chooseWrites(map: readonly Extent[], clusterSize: number, virtualSize: number): GuestWrite[] {
  const writes: GuestWrite[] = [];
  const free = map.filter((e) => e.kind === 'unallocated' || e.kind === 'zero');
  const whole = [...free].reverse().find((e) => alignDown(e.guestOffset + e.length, clusterSize) - alignUp(e.guestOffset, clusterSize) >= clusterSize);
  if (whole) {
    const offset = alignDown(whole.guestOffset + whole.length, clusterSize) - clusterSize;
    writes.push({ offset, length: clusterSize, byte: 0x5a, where: `a whole ${whole.kind} cluster at ${offset}` });
  }
  const data = map.find((e) => e.kind === 'data');
  if (data) {
    const offset = data.guestOffset + alignDown(data.length / 2, 512);
    writes.push({ offset, length: Math.min(1024, data.guestOffset + data.length - offset), byte: 0xa5, where: `over data at ${offset}` });
  }
  const before = map.find((e, i) => e.kind === 'data' && map[i + 1] !== undefined && map[i + 1]!.kind !== 'data');
  if (before) {
    const offset = before.guestOffset + before.length - 512;
    writes.push({ offset, length: Math.min(1536, virtualSize - offset), byte: 0x3c, where: `across the end of data at ${before.guestOffset + before.length}` });
  } else {
    const part = free.find((e) => e.length >= 2048 && e !== whole) ?? free.find((e) => e.length >= 2048);
    if (part) writes.push({ offset: alignUp(part.guestOffset, 512) + 512, length: 1024, byte: 0x3c, where: `into part of a fresh cluster at ${part.guestOffset}` });
  }
  return writes;
}

export interface UsabilityRequest {
  /** The converted image (left untouched: the check works on a file copy). */
  io: BlockIO;
  /** Its format, as qemu names it (the driver's name). */
  format: string;
  /** The image's map as its driver reads it. */
  map: readonly Extent[];
  clusterSize: number;
  /** The guest content it holds (through its backing file). */
  expected: GuestContent;
  /** Files it names (its backing file), stored next to the copy under these names. */
  files?: readonly { name: string; io: BlockIO }[];
  /** For messages. */
  what: string;
  /**
   * Leaked clusters the conversion reported leaving (ConversionReport.compaction.leaksLeft): qemu-img check may then
   * exit 3 (leaks only) with exactly that many; otherwise it must exit 0.
   */
  reportedLeaks?: number;
}

export interface QemuUsability {
  writes: readonly GuestWrite[];
}

/**
 * Proves a converted image is usable by qemu, not just readable: qemu-io writes new data at a fresh place, over
 * existing data, and into a partly allocated cluster, then `qemu-img check` exits 0 and `qemu-img compare` finds
 * every old and new byte against a raw file built alongside. Throws, with qemu's words, when it is not.
 */
export async function expectUsableWithQemu(request: UsabilityRequest): Promise<QemuUsability> {
  requireQemu();
  const scratch = scratchDir('ic-kit-usable-');
  try {
    const image = join(scratch.dir, `image.${request.format}`);
    await writeSparseFile(image, request.io);
    for (const file of request.files ?? []) await writeSparseFile(join(scratch.dir, file.name), file.io);
    const { virtualSize } = request.expected;
    const writes = chooseWrites(request.map, request.clusterSize, virtualSize);
    if (writes.length === 0) throw new Error(`${request.what}: found no place to write in a ${virtualSize}-byte disk`);
    qemuIo(
      image,
      request.format,
      writes.map((w) => `write -P 0x${w.byte.toString(16)} ${w.offset} ${w.length}`),
    );
    const checked = qemuCheck(image, request.format);
    const reported = request.reportedLeaks ?? 0;
    const onlyReportedLeaks = reported > 0 && checked.code === 3 && checked.json?.['leaks'] === reported;
    if (checked.code !== 0 && !onlyReportedLeaks) throw new Error(`${request.what}: qemu-img check exits ${checked.code} after qemu-io wrote ${writes.map((w) => w.where).join(', ')}:\n${checked.text}`);

    const expectedRaw = join(scratch.dir, 'expected.raw');
    const fd = openSync(expectedRaw, 'w');
    try {
      for (const [index, bytes] of request.expected.windows) writeSync(fd, bytes, 0, bytes.length, index * CONTENT_WINDOW);
      for (const w of writes) writeSync(fd, new Uint8Array(w.length).fill(w.byte), 0, w.length, w.offset);
      ftruncateSync(fd, virtualSize);
    } finally {
      closeSync(fd);
    }
    const compared = qemuCompare(image, request.format, expectedRaw, 'raw');
    if (compared.code !== 0) {
      throw new Error(`${request.what}: qemu-img compare with the expected content exits ${compared.code} after writes ${writes.map((w) => w.where).join(', ')}: ${(compared.stdout + compared.stderr).trim()}`);
    }
    return { writes };
  } finally {
    scratch.cleanup();
  }
}
