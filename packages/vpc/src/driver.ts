import { DRIVER_API_VERSION, type BlockIO, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, VPC_OPTIONS } from './create.js';
import { FOOTER_LENGTH, FORMAT, hasCookie, virtualSizeOf } from './footer.js';
import { fixedFooterIn, readLayout, VpcImage } from './image.js';
import { vpcInPlace } from './target.js';

/** The package version, reported by `ic formats`. */
export const VPC_DRIVER_VERSION = '0.1.0';

/**
 * Probe score of a fixed disk recognised by its footer alone. qemu-img probes such a file as raw (vpc_probe looks
 * only at offset 0); ic names it, with a score below every header magic (100) and above raw (1), and only when the
 * footer is whole: cookie, checksum, type 2, and a disk that fits before it. `-f raw` still treats it as raw.
 */
export const FIXED_FOOTER_SCORE = 50;

/** Opens a VHD image read-only: footer, dynamic header and BAT validated as qemu does; nothing is written. */
export async function openVpc(io: BlockIO, _options: OpenOptions = {}): Promise<VpcImage> {
  const { footer, layout } = await readLayout(io);
  // VHD names another file only in a differencing disk, which readLayout refuses.
  return new VpcImage(io, footer, layout);
}

export const vpcDriver: Driver = {
  name: FORMAT,
  description: 'Virtual Hard Disk (VHD, "vpc"): dynamic and fixed disks',
  version: VPC_DRIVER_VERSION,
  apiVersion: DRIVER_API_VERSION,
  capabilities: {
    read: true,
    create: true,
    inPlaceSource: true,
    inPlaceTarget: true,
  },
  options: VPC_OPTIONS,
  probe(head: Uint8Array, fileSize: number, tail?: Uint8Array): number {
    // qemu's vpc_probe: the cookie at offset 0 (a dynamic or differencing disk).
    if (hasCookie(head)) return 100;
    const footer = tail ? fixedFooterIn(tail, fileSize) : undefined;
    if (!footer) return 0;
    try {
      return virtualSizeOf(footer) <= fileSize - FOOTER_LENGTH ? FIXED_FOOTER_SCORE : 0;
    } catch {
      return 0; // a size qemu refuses
    }
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openVpc(io, options),
  create: createImage,
  inPlace: vpcInPlace,
};

