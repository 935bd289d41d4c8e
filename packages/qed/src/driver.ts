import { DRIVER_API_VERSION, IcError, type BlockIO, type Driver, type Image, type OpenOptions, type BackingReference } from '@ic/core/sdk';
import { createImage, QED_OPTIONS } from './create.js';
import {
  decodeBackingName,
  FEATURE_BACKING_FILE,
  FEATURE_BACKING_FORMAT_NO_PROBE,
  FORMAT,
  hasQedMagic,
  HEADER_LENGTH,
  parseHeader,
  validateHeader,
} from './header.js';
import { QedImage } from './image.js';
import { qedInPlace } from './target.js';

/** The package version, reported by `ic formats`. */
export const QED_DRIVER_VERSION = '0.1.0';

/** Opens a QED image read-only: the header is parsed and validated, nothing is written. */
export async function openQed(io: BlockIO, options: OpenOptions = {}): Promise<QedImage> {
  const fileSize = await io.size();
  const head = await io.read(0, Math.min(HEADER_LENGTH, fileSize));
  if (!hasQedMagic(head)) throw new IcError('WRONG_FORMAT', `${FORMAT}: ${io.name} is not a QED image (no "QED\\0" magic)`, { format: FORMAT, path: io.name });
  const header = parseHeader(head);
  const geometry = validateHeader(header, fileSize);
  let backing: BackingReference | undefined;
  if ((header.features & FEATURE_BACKING_FILE) !== 0n && header.backingFilenameSize > 0) {
    // Bounds were checked by validateHeader: inside the header region and below 4096 bytes.
    const name = decodeBackingName(await io.read(header.backingFilenameOffset, header.backingFilenameSize));
    if (name.length > 0) {
      backing = { name };
      if ((header.features & FEATURE_BACKING_FORMAT_NO_PROBE) !== 0n) backing.format = 'raw';
    }
  }
  if (backing && options.untrusted) {
    throw new IcError('EXTERNAL_REF', `${FORMAT}: ${io.name} names a backing file ("${backing.name}"), refused for an untrusted image`, { format: FORMAT, path: io.name });
  }
  return new QedImage(io, header, geometry, backing, options);
}

export const qedDriver: Driver = {
  name: FORMAT,
  description: 'QEMU Enhanced Disk (QED)',
  version: QED_DRIVER_VERSION,
  apiVersion: DRIVER_API_VERSION,
  capabilities: {
    read: true,
    create: true,
    backing: true,
    zeroExtents: true,
    check: true,
    inPlaceSource: true,
    inPlaceTarget: true,
  },
  options: QED_OPTIONS,
  probe(head: Uint8Array): number {
    // The magic is all QED has to offer: there is no version field.
    return hasQedMagic(head) ? 100 : 0;
  },
  open: (io: BlockIO, options?: OpenOptions): Promise<Image> => openQed(io, options),
  create: createImage,
  inPlace: qedInPlace,
};
