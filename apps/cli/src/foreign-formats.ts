/**
 * Signatures of well-known image formats that ic may have no driver for. When no installed driver but the
 * any-file one (raw) claims a file, this table lets ic say what the file probably is instead of calling it raw:
 * "an unknown VHDX must not become a qcow2 whose guest disk is the VHDX container" (DESIGN.md §6).
 *
 * This is data, not a branch on a format name: nothing here decides how a format is read or written, and a
 * driver installed for one of these formats claims its files first (then this table is never consulted).
 * Offsets and magics as qemu's probes (block/vdi.c, vpc.c, vhdx.c, parallels.c, crypto/block-luks.c, qcow.c,
 * bochs.c, cloop.c) and Apple's UDIF trailer ("koly", 512 bytes before the end).
 */
export interface ForeignFormat {
  /** The qemu-img format name. */
  name: string;
  /** What users call such a file, with its article ("a VHDX (Hyper-V) image"). */
  what: string;
  /** 'start': `offset` bytes from the start of the file; 'end': `offset` bytes before its end. */
  where: 'start' | 'end';
  offset: number;
  /** The bytes found there (a string is Latin-1: one byte per character). */
  magic: string;
}

export const FOREIGN_FORMATS: readonly ForeignFormat[] = [
  { name: 'vdi', what: 'a VirtualBox VDI image', where: 'start', offset: 0x40, magic: '\x7f\x10\xda\xbe' },
  { name: 'vpc', what: 'a VHD image (Virtual PC; qemu-img calls the format vpc)', where: 'end', offset: 512, magic: 'conectix' },
  { name: 'vpc', what: 'a VHD image (Virtual PC; qemu-img calls the format vpc)', where: 'start', offset: 0, magic: 'conectix' },
  { name: 'vhdx', what: 'a VHDX (Hyper-V) image', where: 'start', offset: 0, magic: 'vhdxfile' },
  { name: 'parallels', what: 'a Parallels image', where: 'start', offset: 0, magic: 'WithoutFreeSpace' },
  { name: 'parallels', what: 'a Parallels image', where: 'start', offset: 0, magic: 'WithouFreSpacExt' },
  { name: 'luks', what: 'a LUKS (encrypted) volume', where: 'start', offset: 0, magic: 'LUKS\xba\xbe' },
  { name: 'qcow', what: 'a qcow (version 1) image', where: 'start', offset: 0, magic: 'QFI\xfb\x00\x00\x00\x01' },
  { name: 'bochs', what: 'a Bochs image', where: 'start', offset: 0, magic: 'Bochs Virtual HD Image' },
  { name: 'cloop', what: 'a cloop (compressed loop) image', where: 'start', offset: 0, magic: '#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0' },
  { name: 'dmg', what: 'an Apple disk image (dmg)', where: 'end', offset: 512, magic: 'koly' },
];

/** How many bytes at the end of a file the table looks at. */
export const FOREIGN_TAIL_LENGTH = Math.max(...FOREIGN_FORMATS.filter((f) => f.where === 'end').map((f) => f.offset));

function matches(bytes: Uint8Array, at: number, magic: string): boolean {
  if (at < 0 || at + magic.length > bytes.length) return false;
  for (let i = 0; i < magic.length; i++) if (bytes[at + i] !== magic.charCodeAt(i)) return false;
  return true;
}

/**
 * The first well-known format whose signature the file carries. `head` is the start of the file, `tail` its
 * last FOREIGN_TAIL_LENGTH bytes (or fewer, for a shorter file), `size` its length.
 */
export function recogniseForeign(head: Uint8Array, tail: Uint8Array, size: number): ForeignFormat | undefined {
  return FOREIGN_FORMATS.find((format) =>
    format.where === 'start' ? matches(head, format.offset, format.magic) : size >= format.offset && matches(tail, tail.length - format.offset, format.magic),
  );
}
