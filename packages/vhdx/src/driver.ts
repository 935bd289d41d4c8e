import { DRIVER_API_VERSION, type BlockIO, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, VHDX_OPTIONS } from './create.js';
import { FORMAT, hasVhdxSignature } from './header.js';
import { openVhdx } from './image.js';

/** The package version, reported by `ic formats`. */
export const VHDX_DRIVER_VERSION = '0.1.0';

/**
 * The VHDX driver. Its in-place target (vhdxInPlace in target.ts) is built and tested, but not offered here:
 * the engine commits at most 64 KiB of header and a VHDX header section is 320 KiB. Once the engine commits
 * larger heads, `inPlace: vhdxInPlace` and `inPlaceTarget: true` switch it on.
 */
export const vhdxDriver: Driver = {
  name: FORMAT,
  description: 'Hyper-V virtual hard disk v2 (VHDX)',
  version: VHDX_DRIVER_VERSION,
  apiVersion: DRIVER_API_VERSION,
  capabilities: {
    read: true,
    create: true,
    // Differencing images are read as a backing reference, but ic cannot create them.
    backing: false,
    zeroExtents: true,
    check: true,
    inPlaceSource: true,
    inPlaceTarget: false,
  },
  options: VHDX_OPTIONS,
  probe(head: Uint8Array): number {
    return hasVhdxSignature(head) ? 100 : 0;
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openVhdx(io, options),
  create: createImage,
};
