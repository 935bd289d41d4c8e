import { DRIVER_API_VERSION, IcError, type BlockIO, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, PARALLELS_OPTIONS } from './create.js';
import { FORMAT_EXTENSION_MAGIC, FORMAT, HEADER_LENGTH, looksLikeParallels, parseHeader, SECTOR_SIZE, validateHeader } from './header.js';
import { ParallelsImage } from './image.js';
import { parallelsInPlace } from './target.js';

/** The package version, reported by `ic formats`. */
export const PARALLELS_DRIVER_VERSION = '0.1.0';

/** Opens a Parallels image read-only: the header is parsed and validated, nothing is written. */
export async function openParallels(io: BlockIO, options: OpenOptions = {}): Promise<ParallelsImage> {
  const fileSize = await io.size();
  const head = await io.read(0, Math.min(HEADER_LENGTH, fileSize));
  const header = parseHeader(head);
  const geometry = validateHeader(header, fileSize);
  if (header.extOff !== 0) {
    // qemu parses the extension on read-only opens and refuses a bad one; ic checks where it is and its magic.
    const offset = header.extOff * SECTOR_SIZE;
    if (offset + geometry.clusterSize > fileSize || offset < geometry.batEnd) {
      throw new IcError('CORRUPT', `${FORMAT}: the format extension at ${offset} (ext_off, header offset 56) does not lie between the BAT and the end of the file`, { format: FORMAT, offset: 56 });
    }
    const magic = new DataView((await io.read(offset, 8)).buffer).getBigUint64(0, true);
    if (magic !== FORMAT_EXTENSION_MAGIC) {
      throw new IcError('CORRUPT', `${FORMAT}: the format extension at ${offset} has magic 0x${magic.toString(16)}, not 0x${FORMAT_EXTENSION_MAGIC.toString(16)}`, { format: FORMAT, offset });
    }
  }
  return new ParallelsImage(io, header, geometry, options);
}

export const parallelsDriver: Driver = {
  name: FORMAT,
  description: 'Parallels / Virtuozzo disk image (ploop)',
  version: PARALLELS_DRIVER_VERSION,
  apiVersion: DRIVER_API_VERSION,
  capabilities: {
    read: true,
    create: true,
    backing: false,
    zeroExtents: false,
    check: true,
    repair: true,
    inPlaceSource: true,
    inPlaceTarget: true,
  },
  options: PARALLELS_OPTIONS,
  probe(head: Uint8Array): number {
    return looksLikeParallels(head) ? 100 : 0;
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openParallels(io, options),
  create: createImage,
  inPlace: parallelsInPlace,
};
