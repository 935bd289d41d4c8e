import { DRIVER_API_VERSION, IcError, type BlockIO, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, VDI_OPTIONS } from './create.js';
import { FORMAT, hasVdiSignature, HEADER_LENGTH, parseHeader, validateHeader } from './header.js';
import { VdiImage } from './image.js';
import { vdiInPlace } from './target.js';

/** The package version, reported by `ic formats`. */
export const VDI_DRIVER_VERSION = '0.1.0';

/** Opens a VDI image read-only: the header is parsed and validated as qemu does, nothing is written. */
export async function openVdi(io: BlockIO, _options: OpenOptions = {}): Promise<VdiImage> {
  const fileSize = await io.size();
  const head = await io.read(0, Math.min(HEADER_LENGTH, fileSize));
  if (!hasVdiSignature(head)) {
    throw new IcError('WRONG_FORMAT', `${FORMAT}: ${io.name} is not a VDI image (no signature 0xbeda107f at offset 0x40)`, { format: FORMAT, path: io.name });
  }
  const header = parseHeader(head);
  // VDI names no other file that qemu would open (differencing images are refused by validateHeader), so
  // untrusted mode has nothing more to refuse.
  return new VdiImage(io, header, validateHeader(header, fileSize));
}

export const vdiDriver: Driver = {
  name: FORMAT,
  description: 'VirtualBox Virtual Disk Image (VDI), dynamic and static',
  version: VDI_DRIVER_VERSION,
  apiVersion: DRIVER_API_VERSION,
  capabilities: {
    read: true,
    create: true,
    check: true,
    repair: true,
    inPlaceSource: true,
    inPlaceTarget: true,
  },
  options: VDI_OPTIONS,
  probe(head: Uint8Array): number {
    // qemu's vdi_probe: a whole header and the signature.
    return hasVdiSignature(head) ? 100 : 0;
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openVdi(io, options),
  create: createImage,
  inPlace: vdiInPlace,
};
