import type { ConversionBlocker, ConversionSource, OpenOptions } from '@ic/core/sdk';
import { FORMAT } from './errors.js';
import { sparseMetadataRanges } from './host-ranges.js';
import type { SparseVmdkImage } from './image.js';

export const COMPRESSED_BLOCKER: ConversionBlocker = {
  feature: 'compressed grains',
  reason: 'streamOptimized VMDK stores deflate-compressed grains; convert it with qemu-img convert',
};

/** VMDK's own open options. */
export interface VmdkOpenOptions extends OpenOptions {
  /**
   * Convert a child whose parentCID differs from its opened parent's CID anyway: the caller has decided that the
   * parent's change is harmless. Without it such a child is refused (qemu refuses every read through that parent,
   * and a converted child, or a VMDK child with a refreshed parentCID, would read the changed parent as if it
   * were the original). A VMDK target then records the parent's current CID, which is the caller's decision.
   */
  acceptParentCidMismatch?: boolean;
}

/**
 * The child's parentCID against the CID of its parent, when the caller opened the parent (OpenOptions.backing) and
 * it is a VMDK: a blocker on a mismatch, unless the caller accepted it.
 */
export function parentCidBlocker(parentCid: number, options: VmdkOpenOptions): ConversionBlocker | undefined {
  const parent = options.backing;
  if (!parent || parent.format !== FORMAT || options.acceptParentCidMismatch) return undefined;
  const cid = parent.info().formatSpecific?.data.cid;
  if (typeof cid !== 'number' || cid === parentCid) return undefined;
  return {
    feature: 'parentCID mismatch',
    reason:
      `the child records parentCID ${parentCid.toString(16)} but its parent's CID is ${cid.toString(16)}: the parent changed after the child was made, ` +
      'so qemu refuses to read through it and converting would silently pair the child with different data; ' +
      `if the change is known to be harmless, set parentCID=${cid.toString(16)} in the child's descriptor first (the library: VmdkOpenOptions.acceptParentCidMismatch)`,
  };
}

/**
 * Describes a sparse extent for the in-place engine: its geometry, blockers and the host ranges of its own
 * structures. The conversion walks the grains strictly (a data grain inside the header and descriptor window,
 * or ending past the end of the file, is refused as CORRUPT); overlaps between grains and tables are refused by
 * the engine, which sees every host range.
 */
export async function sparseConversionSource(image: SparseVmdkImage): Promise<ConversionSource> {
  const { geometry, backing, descriptor, options } = image.state;
  const blockers: ConversionBlocker[] = [];
  if (geometry.compressed) blockers.push(COMPRESSED_BLOCKER);
  const cidBlocker = backing ? parentCidBlocker(descriptor.parentCid, options) : undefined;
  if (cidBlocker) blockers.push(cidBlocker);
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
