import { qemuMap } from '@ic/conformance/qemu';

const MiB = 1024 ** 2;

/**
 * The qemu-made sources the "into a new format" oracle tests convert from (the drivers' test/into.test.ts): qcow2
 * v2 and v3 at several cluster sizes, QED, a monolithicSparse VMDK and a sparse raw file, each `qemu-img create`
 * format and -o options.
 */
export const QEMU_SOURCES: readonly { format: string; o?: string }[] = [
  { format: 'qcow2', o: 'compat=1.1' },
  { format: 'qcow2', o: 'compat=0.10' },
  { format: 'qcow2', o: 'cluster_size=4096' },
  { format: 'qcow2', o: 'cluster_size=2M' },
  { format: 'qed' },
  { format: 'vmdk', o: 'subformat=monolithicSparse' },
  { format: 'raw' },
];

/** qemu-io writes into a 1 GiB source: 3 MiB at 0, single blocks, a partial block, the last MiB. */
export const WRITES_BEFORE: readonly string[] = ['write -P 0x11 0 3M', 'write -P 0x22 100M 1M', 'write -P 0x33 512M 64k', 'write -P 0x44 900M 5M', 'write -P 0x55 1023M 1M'];

/** qemu-io writes into the converted image: a fresh area, over old data, into the partly written block at 512 MiB, across the end of data at 3 MiB. */
export const WRITES_AFTER: readonly string[] = ['write -P 0xa1 600M 128k', 'write -P 0xa2 100M 4k', 'write -P 0xa3 513M 4k', `write -P 0xa4 ${3 * MiB - 4096} 8k`];

/**
 * Counts blocks holding data in qemu-img's map of the image as it is now (a raw file's holes map as zero data):
 * the function returned counts the blocks of a given size.
 */
export function qemuDataBlocks(path: string, format: string): (size: number) => number {
  const rows = qemuMap(path, format).filter((row) => row.data && !row.zero);
  return (size) => {
    const blocks = new Set<number>();
    for (const row of rows) for (let block = Math.floor(row.start / size); block * size < row.start + row.length; block++) blocks.add(block);
    return blocks.size;
  };
}
