import type { ConversionBlocker, ConversionSource } from '@ic/core/sdk';
import { sparseMetadataRanges } from './host-ranges.js';
import type { SparseVmdkImage } from './image.js';

export const COMPRESSED_BLOCKER: ConversionBlocker = {
  feature: 'compressed grains',
  reason: 'streamOptimized VMDK stores deflate-compressed grains; convert it with qemu-img convert',
};

/**
 * Describes a sparse extent for the in-place engine: its geometry, blockers and the host ranges of its own
 * structures. The conversion walks the grains strictly (a data grain inside the header and descriptor window,
 * or ending past the end of the file, is refused as CORRUPT); overlaps between grains and tables are refused by
 * the engine, which sees every host range.
 */
export async function sparseConversionSource(image: SparseVmdkImage): Promise<ConversionSource> {
  const { geometry, backing } = image.state;
  const blockers: ConversionBlocker[] = [];
  if (geometry.compressed) blockers.push(COMPRESSED_BLOCKER);
  return {
    options: {
      virtualSize: geometry.virtualSize,
      clusterSize: geometry.grainBytes,
      ...(backing ? { backing: { ...backing } } : {}),
    },
    blockers,
    metadataRanges: () => sparseMetadataRanges(image.state),
    map: () => image.extentsIn(0, geometry.virtualSize, true),
  };
}
