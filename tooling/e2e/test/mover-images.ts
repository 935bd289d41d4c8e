/** Fragmented images made by qemu-io for the mover's tests (defrag, compact): writes in reverse and random guest order. */
import { qemuCreate, qemuIo } from '@ic/test-utils';

export interface MoverImage {
  label: string;
  format: string;
  /** qemu-img create -o. */
  o?: string;
  size: string;
  clusterSize: number;
  /** Guest clusters written, in the order qemu-io writes them. */
  order: number[];
  /** qemu-io commands run after the data (zeros over data, say). */
  after?: string[];
}

/** A deterministic shuffle (an LCG), so a failing case can be rerun. */
export function shuffled(count: number, seed: number): number[] {
  const out = Array.from({ length: count }, (_, i) => i);
  let state = seed >>> 0;
  for (let i = count - 1; i > 0; i--) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    const j = state % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

export const reverse = (count: number): number[] => Array.from({ length: count }, (_, i) => count - 1 - i);

/** Writes each guest cluster of `image.order` with its own pattern (spread over the disk by `stride` clusters). */
export function makeFragmented(file: string, image: MoverImage, stride = 1): void {
  qemuCreate(file, image.format, image.size, image.o ? { o: image.o } : {});
  const commands = image.order.map((cluster) => `write -P ${(cluster % 250) + 1} ${cluster * stride * image.clusterSize} ${image.clusterSize}`);
  for (let i = 0; i < commands.length; i += 200) qemuIo(file, image.format, commands.slice(i, i + 200));
  if (image.after) qemuIo(file, image.format, image.after);
}
