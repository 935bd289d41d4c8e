import { DRIVER_API_VERSION, type BlockIO, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, VHDX_OPTIONS } from './create.js';
import { FORMAT, hasVhdxSignature } from './header.js';
import { openVhdx } from './image.js';
import { vhdxInPlace } from './target.js';

/** The package version, reported by `ic formats`. */
export const VHDX_DRIVER_VERSION = '0.1.0';

/** The VHDX driver: read, check, create, in-place source and target (dynamic images, see target.ts). */
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
    // A "zero" block differs from "not present" only in a differencing image (which ic neither creates nor
    // converts to): without a parent both read and map as unallocated, so ic records no zero extents.
    zeroExtents: false,
    check: true,
    repair: true,
    inPlaceSource: true,
    inPlaceTarget: true,
  },
  options: VHDX_OPTIONS,
  probe(head: Uint8Array): number {
    return hasVhdxSignature(head) ? 100 : 0;
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openVhdx(io, options),
  create: createImage,
  inPlace: vhdxInPlace,
};
