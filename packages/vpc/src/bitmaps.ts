/**
 * The sector bitmap in front of every allocated block: one bit per 512-byte sector of the block, rounded up to
 * a sector. A set bit means "this sector holds data" (clear bits read from the parent of a differencing disk, or
 * as zeros). qemu ignores bitmaps when reading and fills them with ones when it allocates a block, so every
 * sector of an allocated block is data; ic writes them the same way.
 *
 * The size is qemu's formula, ((block_size / 4096) + 511) & ~511: the specification's bit count rounded to a
 * sector for block sizes of 4 KiB and more, and 0 below that (qemu then reads data right at the BAT offset).
 */
export function bitmapSize(blockSize: number): number {
  return Math.floor((Math.floor(blockSize / 4096) + 511) / 512) * 512;
}

/** The bitmap qemu writes for a new block: all sectors present. */
export function fullBitmap(blockSize: number): Uint8Array {
  return new Uint8Array(bitmapSize(blockSize)).fill(0xff);
}
