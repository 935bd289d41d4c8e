// The physical limit of a conversion on this machine, measured in the same run: read the source's metadata
// ranges from a cold page cache, write the target's metadata byte count to a scratch file on the same file
// system in ic's average write size, with as many fdatasync calls as ic made. Plain Node fs, synchronous,
// in this process (so no process start-up is included; `node -e 0` is reported separately).
import { closeSync, fdatasyncSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { coldCache } from './measure.mjs';

const MiB = 1024 * 1024;
const READ_PIECE = 8 * MiB;

/**
 * ranges: [offset, length] metadata ranges of `source` (coalesced); writeBytes, chunk, flushes: what to write.
 * Returns { ms, readMs, writeMs, readBytes, reads, writeBytes, writes, flushes, chunk }.
 */
export function measureLimit({ source, ranges, writeBytes, chunk, flushes, scratch }) {
  coldCache(source);
  const buffer = Buffer.alloc(Math.max(READ_PIECE, chunk));
  let reads = 0;
  let readBytes = 0;
  const t0 = process.hrtime.bigint();
  const fd = openSync(source, 'r');
  try {
    for (const [offset, length] of ranges) {
      for (let at = 0; at < length; ) {
        const n = readSync(fd, buffer, 0, Math.min(READ_PIECE, length - at), offset + at);
        reads++;
        if (n === 0) break;
        at += n;
        readBytes += n;
      }
    }
  } finally {
    closeSync(fd);
  }
  const t1 = process.hrtime.bigint();
  rmSync(scratch, { force: true });
  buffer.fill(0xa5);
  const writes = writeBytes > 0 ? Math.ceil(writeBytes / chunk) : 0;
  // fdatasync after evenly spaced writes; the last one after the last write
  const flushAfter = new Set();
  for (let i = 1; i <= flushes; i++) flushAfter.add(writes > 0 ? Math.max(1, Math.round((i * writes) / flushes)) : 0);
  let flushed = 0;
  const out = openSync(scratch, 'w');
  try {
    if (writes === 0) for (; flushed < flushes; flushed++) fdatasyncSync(out);
    for (let i = 1, done = 0; i <= writes; i++) {
      const length = Math.min(chunk, writeBytes - done);
      writeSync(out, buffer, 0, length, done);
      done += length;
      if (flushAfter.has(i)) {
        fdatasyncSync(out);
        flushed++;
      }
    }
    for (; flushed < flushes; flushed++) fdatasyncSync(out); // rounding collided two flush points
  } finally {
    closeSync(out);
  }
  const t2 = process.hrtime.bigint();
  rmSync(scratch, { force: true });
  const readMs = Number(t1 - t0) / 1e6;
  const writeMs = Number(t2 - t1) / 1e6;
  return { ms: readMs + writeMs, readMs, writeMs, readBytes, reads, writeBytes, writes, flushes: flushed, chunk };
}

/**
 * What ic would have to write when there is no report (ic failed): the target's tables from the geometry.
 * qcow2: L1, L2 (8 B per cluster), refcount blocks (2 B per cluster of the file) and table; QED: L1 and L2
 * tables (8 B per cluster, 4-cluster tables); VMDK: two grain directories and two sets of grain tables (4 B
 * per grain each). Approximate on purpose: it only sizes the limit of a failed row, marked "~".
 */
export function estimateTargetMetadata(target, { clusters, clusterSize, fileSize }) {
  if (target === 'qcow2') {
    const l2 = Math.ceil((clusters * 8) / clusterSize) * clusterSize;
    const refblocks = Math.ceil(((fileSize / clusterSize + clusters / 4096) * 2) / clusterSize) * clusterSize;
    return l2 + refblocks + Math.ceil((l2 / clusterSize) * 8) + Math.ceil(((refblocks / clusterSize) * 8) / clusterSize) * clusterSize;
  }
  if (target === 'qed') {
    const table = 4 * clusterSize;
    return Math.ceil((clusters * 8) / table) * table + table;
  }
  if (target === 'vmdk') return 2 * (clusters * 4 + Math.ceil(clusters / 512) * 4);
  return 0;
}
