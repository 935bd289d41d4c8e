import { alignUp, IcError, type BlockIO, type CreateSpec, type OptionDescriptor, type OptionValues } from '@ic/core/sdk';
import { DEFAULT_CLUSTER_SIZE, FORMAT, MAX_TRACKS, newHeader, SECTOR_SIZE, serializeHeader } from './header.js';

/** qemu-img's Parallels creation option that shapes the image. */
export const PARALLELS_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'cluster_size', type: 'size', default: DEFAULT_CLUSTER_SIZE, help: 'Cluster size in bytes (a multiple of 512; qemu rounds other values up)' },
];

/** qemu caps the virtual size at 2^32 clusters ("Image size is too large for this cluster size"). */
export const MAX_CLUSTERS = 2 ** 32;

/** The cluster size option, rounded up to 512 as qemu-img does, checked against qemu's limits. */
export function clusterSizeOption(options: OptionValues): number {
  const value = options['cluster_size'] ?? DEFAULT_CLUSTER_SIZE;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) throw new IcError('INVALID', `${FORMAT}: cluster_size must be a positive number of bytes (got ${String(value)})`);
  const clusterSize = alignUp(value, SECTOR_SIZE);
  if (clusterSize / SECTOR_SIZE > MAX_TRACKS) throw new IcError('INVALID', `${FORMAT}: cluster_size ${clusterSize} is larger than qemu can open (${MAX_TRACKS * SECTOR_SIZE})`);
  return clusterSize;
}

/**
 * An empty image laid out like `qemu-img create -f parallels`: the header and a zeroed BAT, the file ending where
 * the data area starts (the BAT rounded up to a whole cluster). The size is rounded up to 512, as qemu-img does.
 * Like qemu's, an image whose BAT spans more than one cluster shows leaked clusters in `qemu-img check` until data
 * is written (qemu 7.2 counts everything past the first cluster of an empty image as leaked).
 */
export async function createImage(io: BlockIO, spec: CreateSpec): Promise<void> {
  if (spec.backing) throw new IcError('UNSUPPORTED', `${FORMAT}: Parallels images cannot name a backing file`, { format: FORMAT });
  const clusterSize = clusterSizeOption(spec.options);
  if (!Number.isSafeInteger(spec.virtualSize) || spec.virtualSize < 0) throw new IcError('INVALID', `${FORMAT}: invalid virtual size ${spec.virtualSize}`);
  const virtualSize = alignUp(spec.virtualSize, SECTOR_SIZE);
  if (virtualSize >= MAX_CLUSTERS * clusterSize) throw new IcError('INVALID', `${FORMAT}: size ${virtualSize} is too large for ${clusterSize}-byte clusters (at most 2^32 clusters)`);
  const header = newHeader(virtualSize, clusterSize);
  await io.truncate(0);
  await io.truncate(header.dataOff * SECTOR_SIZE);
  await io.write(0, serializeHeader(header));
  await io.flush();
}
