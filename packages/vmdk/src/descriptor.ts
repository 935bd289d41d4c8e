import { corruptAt, limitAt } from './errors.js';

/**
 * The VMDK text descriptor: either embedded in a sparse extent (sectors 1..20 of a monolithicSparse file) or a
 * file of its own (monolithicFlat, twoGbMaxExtent*, vmfs*). Lines are `key=value`, comments `# ...`, extent lines
 * `ACCESS SECTORS TYPE "NAME" [OFFSET]` and disk database lines `ddb.key = "value"`.
 *
 * qemu does not parse the embedded descriptor as a grammar: it looks for "CID", "parentCID" and
 * "parentFileNameHint" with strstr() in the first 10 KiB after sector 0. The lookups below follow the same rules
 * so that our CID and parent agree with qemu's even on odd descriptors (e.g. "parentCID" before "CID").
 */

/** The window qemu reads (and rewrites on its first write) for the embedded descriptor: bytes 0x200..0x29FF. */
export const EMBEDDED_DESCRIPTOR_OFFSET = 0x200;
export const EMBEDDED_DESCRIPTOR_WINDOW = 20 * 512;
/** qemu reads at most 1 MiB - 1 of a descriptor file ("avoid unbounded allocation"). */
export const MAX_DESCRIPTOR_FILE = (1 << 20) - 1;
/** qemu's buffer for the parent name (PATH_MAX, with the NUL). */
export const MAX_PARENT_NAME = 4095;
/** qemu's extent line parser: access and type are at most 10 characters, the name at most 511. */
export const MAX_EXTENT_NAME = 511;
/** parentCID value meaning "no parent". */
export const NO_PARENT_CID = 0xffffffff;

/** createType values qemu accepts in a descriptor file (monolithicSparse/streamOptimized are embedded only). */
export const DESCRIPTOR_FILE_CREATE_TYPES = [
  'monolithicFlat',
  'vmfs',
  'vmfsSparse',
  'seSparse',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
] as const;

/** Extent types qemu opens; lines with other types are skipped like qemu does. */
export const EXTENT_TYPES = ['FLAT', 'SPARSE', 'VMFS', 'VMFSSPARSE', 'SESPARSE'] as const;
export type ExtentType = (typeof EXTENT_TYPES)[number];

export interface ExtentLine {
  access: string;
  sectors: number;
  type: string;
  fileName: string;
  /** Sector offset inside the extent file (FLAT only). */
  offset?: number;
  /** 1-based line number, for messages. */
  line: number;
}

export interface Descriptor {
  /** The `version=` value, when present. */
  version?: number;
  cid: number;
  parentCid: number;
  createType?: string;
  parentFileNameHint?: string;
  /** Every line shaped like an extent line, in order, whatever its access mode. */
  extentLines: ExtentLine[];
  /** `ddb.*` entries without the quotes, in order of appearance. */
  ddb: Record<string, string>;
}

/** The text of a descriptor area: everything before the first NUL, as qemu's C strings see it. */
export function descriptorText(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder('utf-8').decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/**
 * qemu's CID lookup: the first occurrence of `key` anywhere in the text, skip the key and one character (the '='),
 * then a hexadecimal number (leading blanks and a 0x prefix allowed). undefined when absent or malformed.
 */
export function findCid(text: string, key: 'CID' | 'parentCID'): number | undefined {
  const at = text.indexOf(key);
  if (at < 0) return undefined;
  const match = /^[ \t\n\r\f\v]*(?:0[xX])?([0-9a-fA-F]+)/.exec(text.slice(at + key.length + 1, at + key.length + 1 + 64));
  if (!match) return undefined;
  const digits = match[1]!.replace(/^0+(?=.)/, '');
  if (digits.length > 8) return Number.NaN; // more than 32 bits: flagged by the caller
  return parseInt(digits, 16);
}

/**
 * qemu's quoted-value lookup (vmdk_parse_description / vmdk_parent_open): the first occurrence of `key`, skip the
 * key plus two characters ('=' and '"'), then everything up to the next '"'. undefined when absent;
 * null when the value is not terminated.
 */
export function findQuotedValue(text: string, key: string): string | null | undefined {
  const at = text.indexOf(key);
  if (at < 0) return undefined;
  const start = at + key.length + 2;
  if (start > text.length) return null;
  const end = text.indexOf('"', start);
  if (end < 0) return null;
  return text.slice(start, end);
}

// qemu: sscanf(line, "%10s %" SCNd64 " %10s \"%511[^\n\r\"]\" %" SCNd64, ...)
const EXTENT_LINE = /^[ \t]*(\S{1,10})[ \t]+([+-]?\d+)[ \t]+(\S{1,10})[ \t]*"([^\n\r"]{1,511})"(?:[ \t]+([+-]?\d+))?/;

/** Parses one line as an extent line; undefined when it does not have the four leading fields. */
export function parseExtentLine(line: string, lineNumber: number): ExtentLine | undefined {
  const match = EXTENT_LINE.exec(line);
  if (!match) return undefined;
  const sectors = Number(match[2]);
  const parsed: ExtentLine = { access: match[1]!, sectors, type: match[3]!, fileName: match[4]!, line: lineNumber };
  if (match[5] !== undefined) parsed.offset = Number(match[5]);
  return parsed;
}

/**
 * Parses a descriptor. CID and parentCID are required (qemu refuses to open without them). `base` is the file
 * offset of the text, for messages.
 */
export function parseDescriptor(text: string, base = 0): Descriptor {
  const cid = findCid(text, 'CID');
  if (cid === undefined) throw corruptAt('descriptor has no CID line', base);
  const parentCid = findCid(text, 'parentCID');
  if (parentCid === undefined) throw corruptAt('descriptor has no parentCID line', base);
  if (Number.isNaN(cid) || Number.isNaN(parentCid)) throw corruptAt('descriptor CID or parentCID does not fit in 32 bits', base);

  const descriptor: Descriptor = { cid, parentCid, extentLines: [], ddb: {} };
  const hint = findQuotedValue(text, 'parentFileNameHint');
  if (hint === null) throw corruptAt('descriptor parentFileNameHint is not terminated by a quote', base);
  if (hint !== undefined) {
    if (hint.length > MAX_PARENT_NAME) throw limitAt(`descriptor parentFileNameHint is ${hint.length} characters (at most ${MAX_PARENT_NAME})`, base);
    if (hint !== '') descriptor.parentFileNameHint = hint;
  }
  const createType = findQuotedValue(text, 'createType');
  if (typeof createType === 'string') descriptor.createType = createType;

  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/\r$/, '');
    const trimmed = line.trim();
    if (trimmed === '' || trimmed.startsWith('#')) continue;
    const version = /^version\s*=\s*(\d+)\s*$/.exec(trimmed);
    if (version) {
      descriptor.version ??= Number(version[1]);
      continue;
    }
    const ddb = /^(ddb\.[^\s=]+)\s*=\s*"([^"]*)"\s*$/.exec(trimmed);
    if (ddb) {
      descriptor.ddb[ddb[1]!] = ddb[2]!;
      continue;
    }
    const extent = parseExtentLine(line, i + 1);
    if (extent) descriptor.extentLines.push(extent);
  }
  return descriptor;
}

/** The extents qemu would open: RW lines with a known type and a positive size, checked like qemu does. */
export function usableExtents(descriptor: Descriptor, base = 0): (ExtentLine & { type: ExtentType })[] {
  const out: (ExtentLine & { type: ExtentType })[] = [];
  for (const extent of descriptor.extentLines) {
    if (extent.access !== 'RW') continue;
    const text = `${extent.access} ${extent.sectors} ${extent.type} "${extent.fileName}"${extent.offset === undefined ? '' : ` ${extent.offset}`}`;
    if (extent.type === 'FLAT') {
      if (extent.offset === undefined || extent.offset < 0) throw corruptAt(`invalid extent line ${extent.line}: ${text} (FLAT needs a sector offset)`, base);
    } else if (extent.offset !== undefined) {
      throw corruptAt(`invalid extent line ${extent.line}: ${text} (only FLAT extents take an offset)`, base);
    }
    if (extent.sectors <= 0 || !(EXTENT_TYPES as readonly string[]).includes(extent.type)) continue;
    if (!Number.isSafeInteger(extent.sectors * 512) || (extent.offset !== undefined && !Number.isSafeInteger(extent.offset * 512))) {
      throw limitAt(`extent line ${extent.line} claims ${extent.sectors} sectors, beyond any addressable size`, base);
    }
    out.push(extent as ExtentLine & { type: ExtentType });
  }
  return out;
}

/** The adapter types qemu knows; all but ide use 255 heads in the geometry. */
export const ADAPTER_TYPES = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;
export type AdapterType = (typeof ADAPTER_TYPES)[number];

export interface DescriptorSpec {
  cid: number;
  parentCid: number;
  createType: string;
  parentFileNameHint?: string;
  /** Extent lines without the newline, e.g. `RW 2097152 SPARSE "disk.vmdk"`. */
  extents: string[];
  virtualHWVersion: string;
  /** Virtual size in bytes, for the CHS geometry. */
  virtualSize: number;
  adapterType: AdapterType;
  toolsVersion: string;
}

/** The descriptor text exactly as qemu 7.2's vmdk_co_do_create() lays it out. */
export function formatDescriptor(spec: DescriptorSpec): string {
  const heads = spec.adapterType === 'ide' ? 16 : 255;
  const cylinders = Math.floor(spec.virtualSize / (63 * heads * 512));
  const parentLine = spec.parentFileNameHint === undefined ? '' : `parentFileNameHint="${spec.parentFileNameHint}"`;
  return (
    '# Disk DescriptorFile\n' +
    'version=1\n' +
    `CID=${(spec.cid >>> 0).toString(16)}\n` +
    `parentCID=${(spec.parentCid >>> 0).toString(16)}\n` +
    `createType="${spec.createType}"\n` +
    parentLine +
    '\n' +
    '# Extent description\n' +
    spec.extents.map((line) => `${line}\n`).join('') +
    '\n' +
    '# The Disk Data Base\n' +
    '#DDB\n' +
    '\n' +
    `ddb.virtualHWVersion = "${spec.virtualHWVersion}"\n` +
    `ddb.geometry.cylinders = "${cylinders}"\n` +
    `ddb.geometry.heads = "${heads}"\n` +
    'ddb.geometry.sectors = "63"\n' +
    `ddb.adapterType = "${spec.adapterType}"\n` +
    `ddb.toolsVersion = "${spec.toolsVersion}"\n`
  );
}

/**
 * qemu's probe for a descriptor file: skipping '#' comment lines and blank lines, the first line must be exactly
 * `version=1`, `version=2` or `version=3`.
 */
export function looksLikeDescriptorStart(head: Uint8Array): boolean {
  let at = 0;
  const end = head.length;
  const matchesAt = (text: string): boolean => {
    if (end - at < text.length) return false;
    for (let i = 0; i < text.length; i++) if (head[at + i] !== text.charCodeAt(i)) return false;
    return true;
  };
  while (at < end) {
    if (head[at] === 0x23 /* # */) {
      while (at < end && head[at] !== 0x0a) at++;
      at++;
      continue;
    }
    if (head[at] === 0x20 /* space */) {
      while (at < end && head[at] === 0x20) at++;
      if (at < end && head[at] === 0x0d) at++;
      if (at === end || head[at] !== 0x0a) return false;
      at++;
      continue;
    }
    for (const version of ['1', '2', '3']) {
      if (matchesAt(`version=${version}\n`) || matchesAt(`version=${version}\r\n`)) return true;
    }
    return false;
  }
  return false;
}

/** Base name of a path (after the last '/' or '\'), as qemu writes it in the extent line. */
export function baseName(path: string): string {
  const cut = Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\'));
  return cut < 0 ? path : path.slice(cut + 1);
}

/** The directory part of a path including its trailing '/', or '' (qemu's bdrv_dirname for plain files). */
export function dirName(path: string): string {
  const cut = path.lastIndexOf('/');
  return cut < 0 ? '' : path.slice(0, cut + 1);
}
