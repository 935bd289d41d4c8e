import { extentBatches, mergeQemuMapEntries, toQemuMapEntry, type Image, type QemuMapEntry } from '@ic/core/sdk';

/**
 * The rows of `qemu-img map --output=json` for one image: its map(), converted with toQemuMapEntry and merged
 * as qemu-img merges them, batch by batch (memory grows with the merged rows, not with the extents).
 *
 * One layer only: the rows equal qemu-img's for an image without a backing file. qemu-img describes the
 * unallocated ranges of an image with a backing file by the layers below (depth 1, 2, ...); here they stay
 * "not present" at `depth`. Format the result with mapJson() (JSON) or mapHuman() (the table).
 */
export async function qemuMapEntries(image: Pick<Image, 'map'>, depth = 0): Promise<QemuMapEntry[]> {
  const merged: QemuMapEntry[] = [];
  for await (const batch of extentBatches(image.map())) {
    const rows = batch.map((extent) => toQemuMapEntry(extent, depth));
    const last = merged.pop();
    merged.push(...mergeQemuMapEntries(last ? [last, ...rows] : rows));
  }
  return merged;
}
