/**
 * The toy format's header: the first 40 bytes of the file, little-endian. The header owns the whole first cluster
 * (its header region); data and the table live past it.
 *
 *   offset size field
 *        0    8 magic          "ICTOYIMG"
 *        8    4 version        1
 *       12    4 cluster_bits   12..20 (4 KiB to 1 MiB clusters)
 *       16    8 virtual_size   guest bytes, a multiple of 512
 *       24    8 table_offset   host offset of the table: cluster-aligned, past the header cluster
 *       32    4 header_crc     CRC-32C of bytes 0..40 with this field zero
 *       36    4 reserved       0
 *
 * The table has one u64le entry per guest cluster: 0 = unallocated, 1 = reads as zeros, anything else = the host
 * offset of the cluster's data (cluster-aligned, past the header cluster).
 */
import { ByteView, corrupt, crc32c, IcError, isAligned, unsupported } from '@ic/core/sdk';

export const FORMAT = 'toy';
export const MAGIC = 'ICTOYIMG';
export const VERSION = 1;
export const HEADER_LENGTH = 40;
export const MIN_CLUSTER_BITS = 12;
export const MAX_CLUSTER_BITS = 20;
export const ENTRY_SIZE = 8;
export const ENTRY_UNALLOCATED = 0;
export const ENTRY_ZERO = 1;
/** At most 2^24 entries (a 128 MiB table): a hostile header cannot make a reader allocate or walk more. */
export const MAX_ENTRIES = 2 ** 24;

export const Field = { magic: 0, version: 8, clusterBits: 12, virtualSize: 16, tableOffset: 24, headerCrc: 32, reserved: 36 } as const;

export interface ToyHeader {
  clusterSize: number;
  virtualSize: number;
  tableOffset: number;
}

export function tableEntries(header: Pick<ToyHeader, 'clusterSize' | 'virtualSize'>): number {
  return Math.ceil(header.virtualSize / header.clusterSize);
}

/** Bytes the table occupies, rounded up to whole clusters (the table owns those clusters). */
export function tableLength(header: Pick<ToyHeader, 'clusterSize' | 'virtualSize'>): number {
  return Math.ceil((tableEntries(header) * ENTRY_SIZE) / header.clusterSize) * header.clusterSize;
}

export function hasMagic(head: Uint8Array): boolean {
  if (head.length < MAGIC.length) return false;
  for (let i = 0; i < MAGIC.length; i++) if (head[i] !== MAGIC.charCodeAt(i)) return false;
  return true;
}

export function encodeHeader(header: ToyHeader): Uint8Array {
  const view = ByteView.alloc(HEADER_LENGTH);
  for (let i = 0; i < MAGIC.length; i++) view.setU8(Field.magic + i, MAGIC.charCodeAt(i));
  view.setU32le(Field.version, VERSION);
  view.setU32le(Field.clusterBits, Math.log2(header.clusterSize));
  view.setU64le(Field.virtualSize, header.virtualSize);
  view.setU64le(Field.tableOffset, header.tableOffset);
  view.setU32le(Field.headerCrc, crc32c(view.bytes));
  return view.bytes;
}

/**
 * Parses and validates a header against the file's size: every field bounded before it is used, so a hostile
 * file gets a typed error (WRONG_FORMAT, UNSUPPORTED, CORRUPT or LIMIT) and nothing is allocated by its claims.
 */
export function decodeHeader(bytes: Uint8Array, fileSize: number): ToyHeader {
  if (!hasMagic(bytes)) throw new IcError('WRONG_FORMAT', `${FORMAT}: no "${MAGIC}" magic`, { format: FORMAT });
  if (bytes.length < HEADER_LENGTH) throw corrupt(FORMAT, `the file is ${bytes.length} bytes, shorter than the header`, 0);
  const view = new ByteView(bytes.slice(0, HEADER_LENGTH));
  const version = view.u32le(Field.version);
  if (version !== VERSION) throw unsupported(FORMAT, `version ${version} (this driver reads version ${VERSION})`);
  const stored = view.u32le(Field.headerCrc);
  view.setU32le(Field.headerCrc, 0);
  if (crc32c(view.bytes) !== stored) throw corrupt(FORMAT, 'header checksum mismatch', Field.headerCrc);
  const clusterBits = view.u32le(Field.clusterBits);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) throw corrupt(FORMAT, `cluster_bits ${clusterBits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`, Field.clusterBits);
  const clusterSize = 2 ** clusterBits;
  const virtualSize = view.u64le(Field.virtualSize, 'virtual_size');
  if (!isAligned(virtualSize, 512)) throw corrupt(FORMAT, `virtual_size ${virtualSize} is not a multiple of 512`, Field.virtualSize);
  if (tableEntries({ clusterSize, virtualSize }) > MAX_ENTRIES) throw new IcError('LIMIT', `${FORMAT}: virtual_size ${virtualSize} needs more than ${MAX_ENTRIES} table entries`, { format: FORMAT, offset: Field.virtualSize });
  const tableOffset = view.u64le(Field.tableOffset, 'table_offset');
  const header = { clusterSize, virtualSize, tableOffset };
  if (!isAligned(tableOffset, clusterSize) || tableOffset < clusterSize) throw corrupt(FORMAT, `table_offset ${tableOffset} is not a cluster past the header`, Field.tableOffset);
  if (tableOffset + tableEntries(header) * ENTRY_SIZE > fileSize) throw corrupt(FORMAT, `the table at ${tableOffset} ends past the end of the file (${fileSize})`, Field.tableOffset);
  if (view.u32le(Field.reserved) !== 0) throw unsupported(FORMAT, 'reserved header bytes are set (a newer feature?)');
  return header;
}
