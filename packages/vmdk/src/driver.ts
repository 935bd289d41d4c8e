import type { BlockIO, CreateSpec, Driver, Image, OpenOptions } from '@ic/core/sdk';
import { DRIVER_API_VERSION } from '@ic/core/sdk';
import { createVmdk } from './create.js';
import { descriptorText, findQuotedValue, looksLikeDescriptorStart, MAX_DESCRIPTOR_FILE } from './descriptor.js';
import { openDescriptorImage } from './descriptor-image.js';
import { FORMAT, vmdkError } from './errors.js';
import { COWD_MAGIC_BYTES, HEADER_FIELDS, hasMagic, MAX_VERSION, SECTOR_SIZE } from './header.js';
import { openSparse } from './image.js';
import { VMDK_OPTIONS } from './options.js';
import { vmdkInPlaceTarget } from './target.js';

/** Score for a text descriptor: below a magic number, above raw. */
export const DESCRIPTOR_PROBE_SCORE = 60;

/** A descriptor the probe accepts: qemu's "version=N first" rule, text only, and a createType line. */
function probeDescriptor(head: Uint8Array, fileSize: number): number {
  if (fileSize > MAX_DESCRIPTOR_FILE || !looksLikeDescriptorStart(head)) return 0;
  const nul = head.indexOf(0);
  const textBytes = nul < 0 ? head : head.subarray(0, nul);
  for (const byte of textBytes) {
    // Printable ASCII, tab, CR, LF, or UTF-8 bytes: anything else is not a descriptor.
    if (byte < 0x20 && byte !== 0x09 && byte !== 0x0a && byte !== 0x0d) return 0;
    if (byte === 0x7f) return 0;
  }
  return typeof findQuotedValue(descriptorText(textBytes), 'createType') === 'string' ? DESCRIPTOR_PROBE_SCORE : 0;
}

export const vmdkDriver: Driver = {
  name: FORMAT,
  description: 'VMware VMDK: monolithicSparse (read, create, in-place source and target), streamOptimized (read), descriptor files (info; map, read and check with OpenOptions.openFile)',
  version: '0.1.0',
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
  options: VMDK_OPTIONS,

  probe(head: Uint8Array, fileSize: number): number {
    try {
      if (hasMagic(head)) {
        if (head.length < 8) return 0;
        const version = new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(HEADER_FIELDS.version, true);
        return version <= MAX_VERSION ? 100 : 20;
      }
      if (hasMagic(head, COWD_MAGIC_BYTES)) return 100;
      return probeDescriptor(head, fileSize);
    } catch {
      return 0;
    }
  },

  async open(io: BlockIO, options: OpenOptions = {}): Promise<Image> {
    const fileSize = await io.size();
    if (fileSize < 4) throw vmdkError('WRONG_FORMAT', `file is too small (${fileSize} bytes) to be a VMDK`);
    const head = await io.read(0, Math.min(fileSize, SECTOR_SIZE));
    if (hasMagic(head)) return openSparse(io, options, fileSize, head.length < SECTOR_SIZE ? await io.read(0, SECTOR_SIZE) : head);
    if (hasMagic(head, COWD_MAGIC_BYTES)) {
      throw vmdkError('UNSUPPORTED', 'VMDK3 "COWD" sparse extents (vmfsSparse / old hosted sparse) are not supported');
    }
    // Not a sparse extent: qemu then treats the file as a text descriptor.
    const probeBytes = await io.read(0, Math.min(fileSize, MAX_DESCRIPTOR_FILE));
    const text = descriptorText(probeBytes);
    if (!looksLikeDescriptorStart(probeBytes) && typeof findQuotedValue(text, 'createType') !== 'string') {
      throw vmdkError('WRONG_FORMAT', 'neither a "KDMV" sparse extent nor a VMDK text descriptor');
    }
    return openDescriptorImage(io, options, fileSize);
  },

  create(io: BlockIO, spec: CreateSpec): Promise<void> {
    return createVmdk(io, spec);
  },

  inPlace: vmdkInPlaceTarget,
};

export default vmdkDriver;
