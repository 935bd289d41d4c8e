import type { ConversionBlocker, ConversionSource } from '@ic/core/sdk';
import { corruptAt } from './errors.js';
import { SECTOR_SIZE } from './header.js';
import { firstOverlap, NumberList, protectedHeaderEnd, rangesHitting, sparseMetadataRanges } from './host-ranges.js';
import type { SparseVmdkImage } from './image.js';

export const COMPRESSED_BLOCKER: ConversionBlocker = {
  feature: 'compressed grains',
  reason: 'streamOptimized VMDK stores deflate-compressed grains; convert it with qemu-img convert',
};

/**
 * Describes a sparse extent for the in-place engine. Walks every GTE and refuses (CORRUPT) any data grain that
 * starts inside the header/descriptor window, runs past the end of the file, or overlaps a table or another grain:
 * the engine must be able to trust every host range it is handed.
 */
export async function sparseConversionSource(image: SparseVmdkImage): Promise<ConversionSource> {
  const { geometry, fileSize, backing } = image.state;
  const blockers: ConversionBlocker[] = [];
  if (geometry.compressed) blockers.push(COMPRESSED_BLOCKER);
  const metadataRanges = sparseMetadataRanges(image.state);
  const headerEnd = protectedHeaderEnd(image.state);

  let zeroExtents = false;
  const starts = new NumberList();
  for await (const record of image.grains()) {
    if (record.state === 'zero') zeroExtents = true;
    if (record.state !== 'data' || geometry.compressed) continue;
    const hostOffset = record.gte * SECTOR_SIZE;
    const where = `GTE ${record.gtIndex} of grain table ${record.gdIndex} (guest offset ${record.guestOffset})`;
    if (hostOffset < headerEnd) {
      throw corruptAt(`${where} points at sector ${record.gte}, inside the header and descriptor area (first ${headerEnd} bytes)`, hostOffset);
    }
    if (hostOffset + geometry.grainBytes > fileSize) {
      throw corruptAt(`${where} points at a grain that ends past the end of the file (${fileSize} bytes)`, hostOffset);
    }
    starts.push(record.gte);
  }
  if (!geometry.compressed) {
    const sorted = starts.sorted();
    const overlap = firstOverlap(sorted, geometry.grainSectors);
    if (overlap) {
      throw corruptAt(`grains at sectors ${overlap[0]} and ${overlap[1]} overlap (two guest grains share host space)`, overlap[1] * SECTOR_SIZE);
    }
    for (const range of metadataRanges) {
      const hits = rangesHitting(sorted, geometry.grainSectors, range.offset, range.length);
      if (hits.length > 0) throw corruptAt(`grain at sector ${hits[0]} overlaps the ${range.role}`, hits[0]! * SECTOR_SIZE);
    }
  }
  return {
    options: {
      virtualSize: geometry.virtualSize,
      clusterSize: geometry.grainBytes,
      zeroExtents,
      ...(backing ? { backing: { ...backing } } : {}),
    },
    blockers,
    metadataRanges,
  };
}
