import { alignUp, encodeText, IcError, type BackingReference, type BlockIO, type CreateSpec, type OptionDescriptor, type OptionValues } from '@ic/core/sdk';
import {
  DEFAULT_CLUSTER_SIZE,
  DEFAULT_TABLE_SIZE,
  FEATURE_BACKING_FILE,
  FEATURE_BACKING_FORMAT_NO_PROBE,
  FORMAT,
  HEADER_LENGTH,
  isValidClusterSize,
  isValidTableSize,
  MAX_BACKING_NAME_LENGTH,
  qemuGeometryProblem,
  SECTOR_SIZE,
  serializeHeader,
  type QedHeader,
} from './header.js';

/** qemu-img's QED creation options that shape the image. */
export const QED_OPTIONS: readonly OptionDescriptor[] = [
  {
    name: 'cluster_size',
    type: 'size',
    default: DEFAULT_CLUSTER_SIZE,
    help: 'Cluster size in bytes: a power of two from 4 KiB to 4 MiB (qemu 7.2 can use 4 MiB only with table_size=2, 2 MiB with table_size<=8)',
  },
  { name: 'table_size', type: 'integer', default: DEFAULT_TABLE_SIZE, help: 'L1/L2 table size in clusters: 2, 4, 8 or 16' },
];

/** Where qemu puts the backing file name: right after the 64-byte header. */
export const BACKING_NAME_OFFSET = HEADER_LENGTH;

export interface QedGeometryOptions {
  clusterSize: number;
  tableSize: number;
}

/**
 * Reads cluster_size and table_size from user options. table_size 1 is valid in the specification, but
 * qemu 7.2 refuses to open such images ("QED table offset is invalid": its table bounds check treats a
 * one-cluster table as an overflow), so ic does not make them.
 */
export function geometryOptions(options: OptionValues): QedGeometryOptions {
  const clusterSize = options['cluster_size'] ?? DEFAULT_CLUSTER_SIZE;
  const tableSize = options['table_size'] ?? DEFAULT_TABLE_SIZE;
  if (typeof clusterSize !== 'number' || !isValidClusterSize(clusterSize)) {
    throw new IcError('INVALID', `${FORMAT}: cluster_size must be a power of two from 4096 to 67108864 bytes (got ${String(clusterSize)})`);
  }
  if (typeof tableSize !== 'number' || !isValidTableSize(tableSize)) {
    throw new IcError('INVALID', `${FORMAT}: table_size must be a power of two from 1 to 16 clusters (got ${String(tableSize)})`);
  }
  if (tableSize === 1) {
    throw new IcError('INVALID', `${FORMAT}: table_size=1 makes images that qemu 7.2 cannot open; use 2 or more`);
  }
  return { clusterSize, tableSize };
}

/** The encoded backing name, or a reason it cannot be stored in a header region of `headerRegionSize` bytes. */
export function encodeBackingName(backing: BackingReference, headerRegionSize: number): { bytes: Uint8Array } | { problem: string } {
  const bytes = encodeText(backing.name);
  if (bytes.length === 0) return { problem: 'an empty backing file name cannot be stored in a QED image' };
  if (bytes.length > MAX_BACKING_NAME_LENGTH) {
    return { problem: `the backing file name is ${bytes.length} bytes; QED names must be shorter than 4096 bytes` };
  }
  if (BACKING_NAME_OFFSET + bytes.length > headerRegionSize) {
    return { problem: `the backing file name is ${bytes.length} bytes and does not fit in the ${headerRegionSize}-byte QED header region after the ${HEADER_LENGTH}-byte header` };
  }
  return { bytes };
}

/** Header fields for a fresh image with a one-cluster header region and no need-check flag. */
export function newHeader(geometry: QedGeometryOptions, imageSize: number, l1TableOffset: number, backing?: { reference: BackingReference; nameLength: number }): QedHeader {
  let features = 0n;
  if (backing) {
    features |= FEATURE_BACKING_FILE;
    // QED can only say "raw, do not probe"; any other backing format is left to probing, as qemu-img does.
    if (backing.reference.format === 'raw') features |= FEATURE_BACKING_FORMAT_NO_PROBE;
  }
  return {
    clusterSize: geometry.clusterSize,
    tableSize: geometry.tableSize,
    headerSize: 1,
    features,
    compatFeatures: 0n,
    autoclearFeatures: 0n,
    l1TableOffset,
    imageSize,
    backingFilenameOffset: backing ? BACKING_NAME_OFFSET : 0,
    backingFilenameSize: backing ? backing.nameLength : 0,
  };
}

/** The header bytes at offset 0: the 64-byte header followed by the backing name, if any. */
export function headerRegionBytes(header: QedHeader, backingName?: Uint8Array): Uint8Array {
  const fixed = serializeHeader(header);
  if (!backingName) return fixed;
  const out = new Uint8Array(BACKING_NAME_OFFSET + backingName.length);
  out.set(fixed, 0);
  out.set(backingName, BACKING_NAME_OFFSET);
  return out;
}

/**
 * An empty image laid out like `qemu-img create -f qed`: the header cluster, then a zeroed L1 table of
 * table_size clusters at cluster 1; the file ends at the end of the L1. The size is rounded up to 512.
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  const geometry = geometryOptions(spec.options);
  if (!Number.isSafeInteger(spec.virtualSize) || spec.virtualSize < 0) {
    throw new IcError('INVALID', `${FORMAT}: invalid virtual size ${spec.virtualSize}`);
  }
  const imageSize = alignUp(spec.virtualSize, SECTOR_SIZE);
  // Exactly what qemu-img create accepts and qemu can then open (qemu rounds the size up to 512 the same way).
  const problem = qemuGeometryProblem(geometry.clusterSize, geometry.tableSize, imageSize);
  if (problem) throw new IcError('INVALID', `${FORMAT}: ${problem}`);
  let name: Uint8Array | undefined;
  if (spec.backing) {
    const encoded = encodeBackingName(spec.backing, geometry.clusterSize);
    if ('problem' in encoded) throw new IcError('INVALID', `${FORMAT}: ${encoded.problem}`);
    name = encoded.bytes;
  }
  const l1TableOffset = geometry.clusterSize;
  const fileSize = l1TableOffset + geometry.tableSize * geometry.clusterSize;
  const header = newHeader(geometry, imageSize, l1TableOffset, spec.backing && name ? { reference: spec.backing, nameLength: name.length } : undefined);
  // Truncating to 0 first makes the header cluster and the L1 read as zeros whatever the file held.
  await io.truncate(0);
  await io.truncate(fileSize);
  await io.write(0, headerRegionBytes(header, name));
  await io.flush();
}
