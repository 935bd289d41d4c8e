import { alignUp, DRIVER_API_VERSION, IcError, isPowerOfTwo, type BlockIO, type CreateSpec, type Driver, type Image, type OptionDescriptor } from '@ic/core/sdk';
import { encodeHeader, FORMAT, hasMagic, MAX_CLUSTER_BITS, MAX_ENTRIES, MIN_CLUSTER_BITS, tableEntries, tableLength } from './header.js';
import { ToyImage } from './image.js';
import { toyInPlace } from './target.js';

export const TOY_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'cluster_size', type: 'size', default: 65536, help: `cluster size in bytes, a power of two from ${2 ** MIN_CLUSTER_BITS} to ${2 ** MAX_CLUSTER_BITS}` },
];

/** An empty image: the header in cluster 0, then a table of unallocated entries (the file reads as zeros there). */
async function createToy(io: BlockIO, spec: CreateSpec): Promise<void> {
  if (spec.backing) throw new IcError('UNSUPPORTED', `${FORMAT}: images cannot have a backing file`, { format: FORMAT });
  const clusterSize = spec.options['cluster_size'] ?? 65536;
  if (typeof clusterSize !== 'number' || !isPowerOfTwo(clusterSize) || clusterSize < 2 ** MIN_CLUSTER_BITS || clusterSize > 2 ** MAX_CLUSTER_BITS) {
    throw new IcError('INVALID', `${FORMAT}: cluster_size must be a power of two from ${2 ** MIN_CLUSTER_BITS} to ${2 ** MAX_CLUSTER_BITS}`);
  }
  const virtualSize = alignUp(spec.virtualSize, 512);
  if (tableEntries({ clusterSize, virtualSize }) > MAX_ENTRIES) throw new IcError('LIMIT', `${FORMAT}: ${virtualSize} bytes need more than ${MAX_ENTRIES} table entries; choose a larger cluster_size`);
  await io.truncate(0);
  await io.write(0, encodeHeader({ clusterSize, virtualSize, tableOffset: clusterSize }));
  await io.truncate(clusterSize + tableLength({ clusterSize, virtualSize }));
  await io.flush();
}

/** The toy format: a header and one flat table. A small but complete ic driver, to copy from. */
export const toyDriver: Driver = {
  name: FORMAT,
  description: 'toy block format: a header and one flat table of cluster pointers (the ic driver template)',
  version: '0.1.0',
  apiVersion: DRIVER_API_VERSION,
  capabilities: { read: true, create: true, zeroExtents: true, check: true, inPlaceSource: true, inPlaceTarget: true },
  options: TOY_OPTIONS,
  probe: (head) => (hasMagic(head) ? 100 : 0),
  open: (io): Promise<Image> => ToyImage.open(io),
  create: createToy,
  inPlace: toyInPlace,
};

export default toyDriver;
