import type { BlockIO } from '../sdk/index.js';

/** Zeroes what is left of the old format's header in [from, to), writing only up to its last non-zero byte. */
export async function zeroStaleHeaderBytes(io: BlockIO, from: number, to: number): Promise<void> {
  if (to <= from) return;
  const stale = await io.read(from, to - from);
  let end = stale.length;
  while (end > 0 && stale[end - 1] === 0) end--;
  if (end > 0) await io.write(from, new Uint8Array(end));
}

