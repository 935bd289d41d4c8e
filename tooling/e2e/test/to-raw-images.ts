/** qemu-made images for the conversion to raw in place: data out of guest order, zeros, a partial last cluster. */
import { reverse, shuffled, type MoverImage } from './mover-images.js';

export interface ToRawImage extends MoverImage {
  /** Spread of the written clusters over the disk (clusters). */
  stride: number;
}

/** Small images: the CLI test converts every one; the crash campaigns take the first ones of each format. */
export const toRawImages: ToRawImage[] = [
  {
    label: 'qed 64k, reverse order, zeros, partial last cluster',
    format: 'qed',
    size: '4136K', // 64 clusters and 40 KiB
    clusterSize: 65536,
    order: reverse(10),
    stride: 3,
    after: ['write -z 192k 64k', 'write -P 0 384k 64k', 'write -P 0x77 4112k 24k'],
  },
  {
    label: 'vmdk, random order, zeros, partial last grain',
    format: 'vmdk',
    size: '4136K',
    clusterSize: 65536,
    order: shuffled(10, 4),
    stride: 3,
    after: ['write -z 0 64k', 'write -P 0x66 4100k 36k'],
  },
  {
    // 4 KiB clusters and 4-cluster tables: an L2 table every 8 MiB of guest, tables among the data.
    label: 'qed 4k clusters, random order over 4 L2 tables',
    format: 'qed',
    o: 'cluster_size=4k,table_size=4',
    size: '32M',
    clusterSize: 4096,
    order: shuffled(60, 9),
    stride: 130,
  },
  {
    // 1 GiB: the grain directories and tables take several grains at the start, which guest data lies under.
    label: 'vmdk 1 GiB, data under its grain tables, random order',
    format: 'vmdk',
    size: '1G',
    clusterSize: 65536,
    order: shuffled(24, 5),
    stride: 1,
    after: ['write -P 0x42 700M 128k'],
  },
  // qcow2: the refcounts follow every move (v3: write -z over data leaves zero-allocated clusters).
  {
    label: 'qcow2 v3 64k, reverse order, zeros, partial last cluster',
    format: 'qcow2',
    o: 'compat=1.1',
    size: '4136K',
    clusterSize: 65536,
    order: reverse(10),
    stride: 3,
    after: ['write -z 192k 64k', 'write -P 0 384k 64k', 'write -P 0x77 4112k 24k'],
  },
  {
    label: 'qcow2 v2 64k, random order, zeros, partial last cluster',
    format: 'qcow2',
    o: 'compat=0.10',
    size: '4136K',
    clusterSize: 65536,
    order: shuffled(10, 13),
    stride: 3,
    after: ['write -z 0 64k', 'write -P 0x66 4100k 36k'],
  },
  {
    // 4 KiB clusters: an L2 table every 2 MiB of guest, tables among the data. One refcount block covers 8 MiB of
    // the file: the disk stays below that (a larger one is refused, see the refusal test).
    label: 'qcow2 v3 4k clusters, random order over 3 L2 tables, zeros',
    format: 'qcow2',
    o: 'compat=1.1,cluster_size=4k',
    size: '6M',
    clusterSize: 4096,
    order: shuffled(40, 14),
    stride: 36,
    after: ['write -z 36k 4k'],
  },
];
