import type { BackingReference, BlockIO, CreateSpec, OptionDescriptor, OptionValues } from '@ic/core/sdk';
import { invalidOption } from './errors.js';
import {
  backingFormatExtension,
  encodeExtensions,
  featureNameTableExtension,
  MAX_BACKING_FORMAT_LENGTH,
  type RawExtension,
} from './extensions.js';
import {
  CompatibleFeature,
  encodeHeader,
  l1EntriesNeeded,
  MAX_BACKING_NAME_LENGTH,
  MAX_CLUSTER_BITS,
  MAX_L1_ENTRIES,
  MIN_CLUSTER_BITS,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  type Qcow2Header,
} from './header.js';
import { encodeRefcounts, refcountGeometry, type ClusterRun, type RefcountLayout } from './refcount.js';

/** qemu-img's option names and defaults. */
export const QCOW2_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'compat', type: 'enum', values: ['0.10', '1.1', 'v2', 'v3'], default: '1.1', help: 'qcow2 compatibility level: 0.10 (version 2) or 1.1 (version 3)' },
  { name: 'cluster_size', type: 'size', default: 65536, help: 'qcow2 cluster size (a power of two from 512 bytes to 2 MiB)' },
  { name: 'refcount_bits', type: 'integer', default: 16, help: 'width of a reference count entry in bits (1, 2, 4, 8, 16, 32 or 64)' },
  { name: 'lazy_refcounts', type: 'boolean', default: false, help: 'postpone refcount updates (compat 1.1 only)' },
];

/** Image parameters chosen by the user's options. */
export interface Qcow2Parameters {
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
}

function log2Exact(value: number): number | undefined {
  if (!Number.isSafeInteger(value) || value <= 0) return undefined;
  const bits = Math.round(Math.log2(value));
  return 2 ** bits === value ? bits : undefined;
}

/** Validates qemu-img style options; `clusterSize` (when given) overrides the cluster_size option. */
export function resolveParameters(options: OptionValues, clusterSize?: number): Qcow2Parameters {
  const compat = String(options.compat ?? '1.1');
  if (!['0.10', '1.1', 'v2', 'v3'].includes(compat)) throw invalidOption(`compat must be 0.10 or 1.1, got '${compat}'`);
  const version = compat === '0.10' || compat === 'v2' ? 2 : 3;
  const size = clusterSize ?? Number(options.cluster_size ?? 65536);
  const clusterBits = log2Exact(size);
  if (clusterBits === undefined || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalidOption(`cluster size must be a power of two between 512 and 2M, got ${size}`);
  }
  const refcountBits = Number(options.refcount_bits ?? 16);
  const refcountOrder = log2Exact(refcountBits);
  if (refcountOrder === undefined || refcountOrder > 6) throw invalidOption(`refcount_bits must be a power of two up to 64, got ${refcountBits}`);
  if (version === 2 && refcountOrder !== 4) throw invalidOption('compat=0.10 supports only refcount_bits=16');
  const lazyRefcounts = options.lazy_refcounts === true || options.lazy_refcounts === 'on';
  if (version === 2 && lazyRefcounts) throw invalidOption('lazy_refcounts requires compat=1.1');
  return { version, clusterBits, refcountOrder, lazyRefcounts };
}

/** What goes into cluster 0 besides the table pointers. */
export interface HeaderRegionSpec {
  parameters: Qcow2Parameters;
  size: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  backing?: BackingReference;
  /** Write qemu's feature name table (qemu-img create does; a minimal header does not need it). */
  featureNameTable: boolean;
}

/** Problems that stop a backing reference from fitting into cluster 0, as sentences. */
export function backingProblems(backing: BackingReference | undefined, parameters: Qcow2Parameters, featureNameTable: boolean): string[] {
  if (!backing) return [];
  const problems: string[] = [];
  const nameLength = new TextEncoder().encode(backing.name).length;
  if (nameLength > MAX_BACKING_NAME_LENGTH) problems.push(`qcow2 backing file names are limited to ${MAX_BACKING_NAME_LENGTH} bytes; '${backing.name.slice(0, 40)}...' has ${nameLength}.`);
  if (backing.format !== undefined && new TextEncoder().encode(backing.format).length > MAX_BACKING_FORMAT_LENGTH) {
    problems.push(`qcow2 can record backing formats of at most ${MAX_BACKING_FORMAT_LENGTH} bytes; '${backing.format}' is longer.`);
  }
  if (problems.length === 0) {
    const needed = headerRegionLength(parameters, backing, featureNameTable);
    if (needed > 2 ** parameters.clusterBits) {
      problems.push(`the header and backing file name need ${needed} bytes, more than the ${2 ** parameters.clusterBits}-byte header cluster.`);
    }
  }
  return problems;
}

function extensionsFor(parameters: Qcow2Parameters, backing: BackingReference | undefined, featureNameTable: boolean): RawExtension[] {
  // qemu's order: backing format first, then the feature name table.
  const extensions: RawExtension[] = [];
  if (backing?.format !== undefined) extensions.push(backingFormatExtension(backing.format));
  if (featureNameTable && parameters.version === 3) extensions.push(featureNameTableExtension());
  return extensions;
}

function headerRegionLength(parameters: Qcow2Parameters, backing: BackingReference | undefined, featureNameTable: boolean): number {
  const headerLength = parameters.version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH;
  const extensions = encodeExtensions(extensionsFor(parameters, backing, featureNameTable)).length;
  const name = backing ? new TextEncoder().encode(backing.name).length : 0;
  return headerLength + extensions + name;
}

/**
 * The meaningful bytes of cluster 0: header, extensions, end marker, then the backing file name at the
 * next 8-byte boundary (where qemu puts it).
 */
export function encodeHeaderRegion(spec: HeaderRegionSpec): Uint8Array {
  const { parameters } = spec;
  const headerLength = parameters.version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH;
  const extensions = encodeExtensions(extensionsFor(parameters, spec.backing, spec.featureNameTable));
  const name = spec.backing ? new TextEncoder().encode(spec.backing.name) : new Uint8Array(0);
  const nameOffset = headerLength + extensions.length;
  const header: Qcow2Header = {
    version: parameters.version,
    backingFileOffset: spec.backing ? nameOffset : 0,
    backingFileSize: name.length,
    clusterBits: parameters.clusterBits,
    size: spec.size,
    cryptMethod: 0,
    l1Size: spec.l1Size,
    l1TableOffset: spec.l1TableOffset,
    refcountTableOffset: spec.refcountTableOffset,
    refcountTableClusters: spec.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: parameters.lazyRefcounts ? CompatibleFeature.lazyRefcounts : 0n,
    autoclearFeatures: 0n,
    refcountOrder: parameters.refcountOrder,
    headerLength,
    compressionType: 0,
  };
  const region = new Uint8Array(nameOffset + name.length);
  region.set(encodeHeader(header), 0);
  region.set(extensions, headerLength);
  region.set(name, nameOffset);
  if (region.length > 2 ** parameters.clusterBits) throw invalidOption(`header and backing file name (${region.length} bytes) do not fit in cluster 0`);
  return region;
}

/**
 * Creates an empty image laid out like `qemu-img create -f qcow2`: header in cluster 0, refcount table
 * from cluster 1, refcount block(s) after it, then the L1 table; the file ends where the L1 table ends.
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  const parameters = resolveParameters(spec.options);
  if (!Number.isSafeInteger(spec.virtualSize) || spec.virtualSize < 0) throw invalidOption(`invalid virtual size ${spec.virtualSize}`);
  // qemu-img rounds the size up to whole sectors.
  const size = Math.ceil(spec.virtualSize / 512) * 512;
  const problems = backingProblems(spec.backing, parameters, 2 ** parameters.clusterBits >= 8192);
  if (problems.length > 0) throw invalidOption(problems[0]!);
  const clusterSize = 2 ** parameters.clusterBits;
  const l1Size = l1EntriesNeeded(size, parameters.clusterBits, 8);
  if (l1Size > MAX_L1_ENTRIES) throw invalidOption(`virtual size ${size} is too large for cluster size ${clusterSize}`);
  const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
  const geometry = refcountGeometry(parameters.clusterBits, parameters.refcountOrder);

  // Fixed point: table and blocks must count every cluster including themselves.
  let tableClusters = 1;
  let blockCount = 1;
  for (;;) {
    const total = 1 + tableClusters + blockCount + l1Clusters;
    const blocksNeeded = Math.ceil(total / geometry.entriesPerBlock);
    const tableNeeded = Math.max(1, Math.ceil((blocksNeeded * 8) / clusterSize));
    if (blocksNeeded <= blockCount && tableNeeded <= tableClusters) break;
    blockCount = Math.max(blockCount, blocksNeeded);
    tableClusters = Math.max(tableClusters, tableNeeded);
  }
  const tableOffset = clusterSize;
  const firstBlock = 1 + tableClusters;
  const l1Cluster = firstBlock + blockCount;
  const layout: RefcountLayout = { tableOffset, tableClusters, blocks: new Map() };
  for (let index = 0; index < blockCount; index++) layout.blocks.set(index, (firstBlock + index) * clusterSize);
  const runs: ClusterRun[] = [{ start: 0, end: l1Cluster + l1Clusters, role: 'new image metadata' }];

  const region = encodeHeaderRegion({
    parameters,
    size,
    l1Size,
    l1TableOffset: l1Size > 0 ? l1Cluster * clusterSize : 0,
    refcountTableOffset: tableOffset,
    refcountTableClusters: tableClusters,
    // qemu 7.2 leaves the (optional) feature name table out of images with clusters below 8 KiB.
    featureNameTable: clusterSize >= 8192,
    ...(spec.backing ? { backing: spec.backing } : {}),
  });

  await io.truncate(0);
  await io.write(0, region);
  for (const write of encodeRefcounts(layout, runs, geometry)) await io.write(write.offset, write.data);
  // The L1 table is all zeros: extending the file is enough.
  await io.truncate(l1Size > 0 ? l1Cluster * clusterSize + l1Size * 8 : l1Cluster * clusterSize);
  await io.flush();
}
