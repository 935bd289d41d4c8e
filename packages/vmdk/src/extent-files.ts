import { IcError, isIcError, type BlockIO, type OpenOptions } from '@ic/core/sdk';
import type { Descriptor, ExtentLine, ExtentType } from './descriptor.js';
import { corruptAt, FORMAT, limitAt, vmdkError } from './errors.js';
import { COWD_MAGIC_BYTES, hasMagic, parseSparseHeader, SECTOR_SIZE } from './header.js';
import { loadSparseTables, readSparseGeometry, SparseVmdkImage } from './image.js';

/**
 * The files a descriptor names for its data (monolithicFlat, twoGbMaxExtent*, vmfs*), opened read-only through
 * OpenOptions.openFile. Each extent covers the next `sectors` of the guest disk:
 *   FLAT / VMFS          guest bytes are the file's bytes from the line's sector offset on (VMFS: offset 0)
 *   SPARSE / VMFSSPARSE  the file is a "KDMV" sparse extent with its own header, grain directory and tables;
 *                        its capacity must equal the line's sector count
 *   SESPARSE             not supported (the image then describes itself from the descriptor only)
 */

/** One descriptor opens at most this many files: a 2 TiB twoGbMaxExtent disk has 1024 extents. */
export const MAX_EXTENT_FILES = 1024;

interface ExtentFileBase {
  line: ExtentLine & { type: ExtentType };
  /** The name as qemu shows it (resolved against the descriptor's directory), for info and messages. */
  path: string;
  /** Where the extent starts in the guest disk, and how many guest bytes it covers. */
  guestOffset: number;
  length: number;
  io: BlockIO;
  fileSize: number;
}

export interface FlatExtentFile extends ExtentFileBase {
  kind: 'flat';
  /** Byte offset in the file of the extent's first guest byte. */
  flatOffset: number;
}

export interface SparseExtentFile extends ExtentFileBase {
  kind: 'sparse';
  /** The extent opened like a standalone sparse file (guest offsets relative to the extent). */
  image: SparseVmdkImage;
}

export type ExtentFile = FlatExtentFile | SparseExtentFile;

/** Either every extent file, opened and validated, or why they cannot be used (a feature we do not read). */
export type ExtentFiles = { files: ExtentFile[] } | { unsupported: string };

/** A path with "." and ".." segments and repeated slashes folded, to compare two names for the same file. */
export function normalizePath(path: string): string {
  const absolute = path.startsWith('/');
  const parts: string[] = [];
  for (const part of path.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..' && parts.length > 0 && parts[parts.length - 1] !== '..') parts.pop();
    else if (part !== '..' || !absolute) parts.push(part);
  }
  return (absolute ? '/' : '') + parts.join('/');
}

function lineText(line: ExtentLine): string {
  return `descriptor line ${line.line}`;
}

/** Rewrites an error raised while reading an extent file so that it names the file (same code, same offset). */
function inExtent(error: unknown, line: ExtentLine, step: string): IcError {
  const where = `extent file "${line.fileName}" (${lineText(line)})`;
  if (isIcError(error)) {
    const detail = error.message.startsWith(`${FORMAT}: `) ? error.message.slice(FORMAT.length + 2) : error.message;
    return new IcError(error.code, `${FORMAT}: ${where}: ${detail}`, {
      format: FORMAT,
      ...(error.offset === undefined ? {} : { offset: error.offset }),
      ...(error.path === undefined ? {} : { path: error.path }),
      cause: error,
    });
  }
  return new IcError('IO', `${FORMAT}: ${where}: ${step} failed (${error instanceof Error ? error.message : String(error)})`, { format: FORMAT, cause: error });
}

async function identityOf(io: BlockIO): Promise<string | undefined> {
  if (!io.identity) return undefined;
  try {
    return await io.identity();
  } catch {
    return undefined;
  }
}

async function closeQuietly(files: readonly BlockIO[]): Promise<void> {
  for (const io of files) {
    try {
      await io.close();
    } catch {
      // Already closed or failing: nothing more to release.
    }
  }
}

/** Opens a SPARSE / VMFSSPARSE extent: a "KDMV" file validated like a standalone sparse extent. */
async function openSparseExtent(
  io: BlockIO,
  fileSize: number,
  line: ExtentLine,
  descriptor: Descriptor,
  options: OpenOptions,
): Promise<SparseVmdkImage | { unsupported: string }> {
  if (fileSize < 4) throw corruptAt(`the file is too small (${fileSize} bytes) to be a sparse extent`);
  const head = await io.read(0, SECTOR_SIZE);
  if (hasMagic(head, COWD_MAGIC_BYTES)) return { unsupported: `VMDK3 "COWD" sparse extents ("${line.fileName}") are not supported` };
  if (!hasMagic(head)) throw corruptAt('the file is not a sparse extent (no "KDMV" magic)', 0);
  if (fileSize < SECTOR_SIZE) throw corruptAt(`header is truncated: the file has ${fileSize} bytes, a sparse extent header needs ${SECTOR_SIZE}`, 0);
  const first = parseSparseHeader(head);
  if (first.capacity === 0 && first.descriptorOffset !== 0) {
    throw vmdkError('UNSUPPORTED', 'the extent is itself a descriptor (capacity 0 with a descriptor); nested descriptors are not supported');
  }
  const sparse = await readSparseGeometry(io, fileSize, first);
  // qemu sizes the extent from this capacity and ignores the line's count; a mismatch would shift every later extent.
  if (sparse.geometry.capacitySectors !== line.sectors) {
    throw corruptAt(`capacity ${sparse.geometry.capacitySectors} sectors differs from the ${line.sectors} sectors of ${lineText(line)}`, 12);
  }
  const tables = await loadSparseTables(io, fileSize, sparse);
  return new SparseVmdkImage({
    io,
    fileSize,
    ...sparse,
    ...tables,
    descriptor,
    createType: sparse.geometry.compressed ? 'streamOptimized' : 'monolithicSparse',
    // Unallocated grains fall through to the parent at guest offsets: the descriptor image handles that.
    backing: undefined,
    options: options.inflate ? { inflate: options.inflate } : {},
  });
}

/**
 * Opens every extent file through `openFile`, read-only, in descriptor order. Refuses (CORRUPT) a descriptor that
 * names itself or one file twice, more than MAX_EXTENT_FILES extents (LIMIT), and extent files that do not match
 * their line. On failure every file opened so far is closed again.
 */
export async function openExtentFiles(
  descriptorIo: BlockIO,
  descriptor: Descriptor,
  extents: readonly (ExtentLine & { type: ExtentType })[],
  options: OpenOptions & { openFile: NonNullable<OpenOptions['openFile']> },
  pathOf: (line: ExtentLine) => string,
): Promise<ExtentFiles> {
  if (extents.length > MAX_EXTENT_FILES) {
    throw limitAt(`the descriptor names ${extents.length} extents; ic opens at most ${MAX_EXTENT_FILES}`);
  }
  const seSparse = extents.find((line) => line.type === 'SESPARSE');
  if (seSparse) return { unsupported: `seSparse extents ("${seSparse.fileName}") are not supported` };

  // Names first, before any file is opened: the descriptor itself, and one file named twice.
  const selfPath = normalizePath(descriptorIo.name);
  const byPath = new Map<string, ExtentLine>();
  for (const line of extents) {
    const path = normalizePath(pathOf(line));
    if (path === selfPath) throw corruptAt(`${lineText(line)} names the descriptor file itself ("${line.fileName}") as an extent`);
    const earlier = byPath.get(path);
    if (earlier) throw corruptAt(`${lineText(earlier)} and ${lineText(line)} name the same extent file ("${line.fileName}")`);
    byPath.set(path, line);
  }

  const selfIdentity = await identityOf(descriptorIo);
  const byIdentity = new Map<string, ExtentLine>();
  const opened: BlockIO[] = [];
  const files: ExtentFile[] = [];
  try {
    let guestOffset = 0;
    for (const line of extents) {
      let io: BlockIO;
      try {
        io = await options.openFile(line.fileName);
      } catch (error) {
        throw inExtent(error, line, 'open');
      }
      if (opened.includes(io)) throw corruptAt(`${lineText(line)} names an extent file that another line names too ("${line.fileName}")`);
      opened.push(io);
      // Links and other spellings of one file: the identity (device, inode) tells.
      const identity = await identityOf(io);
      if (identity !== undefined) {
        if (identity === selfIdentity) throw corruptAt(`${lineText(line)} names the descriptor file itself ("${line.fileName}") as an extent`);
        const earlier = byIdentity.get(identity);
        if (earlier) throw corruptAt(`${lineText(earlier)} and ${lineText(line)} name the same extent file ("${earlier.fileName}", "${line.fileName}")`);
        byIdentity.set(identity, line);
      }
      const length = line.sectors * SECTOR_SIZE;
      const base = { line, path: pathOf(line), guestOffset, length, io };
      try {
        const fileSize = await io.size();
        if (line.type === 'FLAT' || line.type === 'VMFS') {
          const flatOffset = (line.offset ?? 0) * SECTOR_SIZE;
          if (!Number.isSafeInteger(flatOffset + length)) {
            throw limitAt(`flat offset ${line.offset} sectors plus ${line.sectors} sectors is beyond any addressable size`);
          }
          files.push({ kind: 'flat', ...base, fileSize, flatOffset });
        } else {
          const image = await openSparseExtent(io, fileSize, line, descriptor, options);
          if (!(image instanceof SparseVmdkImage)) {
            await closeQuietly(opened);
            return image;
          }
          files.push({ kind: 'sparse', ...base, fileSize, image });
        }
      } catch (error) {
        throw inExtent(error, line, 'read');
      }
      guestOffset += length;
    }
  } catch (error) {
    await closeQuietly(opened);
    throw error;
  }
  return { files };
}
