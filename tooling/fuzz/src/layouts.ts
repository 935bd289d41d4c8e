import { BLOCK_SIZE as VDI_BLOCK_SIZE, HEADER_FIELDS as VDI_FIELDS, MAX_BLOCKS_IN_IMAGE, MAX_DISK_SIZE, bmapBytesFor } from '@ic/vdi';
import { DYNAMIC_HEADER_FIELDS, FOOTER_FIELDS, MAX_SECTORS, MAX_TABLE_ENTRIES, NO_DATA_OFFSET } from '@ic/vpc';
import {
  BAT_REGION_GUID,
  HEADER_FIELDS as VHDX_HEADER,
  HEADER_OFFSETS,
  HEADER_SIZE,
  MAX_VIRTUAL_SIZE,
  METADATA_REGION_GUID,
  REGION_TABLE_OFFSETS,
  batGeometry,
  guidEqual,
  METADATA_ITEMS,
} from '@ic/vhdx';
import { HEADER_FIELDS as PARALLELS_FIELDS, INUSE_MAGIC, MAGIC_CLUSTERS, MAGIC_SECTORS, MAX_BAT_ENTRIES, MAX_TRACKS } from '@ic/parallels';
import { CLASSIC_LAYOUTS, MapBuilder, Reader, type FieldMap, type FieldRole, type SeedLayout } from './fields.js';
import type { Seed } from './seeds.js';

/**
 * Field layouts of VDI, VHD (vpc), VHDX and Parallels seeds, found by decoding the qemu-img seed with each
 * format's field offsets (exported by the drivers as constants; their parsers are not used). Structures that carry
 * a checksum (the VHD footer and dynamic header, VHDX headers, region tables and log entries) are registered as
 * such, so that the mutator fixes some mutants' checksums up and those reach the checks behind the checksum gate.
 */

const MiB = 1024 * 1024;
const ascii = (text: string): Uint8Array => Uint8Array.from(text, (c) => c.charCodeAt(0));
const u32be = (text: string): number => new DataView(ascii(text).buffer).getUint32(0, false);

type FieldList = Record<string, { offset: number; size: number }>;

/** Every integer field of a format's field table, with a role and the values that mean something to it. */
function fieldsOf(
  b: MapBuilder,
  base: number,
  prefix: string,
  table: FieldList,
  roles: Record<string, FieldRole | [FieldRole, readonly (bigint | number)[]]>,
): void {
  for (const [name, spec] of Object.entries(roles)) {
    const field = table[name];
    if (!field || ![1, 2, 4, 8].includes(field.size)) continue;
    const [role, values] = Array.isArray(spec) ? spec : [spec, undefined];
    b.field(`${prefix}${name}`, base + field.offset, field.size as 1 | 2 | 4 | 8, role, values);
  }
}

// ---- VDI ----

function vdiLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'le');
  const f = VDI_FIELDS;
  const b = new MapBuilder(r, VDI_BLOCK_SIZE);
  const blocks = r.u32(f.blocksInImage.offset);
  const allocated = r.u32(f.blocksAllocated.offset);
  const offsetBmap = r.u32(f.offsetBmap.offset);
  const offsetData = r.u32(f.offsetData.offset);
  const diskSize = r.u64(f.diskSize.offset);
  // The pre-header (text, signature, version), then the header v1.1.
  b.region('pre-header text', f.text.offset, f.text.size);
  fieldsOf(b, 0, '', f, {
    signature: 'magic',
    version: ['version', [0x00010001, 0x00010000, 0x00000001, 0x00020001, 0x00010002]],
    headerSize: ['length', [0x180, 0x190, 0, 0x200, 0xffffffff]],
    imageType: ['enum', [1, 2, 3, 4, 0]],
    imageFlags: 'flags',
    offsetBmap: ['offset', [0, 0x200, offsetData, bytes.length]],
    offsetData: ['offset', [0, 0x200, offsetBmap, offsetBmap + bmapBytesFor(blocks), bytes.length]],
    cylinders: 'count',
    heads: 'count',
    sectors: 'count',
    sectorSize: ['size', [512, 4096, 0, 511]],
    unused1: 'flags',
    diskSize: ['size', [MAX_DISK_SIZE, MAX_DISK_SIZE + 512, blocks * VDI_BLOCK_SIZE, blocks * VDI_BLOCK_SIZE + 1, diskSize - 1, diskSize + 512]],
    blockSize: ['size', [VDI_BLOCK_SIZE, 2 * VDI_BLOCK_SIZE, VDI_BLOCK_SIZE / 2, 4096]],
    blockExtra: ['length', [0, 512, VDI_BLOCK_SIZE]],
    blocksInImage: ['count', [MAX_BLOCKS_IN_IMAGE, MAX_BLOCKS_IN_IMAGE + 1, blocks - 1, blocks + 1, 0]],
    blocksAllocated: ['count', [0, blocks, blocks + 1, allocated - 1, allocated + 1, 0xffffffff]],
  });
  b.region('description', f.description.offset, f.description.size);
  for (const name of ['uuidImage', 'uuidLastSnap', 'uuidLink', 'uuidParent'] as const) {
    b.region(name, f[name].offset, f[name].size);
    b.field(`${name} (first half)`, f[name].offset, 8, 'flags');
  }
  b.region('header', 0, 512);
  b.pointer(offsetBmap);
  b.pointer(offsetData);
  // The block map: block indexes, 0xFFFFFFFF unallocated, 0xFFFFFFFE discarded.
  b.region('block map', offsetBmap, Math.min(bmapBytesFor(blocks), 4096));
  const live = b.tableEntries('block map', offsetBmap, Math.min(blocks, 65536), 4, 4, 4, 24, {
    empty: 0xffffffff,
    values: [0xffffffff, 0xfffffffe, 0, blocks, blocks - 1, allocated, allocated + 1, 0x7fffffff],
  });
  for (const index of live.slice(0, 8)) b.pointer(offsetData + r.u32(offsetBmap + index * 4) * VDI_BLOCK_SIZE);
  return b.map;
}

// ---- VHD (qemu's vpc) ----

const VHD_CREATORS = ['qemu', 'qem2', 'win ', 'vpc ', 'd2v ', 'CTXS', 'tap\0', 'vs  '].map(u32be);

function vhdFooter(b: MapBuilder, r: Reader, base: number, prefix: string, fileSize: number): void {
  const currentSize = r.u64(base + FOOTER_FIELDS.currentSize.offset);
  fieldsOf(b, base, prefix, FOOTER_FIELDS, {
    features: ['flags', [0, 1, 2, 3]],
    version: ['version', [0x00010000, 0, 0x00020000]],
    dataOffset: ['offset', [NO_DATA_OFFSET, 0, 512, 1024, fileSize - 1024, fileSize - 512, fileSize]],
    timestamp: 'flags',
    creatorApp: ['enum', VHD_CREATORS],
    creatorVersion: 'version',
    creatorOs: 'enum',
    originalSize: 'size',
    currentSize: ['size', [MAX_SECTORS * 512, MAX_SECTORS * 512 + 512, currentSize + 512, currentSize - 512, currentSize + 1, 0]],
    cylinders: ['count', [65535, 0, 1, 1024]],
    heads: ['count', [16, 0, 255, 1]],
    sectorsPerTrack: ['count', [255, 0, 17, 63]],
    diskType: ['enum', [2, 3, 4, 0, 1, 5]],
    checksum: 'flags',
    savedState: 'flags',
  });
  b.field(`${prefix}cookie`, base + FOOTER_FIELDS.cookie.offset, 8, 'magic');
  b.region(`${prefix}footer`, base, 512);
  b.checksum({ name: `${prefix}footer`, offset: base, length: 512, at: base + FOOTER_FIELDS.checksum.offset, kind: 'vhd' });
}

function vhdLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'be');
  const dynamic = bytes.length >= 512 && String.fromCharCode(...bytes.subarray(0, 8)) === 'conectix';
  const tail = Math.floor(bytes.length / 512) * 512 - 512;
  if (!dynamic) {
    // A fixed disk: the guest data, then the footer in the last sector.
    const b = new MapBuilder(r, 512);
    vhdFooter(b, r, tail, '', bytes.length);
    return b.map;
  }
  const headerAt = r.u64(FOOTER_FIELDS.dataOffset.offset);
  const d = DYNAMIC_HEADER_FIELDS;
  const blockSize = r.u32(headerAt + d.blockSize.offset);
  const entries = r.u32(headerAt + d.maxTableEntries.offset);
  const tableOffset = r.u64(headerAt + d.tableOffset.offset);
  const b = new MapBuilder(r, blockSize || 512);
  vhdFooter(b, r, 0, '', bytes.length);
  if (tail > 0) vhdFooter(b, r, tail, 'footer copy ', bytes.length);
  // The dynamic disk header (qemu does not check its checksum; ic's choice is the driver's).
  fieldsOf(b, headerAt, 'dynamic header ', d, {
    dataOffset: ['offset', [NO_DATA_OFFSET, 0xffffffff, 0, 512]],
    tableOffset: ['offset', [0, 512, headerAt, bytes.length, bytes.length - 512, 2 ** 53]],
    version: ['version', [0x00010000, 0, 0x00020000]],
    maxTableEntries: ['count', [MAX_TABLE_ENTRIES, MAX_TABLE_ENTRIES + 1, entries - 1, entries + 1, 0, 0xffffffff]],
    blockSize: ['size', [512, 4096, 1024, 2 * MiB, 0x80000000, 3 * 512, 0, 256 * MiB]],
    checksum: 'flags',
    parentTimestamp: 'flags',
  });
  b.field('dynamic header cookie', headerAt + d.cookie.offset, 8, 'magic');
  b.region('dynamic header', headerAt, 1024);
  b.region('parent name and locators', headerAt + d.parentName.offset, d.parentName.size + d.parentLocators.size);
  for (let i = 0; i < 2; i++) {
    const at = headerAt + d.parentLocators.offset + i * 24;
    b.field(`parent locator ${i} platform`, at, 4, 'enum', [u32be('W2ru'), u32be('W2ku'), u32be('Mac '), u32be('MacX')]);
    b.field(`parent locator ${i} data length`, at + 8, 4, 'length');
    b.field(`parent locator ${i} data offset`, at + 16, 8, 'offset');
  }
  b.checksum({ name: 'dynamic header', offset: headerAt, length: 1024, at: headerAt + d.checksum.offset, kind: 'vhd' });
  b.splice('dynamic header cookie', headerAt, ascii('conectix'));
  b.pointer(headerAt);
  b.pointer(tableOffset);
  // The BAT: sector numbers of each block's bitmap, 0xFFFFFFFF unallocated.
  b.region('BAT', tableOffset, Math.min(entries * 4, 4096));
  const sectors = Math.floor(bytes.length / 512);
  const live = b.tableEntries('BAT', tableOffset, Math.min(entries, 65536), 4, 4, 4, 24, {
    empty: 0xffffffff,
    values: [0xffffffff, 0, 1, sectors, sectors - 1, tableOffset / 512, headerAt / 512, 0xfffffffe],
  });
  for (const index of live.slice(0, 6)) {
    const block = r.u32(tableOffset + index * 4) * 512;
    b.pointer(block);
    b.region(`block ${index} bitmap`, block, 512);
  }
  return b.map;
}

// ---- VHDX ----

function guidAt(bytes: Uint8Array, at: number): Uint8Array {
  return bytes.slice(at, at + 16);
}

const ITEMS = METADATA_ITEMS;

function vhdxLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'le');
  // Region table 1 names the BAT and the metadata region.
  const regions: { guid: Uint8Array; offset: number; length: number; entry: number }[] = [];
  const table = REGION_TABLE_OFFSETS[0];
  for (let i = 0; i < Math.min(r.u32(table + 8), 16); i++) {
    const entry = table + 16 + i * 32;
    regions.push({ guid: guidAt(bytes, entry), offset: r.u64(entry + 16), length: r.u32(entry + 24), entry });
  }
  const bat = regions.find((region) => guidEqual(region.guid, BAT_REGION_GUID));
  const metadata = regions.find((region) => guidEqual(region.guid, METADATA_REGION_GUID));
  const items = new Map<string, { offset: number; length: number }>();
  if (metadata) {
    for (let i = 0; i < Math.min(r.u16(metadata.offset + 10), 16); i++) {
      const entry = metadata.offset + 32 + i * 32;
      const known = ITEMS.find(([, guid]) => guidEqual(guid, bytes.subarray(entry, entry + 16)));
      if (known) items.set(known[0], { offset: metadata.offset + r.u32(entry + 16), length: r.u32(entry + 20) });
    }
  }
  const blockSize = items.has('file parameters') ? r.u32(items.get('file parameters')!.offset) : MiB;
  const b = new MapBuilder(r, blockSize);

  // File type identifier: signature and creator.
  b.field('file identifier signature', 0, 8, 'magic');
  b.region('file identifier', 0, 520);

  // The two headers, each with its CRC-32C over 4 KiB. The stale log entry qemu leaves gives a GUID worth
  // splicing into a header's log_guid: then the log looks active.
  const logOffset = Math.max(...HEADER_OFFSETS.map((at) => r.u64(at + VHDX_HEADER.logOffset.offset)));
  const logLength = r.u32(HEADER_OFFSETS[0] + VHDX_HEADER.logLength.offset);
  const logEntry = r.u32(logOffset) === 0x65676f6c ? logOffset : -1;
  const sequences = HEADER_OFFSETS.map((at) => r.u64(at + VHDX_HEADER.sequenceNumber.offset));
  HEADER_OFFSETS.forEach((at, slot) => {
    const prefix = `header ${slot + 1} `;
    const other = sequences[1 - slot]!;
    fieldsOf(b, at, prefix, VHDX_HEADER, {
      signature: 'magic',
      checksum: 'flags',
      sequenceNumber: ['count', [other, other + 1, other - 1, 0, 2 ** 53]],
      logVersion: ['version', [0, 1]],
      version: ['version', [1, 0, 2]],
      logLength: ['length', [0, MiB, 2 * MiB, 4096, 0x80000000, logLength + MiB]],
      logOffset: ['offset', [0, MiB, logOffset + MiB, Math.floor(bytes.length / MiB) * MiB, bytes.length, 2 ** 52]],
    });
    for (const [name, offset] of [['fileWriteGuid', 16], ['dataWriteGuid', 32], ['logGuid', 48], ['logGuid (second half)', 56]] as const) b.field(`${prefix}${name}`, at + offset, 8, 'flags');
    b.region(`header ${slot + 1}`, at, 80);
    b.checksum({ name: `header ${slot + 1}`, offset: at, length: HEADER_SIZE, at: at + VHDX_HEADER.checksum.offset, kind: 'crc32c' });
    if (logEntry >= 0) b.splice(`${prefix}log_guid <- the log entry's`, at + VHDX_HEADER.logGuid.offset, guidAt(bytes, logEntry + 32));
  });

  // Both region tables (ic, like qemu, reads the first), CRC-32C over 64 KiB.
  REGION_TABLE_OFFSETS.forEach((at, index) => {
    const prefix = `region table ${index + 1} `;
    b.field(`${prefix}signature`, at, 4, 'magic');
    b.field(`${prefix}checksum`, at + 4, 4, 'flags');
    b.field(`${prefix}entry count`, at + 8, 4, 'count', [0, 1, 2, 3, 2047, 2048, 0xffffffff]);
    b.field(`${prefix}reserved`, at + 12, 4, 'flags');
    const count = Math.min(r.u32(at + 8), 8);
    for (let i = 0; i < count; i++) {
      const entry = at + 16 + i * 32;
      b.field(`${prefix}entry ${i} guid`, entry, 8, 'flags');
      b.field(`${prefix}entry ${i} file offset`, entry + 16, 8, 'offset', [0, MiB, logOffset, ...regions.map((region) => region.offset), bytes.length, 2 ** 53]);
      b.field(`${prefix}entry ${i} length`, entry + 24, 4, 'length', [0, 4096, 64 * 1024, MiB, 2 * MiB, 0xffffffff]);
      b.field(`${prefix}entry ${i} flags`, entry + 28, 4, 'flags', [0, 1, 2, 3]);
      // Another entry's GUID: the BAT or the metadata region twice, or neither.
      for (const region of regions) if (region.entry !== entry - at + table) b.splice(`${prefix}entry ${i} guid <- another entry's`, entry, region.guid);
    }
    b.region(`region table ${index + 1}`, at, 16 + 32 * count);
    b.checksum({ name: `region table ${index + 1}`, offset: at, length: 64 * 1024, at: at + 4, kind: 'crc32c' });
  });

  // The metadata table and its items.
  if (metadata) {
    const base = metadata.offset;
    b.pointer(base);
    b.field('metadata signature', base, 8, 'magic');
    b.field('metadata reserved', base + 8, 2, 'flags');
    b.field('metadata entry count', base + 10, 2, 'count', [0, 4, 5, 6, 7, 2047, 2048, 0xffff]);
    const count = Math.min(r.u16(base + 10), 8);
    for (let i = 0; i < count; i++) {
      const entry = base + 32 + i * 32;
      b.field(`metadata entry ${i} guid`, entry, 8, 'flags');
      b.field(`metadata entry ${i} offset`, entry + 16, 4, 'offset', [0, 32, 64 * 1024, metadata.length - 8, metadata.length, 0xffffffff]);
      b.field(`metadata entry ${i} length`, entry + 20, 4, 'length', [0, 1, 4, 8, MiB, MiB + 1, 0xffffffff]);
      b.field(`metadata entry ${i} flags`, entry + 24, 4, 'flags', [0, 1, 2, 4, 6, 7]);
      for (const [name, guid] of ITEMS) b.splice(`metadata entry ${i} guid <- ${name}`, entry, guid);
    }
    b.region('metadata table', base, 32 + 32 * count);
    const item = (name: string): number => items.get(name)?.offset ?? -1;
    if (item('file parameters') >= 0) {
      b.field('block size', item('file parameters'), 4, 'size', [MiB, 32 * MiB, 256 * MiB, 512 * MiB, MiB / 2, 3 * MiB, 0, 0x80000000]);
      b.field('file parameter flags', item('file parameters') + 4, 4, 'flags', [0, 1, 2, 3]);
    }
    if (item('virtual disk size') >= 0) b.field('virtual disk size', item('virtual disk size'), 8, 'size', [MAX_VIRTUAL_SIZE, MAX_VIRTUAL_SIZE + 512, 2 ** 53, 0, 511, 4096 * MiB]);
    if (item('page 83 data') >= 0) b.region('page 83 data', item('page 83 data'), 16);
    if (item('logical sector size') >= 0) b.field('logical sector size', item('logical sector size'), 4, 'size', [512, 4096, 0, 1024]);
    if (item('physical sector size') >= 0) b.field('physical sector size', item('physical sector size'), 4, 'size', [512, 4096, 0, 1024]);
    const locator = items.get('parent locator');
    if (locator) {
      const at = locator.offset;
      b.region('parent locator', at, locator.length);
      b.field('parent locator type', at, 8, 'flags');
      b.field('parent locator entry count', at + 18, 2, 'count', [0, 1, 2, 0xffff]);
      for (let i = 0; i < Math.min(r.u16(at + 18), 4); i++) {
        const entry = at + 20 + i * 12;
        b.field(`parent locator ${i} key offset`, entry, 4, 'offset', [0, 20, locator.length, 0xffffffff]);
        b.field(`parent locator ${i} value offset`, entry + 4, 4, 'offset', [0, 20, locator.length, 0xffffffff]);
        b.field(`parent locator ${i} key length`, entry + 8, 2, 'length', [0, 1, 2, locator.length, 0xffff]);
        b.field(`parent locator ${i} value length`, entry + 10, 2, 'length', [0, 1, 2, locator.length, 0xffff]);
      }
    }
  }

  // The log: the stale entry qemu leaves, its descriptors, and its CRC over the whole entry.
  b.pointer(logOffset);
  if (logEntry >= 0) {
    const entryLength = r.u32(logEntry + 8);
    b.field('log entry signature', logEntry, 4, 'magic');
    b.field('log entry checksum', logEntry + 4, 4, 'flags');
    b.field('log entry length', logEntry + 8, 4, 'length', [0, 4096, 8192, logLength, logLength + 4096, 0xfffff000]);
    b.field('log entry tail', logEntry + 12, 4, 'offset', [0, 4096, logLength]);
    b.field('log entry sequence number', logEntry + 16, 8, 'count', [0, 1, 2, 2 ** 53]);
    b.field('log entry descriptor count', logEntry + 24, 4, 'count', [0, 1, 2, 126, 127, 128, 0xffffffff]);
    b.field('log entry guid', logEntry + 32, 8, 'flags');
    b.field('log entry flushed file offset', logEntry + 48, 8, 'offset', [0, bytes.length, bytes.length + MiB]);
    b.field('log entry last file offset', logEntry + 56, 8, 'offset', [0, bytes.length, bytes.length + MiB]);
    for (let i = 0; i < Math.min(r.u32(logEntry + 24), 4); i++) {
      const at = logEntry + 64 + i * 32;
      b.field(`log descriptor ${i} signature`, at, 4, 'magic', [0x63736564, 0x6f72657a]);
      b.field(`log descriptor ${i} trailing/length`, at + 4, 4, 'length');
      b.field(`log descriptor ${i} leading/length`, at + 8, 8, 'length', [0, 4096, MiB]);
      b.field(`log descriptor ${i} file offset`, at + 16, 8, 'offset', [0, 4096, HEADER_OFFSETS[0], bytes.length, 2 ** 53]);
      b.field(`log descriptor ${i} sequence number`, at + 24, 8, 'count');
    }
    b.region('log entry', logEntry, 4096);
    if (entryLength > 0 && entryLength <= logLength) b.checksum({ name: 'log entry', offset: logEntry, length: entryLength, at: logEntry + 4, kind: 'crc32c' });
  }

  // The BAT: payload entries (state in bits 0-2, offset in MiB from bit 20), a sector bitmap entry per chunk.
  if (bat && metadata && items.has('virtual disk size') && items.has('file parameters')) {
    const virtualSize = Math.floor(r.u64(items.get('virtual disk size')!.offset) / 512) * 512;
    const hasParent = (r.u32(items.get('file parameters')!.offset + 4) & 2) !== 0;
    const geometry = blockSize >= MiB ? batGeometry(virtualSize, blockSize, hasParent) : { batEntries: 0 };
    const fileMiB = Math.ceil(bytes.length / MiB) * MiB;
    const targets = [MiB, logOffset, bat.offset, metadata.offset, fileMiB, fileMiB + MiB, 0].map((offset) => BigInt(offset));
    const values = [0n, 1n, 2n, 3n, 5n, 6n, 7n, ...targets.map((offset) => offset | 6n), ...targets.map((offset) => offset | 7n), (1n << 53n) | 6n, (1n << 64n) - 1n];
    b.pointer(bat.offset);
    b.region('BAT', bat.offset, Math.min(geometry.batEntries * 8, 4096));
    const live = b.tableEntries('BAT', bat.offset, Math.min(geometry.batEntries, 65536), 8, 8, 4, 24, { values });
    for (const index of live.slice(0, 8)) b.pointer(Math.floor(r.u64(bat.offset + index * 8) / MiB) * MiB);
    // The sector bitmap entry of the first chunk (present only in a differencing image).
    if ('chunkRatio' in geometry) b.field('BAT sector bitmap entry 0', bat.offset + geometry.chunkRatio * 8, 8, 'entry', values);
  }
  return b.map;
}

// ---- Parallels ----

function parallelsLayout(bytes: Uint8Array): FieldMap {
  const r = new Reader(bytes, 'le');
  const f = PARALLELS_FIELDS;
  const tracks = r.u32(f.tracks.offset);
  const entries = r.u32(f.batEntries.offset);
  const dataOff = r.u32(f.dataOff.offset);
  const cluster = Math.max(512, tracks * 512);
  const b = new MapBuilder(r, cluster);
  const sectors = Math.floor(bytes.length / 512);
  b.region('magic', 0, 16);
  b.splice('magic <- "WithoutFreeSpace" (BAT in sectors)', 0, ascii(MAGIC_SECTORS));
  b.splice('magic <- "WithouFreSpacExt" (BAT in clusters)', 0, ascii(MAGIC_CLUSTERS));
  const nbSectors = r.u64(f.nbSectors.offset);
  fieldsOf(b, 0, '', f, {
    version: ['version', [2, 1, 3, 0]],
    heads: 'count',
    cylinders: 'count',
    tracks: ['count', [1, 8, 128, 2048, MAX_TRACKS, MAX_TRACKS + 1, 0, tracks * 2, tracks / 2]],
    batEntries: ['count', [MAX_BAT_ENTRIES, MAX_BAT_ENTRIES + 1, Math.floor((bytes.length - 64) / 4), Math.floor((bytes.length - 64) / 4) + 1, entries - 1, entries + 1, 0]],
    nbSectors: ['size', [entries * tracks, entries * tracks + 1, nbSectors + 1, 2 ** 32 - 1, 2 ** 32, 2 ** 44, 0]],
    inuse: ['flags', [0, INUSE_MAGIC, 1]],
    dataOff: ['offset', [0, 1, dataOff - 1, dataOff + 1, sectors, sectors + 1, Math.ceil((64 + 4 * entries) / 512)]],
    flags: ['flags', [0, 1, 2]],
    extOff: ['offset', [0, 1, dataOff, sectors - 1, sectors, 2 ** 44]],
  });
  b.region('header', 0, 64);
  b.pointer(dataOff * 512);
  b.region('BAT', 64, Math.min(entries * 4, 4096));
  const clusters = Math.floor(bytes.length / cluster);
  const live = b.tableEntries('BAT', 64, Math.min(entries, 65536), 4, 4, 4, 24, {
    values: [0, 1, dataOff / Math.max(1, tracks), clusters - 1, clusters, clusters + 1, dataOff, sectors, 0xffffffff],
  });
  for (const index of live.slice(0, 8)) b.pointer(r.u32(64 + index * 4) * cluster);
  return b.map;
}

const LAYOUTS: Record<string, (bytes: Uint8Array) => FieldMap> = { ...CLASSIC_LAYOUTS, vdi: vdiLayout, vpc: vhdLayout, vhdx: vhdxLayout, parallels: parallelsLayout };

/** The field map of a seed and of those companions that are images of their own (sparse extent files). */
export function seedLayout(seed: Seed): SeedLayout {
  const layout = LAYOUTS[seed.format];
  if (!layout) throw new Error(`no field layout for format ${seed.format}`);
  const companions: Record<string, FieldMap> = {};
  for (const [name, bytes] of Object.entries(seed.companions)) {
    const map = layout(bytes);
    if (map.fields.length > 0) companions[name] = map;
  }
  return { main: layout(seed.bytes), companions };
}
