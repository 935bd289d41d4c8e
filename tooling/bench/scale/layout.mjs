// The bench's own reader of an image's metadata layout: which byte ranges of the file are metadata (header,
// tables, refcounts) and how many data clusters the tables point to. It is deliberately independent of ic
// (ic is what is being measured) and reads only what the physical-limit measurement needs: qcow2 (header,
// L1, L2 tables, refcount table and blocks; snapshots and extensions are not expected and not listed), QED
// (header, L1, L2 tables), VMDK monolithicSparse (header, descriptor, grain directory and its redundant
// copy, grain tables of both) and raw (no metadata at all).
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

const TWO32 = 2 ** 32;

function readAt(fd, offset, length) {
  const buffer = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buffer, done, length - done, offset + done);
    if (n === 0) break; // past EOF reads as zeros, as qemu does
    done += n;
  }
  return buffer;
}

export function probeFormat(head) {
  if (head.length >= 4 && head.readUInt32BE(0) === 0x514649fb) return 'qcow2';
  if (head.length >= 4 && head.readUInt32LE(0) === 0x00444551) return 'qed';
  if (head.length >= 4 && head.readUInt32LE(0) === 0x564d444b) return 'vmdk';
  return 'raw';
}

/** Sorts and merges adjacent or overlapping [offset, length] ranges. */
export function coalesce(ranges) {
  const sorted = [...ranges].sort((a, b) => a[0] - b[0]);
  const out = [];
  for (const [offset, length] of sorted) {
    const last = out[out.length - 1];
    if (last && offset <= last[0] + last[1]) last[1] = Math.max(last[1], offset + length - last[0]);
    else out.push([offset, length]);
  }
  return out;
}

function qcow2Layout(fd) {
  const h = readAt(fd, 0, 112);
  const clusterBits = h.readUInt32BE(20);
  const cluster = 2 ** clusterBits;
  const virtualSize = Number(h.readBigUInt64BE(24));
  const l1Size = h.readUInt32BE(36);
  const l1Offset = Number(h.readBigUInt64BE(40));
  const refTableOffset = Number(h.readBigUInt64BE(48));
  const refTableClusters = h.readUInt32BE(56);
  const ranges = [[0, cluster], [l1Offset, l1Size * 8], [refTableOffset, refTableClusters * cluster]];
  const offsetOf = (b, at) => (b.readUInt32BE(at) & 0x00ffffff) * TWO32 + ((b.readUInt32BE(at + 4) & 0xfffffe00) >>> 0);
  const l1 = readAt(fd, l1Offset, l1Size * 8);
  let dataClusters = 0;
  let dataEnd = 0;
  for (let i = 0; i < l1Size; i++) {
    const l2 = offsetOf(l1, i * 8);
    if (!l2) continue;
    ranges.push([l2, cluster]);
    const table = readAt(fd, l2, cluster);
    for (let j = 0; j < cluster; j += 8) {
      if (table.readUInt32BE(j) & 0x40000000) continue; // compressed: not expected here
      const data = offsetOf(table, j);
      if (data) {
        dataClusters++;
        if (data + cluster > dataEnd) dataEnd = data + cluster;
      }
    }
  }
  const refTable = readAt(fd, refTableOffset, refTableClusters * cluster);
  for (let i = 0; i < refTable.length; i += 8) {
    const block = refTable.readUInt32BE(i) * TWO32 + ((refTable.readUInt32BE(i + 4) & 0xfffffe00) >>> 0);
    if (block) ranges.push([block, cluster]);
  }
  return { format: 'qcow2', clusterSize: cluster, virtualSize, ranges, dataClusters, dataEnd };
}

function qedLayout(fd) {
  const h = readAt(fd, 0, 64);
  const cluster = h.readUInt32LE(4);
  const tableSize = h.readUInt32LE(8);
  const headerSize = h.readUInt32LE(12);
  const l1Offset = Number(h.readBigUInt64LE(40));
  const virtualSize = Number(h.readBigUInt64LE(48));
  const tableBytes = tableSize * cluster;
  const ranges = [[0, headerSize * cluster], [l1Offset, tableBytes]];
  // Which clusters of the file something references, to count leaks independently of qemu-img check.
  const fileClusters = Math.ceil(fstatSync(fd).size / cluster);
  const used = new Uint32Array(Math.ceil(fileClusters / 32) + 1);
  let referenced = 0;
  let duplicates = 0;
  const use = (offset, count) => {
    for (let c = Math.floor(offset / cluster), end = c + count; c < end; c++) {
      if (c >= fileClusters) continue;
      if (used[c >>> 5] & (1 << (c & 31))) duplicates++;
      else referenced++;
      used[c >>> 5] |= 1 << (c & 31);
    }
  };
  use(0, headerSize);
  use(l1Offset, tableSize);
  const l1 = readAt(fd, l1Offset, tableBytes);
  let dataClusters = 0;
  let dataEnd = 0;
  for (let i = 0; i < tableBytes; i += 8) {
    const l2 = Number(l1.readBigUInt64LE(i));
    if (!l2) continue;
    ranges.push([l2, tableBytes]);
    use(l2, tableSize);
    if (l2 + tableBytes > dataEnd) dataEnd = l2 + tableBytes;
    const table = readAt(fd, l2, tableBytes);
    for (let j = 0; j < tableBytes; j += 8) {
      const lo = table.readUInt32LE(j);
      const hi = table.readUInt32LE(j + 4);
      const data = hi * TWO32 + lo;
      if (data > 1) {
        dataClusters++;
        use(data, 1);
        if (data + cluster > dataEnd) dataEnd = data + cluster;
      }
    }
  }
  // qemu 7.2's qed_bytes_to_clusters() divides by cluster_size - 1, so its check counts one leak per 65535
  // clusters of file (64 KiB clusters) even when every cluster is referenced.
  const references = { fileClusters, referenced, duplicates, unreferenced: fileClusters - referenced, qemuCheckSpuriousLeaks: Math.floor(fileClusters / (cluster - 1)) };
  return { format: 'qed', clusterSize: cluster, virtualSize, ranges, dataClusters, dataEnd, references };
}

function vmdkLayout(fd) {
  const h = readAt(fd, 0, 512);
  const capacity = Number(h.readBigUInt64LE(12)); // sectors
  const grain = Number(h.readBigUInt64LE(20)) * 512;
  const descriptorOffset = Number(h.readBigUInt64LE(28)) * 512;
  const descriptorSize = Number(h.readBigUInt64LE(36)) * 512;
  const gtes = h.readUInt32LE(44);
  const rgd = Number(h.readBigUInt64LE(48)) * 512;
  const gd = Number(h.readBigUInt64LE(56)) * 512;
  const grains = Math.ceil((capacity * 512) / grain);
  const gdEntries = Math.ceil(grains / gtes);
  const ranges = [[0, 512], [descriptorOffset, descriptorSize]];
  let dataClusters = 0;
  let dataEnd = 0;
  for (const [dir, primary] of [[rgd, false], [gd, true]]) {
    if (!dir) continue;
    ranges.push([dir, gdEntries * 4]);
    const directory = readAt(fd, dir, gdEntries * 4);
    for (let i = 0; i < gdEntries; i++) {
      const gt = directory.readUInt32LE(i * 4) * 512;
      if (!gt) continue;
      ranges.push([gt, gtes * 4]);
      if (!primary) continue;
      const table = readAt(fd, gt, gtes * 4);
      for (let j = 0; j < gtes; j++) {
        const sector = table.readUInt32LE(j * 4);
        if (sector > 1) {
          dataClusters++;
          if (sector * 512 + grain > dataEnd) dataEnd = sector * 512 + grain;
        }
      }
    }
  }
  return { format: 'vmdk', clusterSize: grain, virtualSize: capacity * 512, ranges, dataClusters, dataEnd };
}

/**
 * The metadata layout of the image at `path`: format, cluster size, virtual size, the coalesced metadata
 * ranges and their byte count, the number of allocated data clusters and the end of the last one.
 */
export function readLayout(path) {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    const format = probeFormat(readAt(fd, 0, 4));
    const layout =
      format === 'qcow2' ? qcow2Layout(fd) : format === 'qed' ? qedLayout(fd) : format === 'vmdk' ? vmdkLayout(fd)
        : { format: 'raw', clusterSize: 0, virtualSize: size, ranges: [], dataClusters: 0, dataEnd: size };
    layout.ranges = coalesce(layout.ranges.filter(([, length]) => length > 0));
    layout.metadataBytes = layout.ranges.reduce((sum, [, length]) => sum + length, 0);
    layout.fileSize = size;
    return layout;
  } finally {
    closeSync(fd);
  }
}
