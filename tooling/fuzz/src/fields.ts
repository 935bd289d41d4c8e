import { HeaderField, SnapshotField, BitmapDirectoryField, ExtensionType, BitmapsExtensionField } from '@ic/qcow2';
import { HEADER_FIELDS as QED_FIELDS } from '@ic/qed';
import {
  EMBEDDED_DESCRIPTOR_OFFSET,
  EMBEDDED_DESCRIPTOR_WINDOW,
  GRAIN_MARKER_FIELDS,
  HEADER_FIELDS as VMDK_FIELDS,
  METADATA_MARKER_FIELDS,
  FOOTER_FROM_END,
  FOOTER_MARKER_FROM_END,
} from '@ic/vmdk';
import type { Seed } from './seeds.js';

/**
 * Where a seed's structures are, so that mutations hit real fields: every header field, the header extensions,
 * the first entries of every table (L1/L2, refcount, grain directory and tables), snapshot and bitmap entries,
 * grain markers, and the text of descriptors. Found by decoding the seed (a trusted qemu-img image) with the
 * format's field offsets; the drivers under test are not used for this.
 */
export type FieldRole = 'magic' | 'version' | 'offset' | 'length' | 'count' | 'size' | 'flags' | 'entry' | 'shift' | 'enum';

export interface Field {
  name: string;
  offset: number;
  width: 1 | 2 | 4 | 8;
  endian: 'le' | 'be';
  role: FieldRole;
  /** Values that mean something to this field in its format (a state, a sentinel, a limit), tried besides the generic ones. */
  values?: readonly bigint[];
}

/** A byte range worth flipping bits in (a header, a table). */
export interface Region {
  name: string;
  offset: number;
  length: number;
}

/** Text the format parses (a VMDK descriptor) or a name it stores (a backing file name). */
export interface TextRegion {
  name: string;
  offset: number;
  /** Bytes of text now (up to the first NUL). */
  length: number;
  /**
   * Bytes the text may grow to in place. A descriptor file may take any length (the file is rewritten); an
   * embedded descriptor keeps its window; a stored name keeps its length (its size field is a separate field).
   */
  capacity: number | 'file';
  kind: 'descriptor' | 'name';
}

export interface FieldMap {
  fields: Field[];
  regions: Region[];
  texts: TextRegion[];
  /** Offsets of the structures the image points at (tables, directories): values for pointer mutations. */
  pointers: number[];
  /** The allocation unit (cluster or grain), for offset arithmetic. */
  unit: number;
  /**
   * Checksums over parts of the file (a VHD footer, a VHDX header or region table). A mutation inside one is
   * sometimes followed by a fix-up of the checksum, so that the mutant gets past the checksum gate too.
   */
  checksums?: Checksum[];
  /** Byte strings that mean something at a place (another magic, a GUID the file uses elsewhere), written whole. */
  splices?: Splice[];
}

/** A checksum stored at `at`, over `length` bytes from `offset` (the checksum field counted as zero). */
export interface Checksum {
  name: string;
  offset: number;
  length: number;
  at: number;
  /** 'vhd': one's complement of the byte sum, big-endian; 'crc32c': CRC-32C, little-endian. */
  kind: 'vhd' | 'crc32c';
}

export interface Splice {
  name: string;
  offset: number;
  hex: string;
}

/** Field maps of the main file and of every companion that has structure of its own. */
export interface SeedLayout {
  main: FieldMap;
  companions: Record<string, FieldMap>;
}

export class Reader {
  constructor(
    readonly bytes: Uint8Array,
    readonly endian: 'le' | 'be',
  ) {}
  private view(): DataView {
    return new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
  }
  has(offset: number, width: number): boolean {
    return offset >= 0 && offset + width <= this.bytes.length;
  }
  u8(offset: number): number {
    return this.has(offset, 1) ? this.bytes[offset]! : 0;
  }
  u16(offset: number): number {
    return this.has(offset, 2) ? this.view().getUint16(offset, this.endian === 'le') : 0;
  }
  u32(offset: number): number {
    return this.has(offset, 4) ? this.view().getUint32(offset, this.endian === 'le') : 0;
  }
  /** As a number; values past 2^53 only ever appear in mutants, never in seeds. */
  u64(offset: number): number {
    return this.has(offset, 8) ? Number(this.view().getBigUint64(offset, this.endian === 'le')) : 0;
  }
}

export class MapBuilder {
  readonly map: FieldMap;
  constructor(
    private readonly reader: Reader,
    unit: number,
  ) {
    this.map = { fields: [], regions: [], texts: [], pointers: [], unit };
  }
  field(name: string, offset: number, width: Field['width'], role: FieldRole, values?: readonly (bigint | number)[]): void {
    if (!this.reader.has(offset, width)) return;
    const field: Field = { name, offset, width, endian: this.reader.endian, role };
    const mask = (1n << BigInt(width * 8)) - 1n;
    const known = (values ?? []).filter((value) => typeof value === 'bigint' || Number.isFinite(value));
    if (known.length > 0) field.values = [...new Set(known.map((value) => (typeof value === 'bigint' ? value : BigInt(Math.floor(value))) & mask))];
    this.map.fields.push(field);
  }
  checksum(checksum: Checksum): void {
    if (checksum.offset >= 0 && checksum.offset + checksum.length <= this.reader.bytes.length) (this.map.checksums ??= []).push(checksum);
  }
  splice(name: string, offset: number, bytes: Uint8Array): void {
    if (offset >= 0 && offset + bytes.length <= this.reader.bytes.length) (this.map.splices ??= []).push({ name, offset, hex: Buffer.from(bytes).toString('hex') });
  }
  region(name: string, offset: number, length: number): void {
    const end = Math.min(offset + length, this.reader.bytes.length);
    if (offset >= 0 && end > offset) this.map.regions.push({ name, offset, length: end - offset });
  }
  pointer(offset: number): void {
    if (offset > 0 && !this.map.pointers.includes(offset)) this.map.pointers.push(offset);
  }
  /**
   * Entries of a table: the first `first` entries and up to `nonZero` further entries that hold something (a
   * value other than `extra.empty`, 0 by default), so that both empty slots and live pointers are mutated.
   * Returns the indexes of the entries in use.
   */
  tableEntries(
    name: string,
    offset: number,
    count: number,
    stride: number,
    width: Field['width'],
    first = 4,
    nonZero = 24,
    extra: { values?: readonly (bigint | number)[]; empty?: number } = {},
  ): number[] {
    const live: number[] = [];
    for (let index = 0; index < count && this.reader.has(offset + index * stride, width); index++) {
      const at = offset + index * stride;
      const value = width === 8 ? this.reader.u64(at) : width === 4 ? this.reader.u32(at) : width === 2 ? this.reader.u16(at) : this.reader.u8(at);
      const used = value !== (extra.empty ?? 0);
      if (used) live.push(index);
      if (index < first || (used && live.length <= nonZero)) this.field(`${name}[${index}]`, at, width, 'entry', extra.values);
    }
    return live;
  }
}

const QCOW2_HEADER: readonly [keyof typeof HeaderField, Field['width'], FieldRole][] = [
  ['magic', 4, 'magic'],
  ['version', 4, 'version'],
  ['backingFileOffset', 8, 'offset'],
  ['backingFileSize', 4, 'length'],
  ['clusterBits', 4, 'shift'],
  ['size', 8, 'size'],
  ['cryptMethod', 4, 'enum'],
  ['l1Size', 4, 'count'],
  ['l1TableOffset', 8, 'offset'],
  ['refcountTableOffset', 8, 'offset'],
  ['refcountTableClusters', 4, 'count'],
  ['nbSnapshots', 4, 'count'],
  ['snapshotsOffset', 8, 'offset'],
];
const QCOW2_V3_HEADER: readonly [keyof typeof HeaderField, Field['width'], FieldRole][] = [
  ['incompatibleFeatures', 8, 'flags'],
  ['compatibleFeatures', 8, 'flags'],
  ['autoclearFeatures', 8, 'flags'],
  ['refcountOrder', 4, 'shift'],
  ['headerLength', 4, 'length'],
  ['compressionType', 1, 'enum'],
];

const L2_OFFSET_MASK = 0x00fffffffffffe00;

function qcow2Layout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'be');
  const version = r.u32(HeaderField.version);
  const clusterBits = r.u32(HeaderField.clusterBits);
  const cluster = 2 ** clusterBits;
  const b = new MapBuilder(r, cluster);
  for (const [name, width, role] of QCOW2_HEADER) b.field(name, HeaderField[name], width, role);
  const headerLength = version === 3 ? r.u32(HeaderField.headerLength) : 72;
  if (version === 3) for (const [name, width, role] of QCOW2_V3_HEADER) if (HeaderField[name] < headerLength) b.field(name, HeaderField[name], width, role);
  b.region('header cluster', 0, Math.min(cluster, 4096));

  // Header extensions, then the backing file name after them.
  const backingOffset = r.u64(HeaderField.backingFileOffset);
  const areaEnd = backingOffset !== 0 ? backingOffset : cluster;
  let bitmaps: { count: number; directoryOffset: number; directorySize: number } | undefined;
  for (let at = headerLength, index = 0; at + 8 <= areaEnd && index < 16; index++) {
    const type = r.u32(at);
    const length = r.u32(at + 4);
    b.field(`extension ${index} type`, at, 4, 'enum');
    b.field(`extension ${index} length`, at + 4, 4, 'length');
    if (type === ExtensionType.end) break;
    const data = at + 8;
    if (type === ExtensionType.bitmaps) {
      b.field('bitmaps count', data + BitmapsExtensionField.count, 4, 'count');
      b.field('bitmaps reserved', data + BitmapsExtensionField.reserved, 4, 'flags');
      b.field('bitmap directory size', data + BitmapsExtensionField.directorySize, 8, 'length');
      b.field('bitmap directory offset', data + BitmapsExtensionField.directoryOffset, 8, 'offset');
      bitmaps = {
        count: r.u32(data + BitmapsExtensionField.count),
        directorySize: r.u64(data + BitmapsExtensionField.directorySize),
        directoryOffset: r.u64(data + BitmapsExtensionField.directoryOffset),
      };
    } else if (type === ExtensionType.featureNameTable) {
      for (let entry = 0; entry < 3 && entry * 48 < length; entry++) {
        b.field(`feature name ${entry} type`, data + entry * 48, 1, 'enum');
        b.field(`feature name ${entry} bit`, data + entry * 48 + 1, 1, 'shift');
      }
    } else if (type === ExtensionType.fullDiskEncryption) {
      b.field('encryption header offset', data, 8, 'offset');
      b.field('encryption header length', data + 8, 8, 'length');
    } else if (type === ExtensionType.backingFormat) {
      b.map.texts.push({ name: 'backing format', offset: data, length, capacity: length, kind: 'name' });
    }
    at = data + Math.ceil(length / 8) * 8;
  }
  if (backingOffset !== 0) {
    const length = r.u32(HeaderField.backingFileSize);
    b.map.texts.push({ name: 'backing file name', offset: backingOffset, length, capacity: length, kind: 'name' });
  }

  // Active L1 and the L2 tables it names.
  const l1Offset = r.u64(HeaderField.l1TableOffset);
  const l1Size = r.u32(HeaderField.l1Size);
  const extendedL2 = version === 3 && (r.u64(HeaderField.incompatibleFeatures) & 16) !== 0;
  const l2Stride = extendedL2 ? 16 : 8;
  b.pointer(l1Offset);
  b.region('L1 table', l1Offset, Math.min(l1Size * 8, 4096));
  for (const index of b.tableEntries('L1', l1Offset, Math.min(l1Size, 64), 8, 8).slice(0, 4)) {
    const l2 = r.u64(l1Offset + index * 8) & L2_OFFSET_MASK;
    b.pointer(l2);
    b.region(`L2 table ${index}`, l2, Math.min(cluster, 4096));
    const live = b.tableEntries(`L2 ${index}`, l2, cluster / l2Stride, l2Stride, 8);
    if (extendedL2) for (const entry of live.slice(0, 8)) b.field(`L2 ${index} bitmap[${entry}]`, l2 + entry * 16 + 8, 8, 'flags');
  }

  // Refcount table and its first block.
  const refcountTable = r.u64(HeaderField.refcountTableOffset);
  const refcountOrder = version === 3 ? r.u32(HeaderField.refcountOrder) : 4;
  b.pointer(refcountTable);
  b.region('refcount table', refcountTable, Math.min(cluster, 4096));
  const blocks = b.tableEntries('refcount table', refcountTable, Math.min(r.u32(HeaderField.refcountTableClusters) * (cluster / 8), 4096), 8, 8);
  if (blocks.length > 0) {
    const block = r.u64(refcountTable + blocks[0]! * 8);
    b.pointer(block);
    b.region('refcount block', block, Math.min(cluster, 4096));
    const width = Math.max(1, 2 ** refcountOrder / 8);
    if (width === 1 || width === 2 || width === 4 || width === 8) b.tableEntries('refcount block', block, 32, width, width, 16, 8);
  }

  // Internal snapshots: the fixed part of each entry, its extra data, its L1 table.
  const snapshots = r.u64(HeaderField.snapshotsOffset);
  b.pointer(snapshots);
  for (let index = 0, at = snapshots; index < Math.min(r.u32(HeaderField.nbSnapshots), 4); index++) {
    b.region(`snapshot ${index}`, at, 64);
    b.field(`snapshot ${index} l1 offset`, at + SnapshotField.l1TableOffset, 8, 'offset');
    b.field(`snapshot ${index} l1 size`, at + SnapshotField.l1Size, 4, 'count');
    b.field(`snapshot ${index} id size`, at + SnapshotField.idSize, 2, 'length');
    b.field(`snapshot ${index} name size`, at + SnapshotField.nameSize, 2, 'length');
    b.field(`snapshot ${index} vm state size`, at + SnapshotField.vmStateSize, 4, 'size');
    b.field(`snapshot ${index} extra data size`, at + SnapshotField.extraDataSize, 4, 'length');
    const extra = r.u32(at + SnapshotField.extraDataSize);
    if (extra >= 16) {
      b.field(`snapshot ${index} vm state size (64-bit)`, at + SnapshotField.fixedSize, 8, 'size');
      b.field(`snapshot ${index} disk size`, at + SnapshotField.fixedSize + 8, 8, 'size');
    }
    const snapshotL1 = r.u64(at + SnapshotField.l1TableOffset);
    b.pointer(snapshotL1);
    b.tableEntries(`snapshot ${index} L1`, snapshotL1, Math.min(r.u32(at + SnapshotField.l1Size), 16), 8, 8);
    const entryLength = SnapshotField.fixedSize + extra + r.u16(at + SnapshotField.idSize) + r.u16(at + SnapshotField.nameSize);
    at += Math.ceil(entryLength / 8) * 8;
  }

  // Bitmap directory entries and their bitmap tables.
  if (bitmaps) {
    b.pointer(bitmaps.directoryOffset);
    b.region('bitmap directory', bitmaps.directoryOffset, bitmaps.directorySize);
    for (let index = 0, at = bitmaps.directoryOffset; index < Math.min(bitmaps.count, 4); index++) {
      const f = BitmapDirectoryField;
      b.field(`bitmap ${index} table offset`, at + f.tableOffset, 8, 'offset');
      b.field(`bitmap ${index} table size`, at + f.tableSize, 4, 'count');
      b.field(`bitmap ${index} flags`, at + f.flags, 4, 'flags');
      b.field(`bitmap ${index} type`, at + f.type, 1, 'enum');
      b.field(`bitmap ${index} granularity bits`, at + f.granularityBits, 1, 'shift');
      b.field(`bitmap ${index} name size`, at + f.nameSize, 2, 'length');
      b.field(`bitmap ${index} extra data size`, at + f.extraDataSize, 4, 'length');
      const table = r.u64(at + f.tableOffset);
      b.pointer(table);
      b.tableEntries(`bitmap ${index} table`, table, Math.min(r.u32(at + f.tableSize), 16), 8, 8);
      at += Math.ceil((f.fixedSize + r.u32(at + f.extraDataSize) + r.u16(at + f.nameSize)) / 8) * 8;
    }
  }
  return b.map;
}

const QED_HEADER: readonly [keyof typeof QED_FIELDS, FieldRole][] = [
  ['magic', 'magic'],
  ['clusterSize', 'size'],
  ['tableSize', 'count'],
  ['headerSize', 'count'],
  ['features', 'flags'],
  ['compatFeatures', 'flags'],
  ['autoclearFeatures', 'flags'],
  ['l1TableOffset', 'offset'],
  ['imageSize', 'size'],
  ['backingFilenameOffset', 'offset'],
  ['backingFilenameSize', 'length'],
];

function qedLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'le');
  const cluster = r.u32(QED_FIELDS.clusterSize.offset);
  const b = new MapBuilder(r, cluster);
  for (const [name, role] of QED_HEADER) b.field(name, QED_FIELDS[name].offset, QED_FIELDS[name].size as Field['width'], role);
  b.region('header', 0, 512);
  const entries = (r.u32(QED_FIELDS.tableSize.offset) * cluster) / 8;
  const l1 = r.u64(QED_FIELDS.l1TableOffset.offset);
  b.pointer(l1);
  b.region('L1 table', l1, 4096);
  for (const index of b.tableEntries('L1', l1, entries, 8, 8).slice(0, 4)) {
    const l2 = r.u64(l1 + index * 8);
    b.pointer(l2);
    b.region(`L2 table ${index}`, l2, 4096);
    b.tableEntries(`L2 ${index}`, l2, entries, 8, 8);
  }
  const nameLength = r.u32(QED_FIELDS.backingFilenameSize.offset);
  if (nameLength > 0) {
    b.map.texts.push({ name: 'backing file name', offset: r.u32(QED_FIELDS.backingFilenameOffset.offset), length: nameLength, capacity: nameLength, kind: 'name' });
  }
  return b.map;
}

const VMDK_HEADER: readonly [keyof typeof VMDK_FIELDS, Field['width'], FieldRole][] = [
  ['magicNumber', 4, 'magic'],
  ['version', 4, 'version'],
  ['flags', 4, 'flags'],
  ['capacity', 8, 'size'],
  ['grainSize', 8, 'size'],
  ['descriptorOffset', 8, 'offset'],
  ['descriptorSize', 8, 'length'],
  ['numGTEsPerGT', 4, 'count'],
  ['rgdOffset', 8, 'offset'],
  ['gdOffset', 8, 'offset'],
  ['overHead', 8, 'size'],
  ['uncleanShutdown', 1, 'flags'],
  ['newlineCheck', 4, 'magic'],
  ['compressAlgorithm', 2, 'enum'],
];

function textLength(bytes: Uint8Array, offset: number, limit: number): number {
  let length = 0;
  while (length < limit && offset + length < bytes.length && bytes[offset + length] !== 0) length++;
  return length;
}

/** A "KDMV" sparse extent (monolithicSparse, streamOptimized, or an extent file of a descriptor). */
function sparseExtentLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'le');
  const grainSectors = r.u64(VMDK_FIELDS.grainSize);
  const b = new MapBuilder(r, grainSectors * 512);
  const headerFields = (base: number, prefix: string): void => {
    for (const [name, width, role] of VMDK_HEADER) b.field(`${prefix}${name}`, base + VMDK_FIELDS[name], width, role);
  };
  headerFields(0, '');
  b.region('header', 0, 512);
  const descriptorLength = textLength(bytes, EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_WINDOW);
  if (descriptorLength > 0) {
    b.map.texts.push({ name: 'embedded descriptor', offset: EMBEDDED_DESCRIPTOR_OFFSET, length: descriptorLength, capacity: EMBEDDED_DESCRIPTOR_WINDOW, kind: 'descriptor' });
  }
  const capacity = r.u64(VMDK_FIELDS.capacity);
  const gtes = r.u32(VMDK_FIELDS.numGTEsPerGT);
  const gdEntries = gtes * grainSectors > 0 ? Math.ceil(capacity / (gtes * grainSectors)) : 0;
  const compressed = r.u16(VMDK_FIELDS.compressAlgorithm) === 1;
  const directory = (sector: number, label: string): void => {
    const offset = sector * 512;
    b.pointer(offset);
    b.region(label, offset, 512);
    for (const index of b.tableEntries(label, offset, gdEntries, 4, 4).slice(0, 3)) {
      const table = r.u32(offset + index * 4) * 512;
      b.pointer(table);
      b.region(`${label} table ${index}`, table, gtes * 4);
      const live = b.tableEntries(`${label} table ${index}`, table, gtes, 4, 4);
      if (compressed && label === 'GD') {
        for (const entry of live.slice(0, 6)) {
          const marker = r.u32(table + entry * 4) * 512;
          b.field(`grain marker ${index}/${entry} lba`, marker + GRAIN_MARKER_FIELDS.lba, 8, 'offset');
          b.field(`grain marker ${index}/${entry} size`, marker + GRAIN_MARKER_FIELDS.size, 4, 'length');
          b.region(`compressed grain ${index}/${entry}`, marker, 64);
        }
      }
    }
  };
  const gdOffset = r.u64(VMDK_FIELDS.gdOffset);
  if (gdOffset !== 2 ** 64) directory(gdOffset, 'GD');
  if ((r.u32(VMDK_FIELDS.flags) & 2) !== 0) directory(r.u64(VMDK_FIELDS.rgdOffset), 'RGD');
  // A stream written with the directory at the end has a footer: a header copy between two markers.
  const end = Math.floor(bytes.length / 512) * 512;
  if (end >= FOOTER_MARKER_FROM_END && bytes[end - FOOTER_FROM_END] === 0x4b && bytes[end - FOOTER_FROM_END + 1] === 0x44) {
    headerFields(end - FOOTER_FROM_END, 'footer ');
    b.field('footer marker sectors', end - FOOTER_MARKER_FROM_END + METADATA_MARKER_FIELDS.numSectors, 8, 'count');
    b.field('footer marker type', end - FOOTER_MARKER_FROM_END + METADATA_MARKER_FIELDS.type, 4, 'enum');
    b.field('end-of-stream marker type', end - 512 + METADATA_MARKER_FIELDS.type, 4, 'enum');
  }
  return b.map;
}

function vmdkLayout(bytes: Uint8Array): FieldMap {
  if (bytes[0] === 0x4b && bytes[1] === 0x44 && bytes[2] === 0x4d && bytes[3] === 0x56) return sparseExtentLayout(bytes);
  // A descriptor file: all of it is text.
  const map: FieldMap = { fields: [], regions: [], texts: [], pointers: [], unit: 512 };
  map.texts.push({ name: 'descriptor file', offset: 0, length: textLength(bytes, 0, bytes.length), capacity: 'file', kind: 'descriptor' });
  map.regions.push({ name: 'descriptor file', offset: 0, length: bytes.length });
  return map;
}

/** The layouts of this file, by format (layouts.ts adds the others and picks one per seed). */
export const CLASSIC_LAYOUTS: Record<string, (bytes: Uint8Array) => FieldMap> = { qcow2: qcow2Layout, qed: qedLayout, vmdk: vmdkLayout };
