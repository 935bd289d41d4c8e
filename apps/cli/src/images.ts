import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { inflateRawSync, inflateSync } from 'node:zlib';
import { IcError, PROBE_LENGTH, assertCoverage, collectExtents, hasCapability, isIcError, isTransitionalSector, type BackingReference, type BlockIO, type Driver, type Extent, type Image } from '@ic/core';
import { FileIO, QEMU_LOCKS, type FileOpenOptions } from '@ic/core/node';
import { printable, usage, type Context } from './context.js';
import { FOREIGN_TAIL_LENGTH, recogniseForeign } from './foreign-formats.js';
import { fullBackingFilename, hasProtocol } from '@ic/qemu-output';

/** The driver named by -f (never probing then); a usage error when no installed driver has that name. */
export function namedDriver(context: Context, name: string | undefined): Driver | undefined {
  return name === undefined ? undefined : usage(() => context.registry.get(name));
}

/**
 * The probe score of a driver that claims any file (the driver contract: "Raw answers 1 and only wins when
 * nothing else claims the file"). A best score this low means no installed driver recognised the file.
 */
export const ANY_FILE_SCORE = 1;

/**
 * Picks the driver for a file by probe score. Raw answers the lowest score and only wins when nothing else
 * claims the file. Two drivers equally sure of a file are refused as ambiguous; in untrusted mode any second
 * claim above the "any file" score is refused (reliability.md G-1: reject multiple matches).
 *
 * When only the any-file driver claims the file, it is never chosen silently (DESIGN.md §6): a command that
 * writes (`purpose` 'write') is refused, since an unknown format taken for raw would have its container
 * rewritten as a guest disk; a read goes on with one warning. Both name a well-known format whose signature
 * the file carries (foreign-formats.ts). `-f` skips probing altogether.
 */
export async function probeDriver(context: Context, io: BlockIO, purpose: 'read' | 'write'): Promise<Driver> {
  const size = await io.size();
  const head = await io.read(0, Math.min(PROBE_LENGTH, size));
  const results = context.registry.probeBytes(head, size);
  const [best, second] = results;
  if (!best) throw new IcError('WRONG_FORMAT', `${io.name}: no installed driver recognises this file`, { path: io.name });
  const lowest = Math.min(...results.map((r) => r.score));
  if (second && second.score > lowest && (second.score === best.score || context.untrusted)) {
    const names = results.filter((r) => r.score > lowest).map((r) => `${r.driver.name} (score ${r.score})`).join(', ');
    throw new IcError('WRONG_FORMAT', `${io.name}: several formats claim this file: ${names}; name one with -f`, { path: io.name });
  }
  if (best.score > ANY_FILE_SCORE) return best.driver;
  const fallback = best.driver.name;
  const tailLength = Math.min(FOREIGN_TAIL_LENGTH, size);
  const foreign = recogniseForeign(head, await io.read(size - tailLength, tailLength), size);
  let what = '';
  if (foreign) {
    what = context.registry.find(foreign.name)
      ? ` (it carries the signature of ${foreign.what}, which the installed ${foreign.name} driver does not accept)`
      : ` (it looks like ${foreign.what}, a format no installed driver handles)`;
  }
  if (purpose === 'write') {
    throw new IcError(
      'WRONG_FORMAT',
      `${io.name}: no installed driver recognised the file${what}; it is not treated as ${fallback} unless -f ${fallback} is given: install a driver for its format, or pass -f ${fallback} if it really is a ${fallback} disk`,
      { path: io.name },
    );
  }
  context.err(`ic: warning: ${printable(`image format was not specified for '${io.name}' and probing guessed ${fallback}: no installed driver recognised it${what}; pass -f ${fallback} to read it as ${fallback} without this warning`)}\n`);
  return best.driver;
}

/**
 * What a command does with a file, which decides QEMU's lock bytes (the ones qemu-img takes for the same job):
 * 'info' as qemu-img info (uses nothing, shares neither write nor resize), 'read' as qemu-img map/check and
 * backing files (consistent read besides), 'write' exclusive. -U (force-share) reads without refusing a
 * writer; --no-lock takes and checks none at all. 'peek' takes none either: qemu-img create looks at a backing
 * file that way (its format and size), whoever uses it.
 */
export type Access = 'peek' | 'info' | 'read' | 'write';

function lockFor(context: Context, access: Access): FileOpenOptions['lock'] {
  if (!context.lock || access === 'peek') return false;
  if (access === 'write') return true;
  if (access === 'info') return context.forceShare ? false : QEMU_LOCKS.info;
  return context.forceShare ? QEMU_LOCKS.forceShareRead : QEMU_LOCKS.read;
}

/** A lock refusal with what the user can do about it. */
function withLockHint(error: unknown, access: Access): unknown {
  if (!isIcError(error) || error.step !== 'lock') return error;
  let hint: string | undefined;
  if (error.code === 'UNSUPPORTED') hint = '; pass --no-lock to write anyway, only if you are sure nothing else uses it';
  else if (error.code === 'LOCKED' && access !== 'write') hint = ', or read it anyway with -U (--force-share)';
  if (!hint) return error;
  return new IcError(error.code, `${error.message}${hint}`, { ...(error.path ? { path: error.path } : {}), step: 'lock', cause: error });
}

/** Opens a file for a command's access, with the lock bytes that access takes (see Access). */
export async function openFile(context: Context, filename: string, access: Access): Promise<FileIO> {
  if (access === 'write' && !context.lock) {
    context.err(`ic: warning: --no-lock: writing '${printable(filename)}' without QEMU's image locks; a virtual machine or qemu-img using it meanwhile would not be noticed\n`);
  }
  try {
    return await FileIO.open(filename, { writable: access === 'write', lock: lockFor(context, access) });
  } catch (error) {
    throw withLockHint(error, access);
  }
}

/** Creates (or empties) a file for `ic create`: locked like a write, refused untouched when another process holds it. */
export async function createFile(context: Context, filename: string): Promise<FileIO> {
  if (!context.lock) context.err(`ic: warning: --no-lock: creating '${printable(filename)}' without QEMU's image locks\n`);
  try {
    return await FileIO.create(filename, { lock: context.lock });
  } catch (error) {
    throw withLockHint(error, 'write');
  }
}

export interface OpenedImage {
  filename: string;
  io: FileIO;
  driver: Driver;
  image: Image;
  close(): Promise<void>;
}

/** Opens and validates an image with the named driver, or the probed one. Never writes. */
export async function openImage(
  context: Context,
  filename: string,
  options: { driver?: Driver | undefined; access?: Access; untrusted?: boolean } = {},
): Promise<OpenedImage> {
  const access = options.access ?? 'read';
  const io = await openFile(context, filename, access);
  const extraFiles: FileIO[] = [];
  try {
    const size = await io.size();
    if (size >= 512 && isTransitionalSector(await io.read(0, 512))) {
      throw new IcError('NEEDS_RECOVERY', `${filename}: an in-place conversion was interrupted; run \`ic recover ${filename}\` first`, { path: filename });
    }
    const driver = options.driver ?? (await probeDriver(context, io, access === 'write' ? 'write' : 'read'));
    if (!hasCapability(driver, 'read')) throw new IcError('UNSUPPORTED', `${driver.name}: the installed driver cannot open images`);
    const untrusted = options.untrusted ?? context.untrusted;
    const image = await driver.open(io, {
      untrusted,
      inflate: (data, kind) => new Uint8Array(kind === 'zlib' ? inflateSync(data) : inflateRawSync(data)),
      // Files the image names for its own data (VMDK extents): plain local paths next to the image, read-only,
      // and never in untrusted mode.
      ...(untrusted
        ? {}
        : {
            openFile: async (name: string) => {
              if (name === '' || hasProtocol(name)) {
                throw new IcError('EXTERNAL_REF', `${filename}: '${name}' is not a plain local path; ic opens only local files`, { path: filename });
              }
              // An extent is part of the image: opened read-only with the image's own read locks.
              const file = await openFile(context, isAbsolute(name) ? name : join(dirname(filename), name), access === 'write' ? 'read' : access);
              extraFiles.push(file);
              return file;
            },
          }),
    });
    if (untrusted) {
      const backing = image.info().backing;
      if (backing) {
        await image.close();
        throw new IcError('EXTERNAL_REF', `${filename}: the image references backing file '${backing.name}' (refused in untrusted mode)`, { path: filename });
      }
    }
    return {
      filename,
      io,
      driver,
      image,
      async close() {
        try {
          await image.close();
        } finally {
          await io.close();
          for (const file of extraFiles) await file.close().catch(() => undefined);
        }
      },
    };
  } catch (error) {
    await io.close().catch(() => undefined);
    for (const file of extraFiles) await file.close().catch(() => undefined);
    throw error;
  }
}

/** Chains longer than this are refused (a hostile chain must not exhaust file descriptors). */
export const MAX_BACKING_DEPTH = 32;

/** One image of a backing chain: depth 0 is the image the user named. */
export interface Layer {
  opened: OpenedImage;
  filename: string;
  depth: number;
  virtualSize: number;
  backing: BackingReference | undefined;
}

/**
 * The backing chain of an image, opened lazily, one layer at a time, only when a command needs the content
 * of a backing file. A backing name is opened only as a plain local path (relative to the directory of the
 * image that names it), never as a `json:` or protocol name, and never in untrusted mode.
 */
export class BackingChain {
  private readonly layers: Layer[] = [];
  private readonly extents = new Map<number, Extent[]>();
  private readonly realPaths: string[] = [];

  private constructor(private readonly context: Context) {}

  static async start(context: Context, top: OpenedImage): Promise<BackingChain> {
    const chain = new BackingChain(context);
    chain.layers.push(chain.layerOf(top, top.filename, 0));
    chain.realPaths.push(await realpath(top.filename).catch(() => top.filename));
    return chain;
  }

  get top(): Layer {
    return this.layers[0]!;
  }

  /** The layers opened so far, top first. */
  opened(): readonly Layer[] {
    return this.layers;
  }

  private layerOf(opened: OpenedImage, filename: string, depth: number): Layer {
    const info = opened.image.info();
    return { opened, filename, depth, virtualSize: info.virtualSize, backing: info.backing };
  }

  /** The layer's whole map, merged and checked for coverage (cached). */
  async extentsOf(layer: Layer): Promise<Extent[]> {
    let extents = this.extents.get(layer.depth);
    if (!extents) {
      extents = await collectExtents(layer.opened.image.map());
      assertCoverage(extents, layer.virtualSize, `${layer.opened.driver.name} map of ${layer.filename}`);
      this.extents.set(layer.depth, extents);
    }
    return extents;
  }

  /** The layer below `layer`, opened on first use; undefined at the end of the chain. */
  async below(layer: Layer): Promise<Layer | undefined> {
    const known = this.layers[layer.depth + 1];
    if (known) return known;
    const reference = layer.backing;
    if (!reference) return undefined;
    const { context } = this;
    const who = layer.filename;
    if (context.untrusted) {
      throw new IcError('EXTERNAL_REF', `${who}: the image references backing file '${reference.name}' (refused in untrusted mode)`, { path: who });
    }
    if (reference.name === '' || hasProtocol(reference.name)) {
      throw new IcError('EXTERNAL_REF', `${who}: backing file '${reference.name}' is not a plain local path; ic opens only local files`, { path: who });
    }
    if (layer.depth + 1 >= MAX_BACKING_DEPTH) {
      throw new IcError('LIMIT', `${who}: the backing chain is longer than ${MAX_BACKING_DEPTH} images`, { path: who });
    }
    const filename = fullBackingFilename(who, reference.name) ?? reference.name;
    let driver: Driver | undefined;
    if (reference.format !== undefined) {
      driver = context.registry.find(reference.format);
      if (!driver) throw new IcError('UNSUPPORTED', `${who}: backing file format '${reference.format}' has no installed driver`, { path: who });
    }
    const real = await realpath(filename).catch(() => filename);
    if (this.realPaths.includes(real)) {
      throw new IcError('CORRUPT', `${who}: the backing chain loops back to ${filename}`, { path: who });
    }
    let opened: OpenedImage;
    try {
      opened = await openImage(context, filename, { driver, untrusted: false });
    } catch (error) {
      if (isIcError(error)) {
        throw new IcError(error.code, `${who}: cannot open its backing file: ${error.message}`, { path: who, cause: error });
      }
      throw error;
    }
    const below = this.layerOf(opened, filename, layer.depth + 1);
    this.layers.push(below);
    this.realPaths.push(real);
    return below;
  }

  async close(): Promise<void> {
    for (const layer of this.layers.splice(0).reverse()) await layer.opened.close().catch(() => undefined);
  }
}
