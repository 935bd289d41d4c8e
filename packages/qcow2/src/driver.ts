import { DRIVER_API_VERSION, type BlockIO, type CreateSpec, type Driver, type Image, type OpenOptions } from '@ic/core/sdk';
import { createImage, QCOW2_OPTIONS } from './create.js';
import { FORMAT } from './errors.js';
import { HeaderField, QCOW2_MAGIC } from './header.js';
import { Qcow2Image } from './image.js';
import { qcow2InPlace } from './target.js';

export const QCOW2_DRIVER_VERSION = '0.1.0';

/** 100 for the qcow2 magic with version 2 or 3; 50 for the magic with another version (open explains why not). */
export function probeQcow2(head: Uint8Array, _fileSize: number): number {
  if (head.length < 8) return 0;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (view.getUint32(HeaderField.magic) !== QCOW2_MAGIC) return 0;
  const version = view.getUint32(HeaderField.version);
  return version === 2 || version === 3 ? 100 : 50;
}

export const qcow2Driver: Driver = {
  name: FORMAT,
  description: 'QEMU copy-on-write image, versions 2 (compat 0.10) and 3 (compat 1.1)',
  version: QCOW2_DRIVER_VERSION,
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
  options: QCOW2_OPTIONS,
  probe: probeQcow2,
  open(io: BlockIO, options?: OpenOptions): Promise<Image> {
    return Qcow2Image.open(io, options);
  },
  create(io: BlockIO, spec: CreateSpec): Promise<void> {
    return createImage(io, spec);
  },
  inPlace: qcow2InPlace,
};
