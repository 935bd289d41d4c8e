import { describeDriver } from '@ic/conformance';
import { qemuSamples } from '@ic/conformance/qemu';
import { qcow2Driver } from '../src/index.js';

const MiB = 1024 * 1024;

// The shape matrix with the other bundled drivers runs in tooling/e2e/test/matrix-*.test.ts; here, qemu's own images.
describeDriver(qcow2Driver, {
  clusterSizes: [512, 4096, 65536, 2 * MiB],
  matrix: false,
  samples: qemuSamples(qcow2Driver, [
    { name: 'v3, 64 KiB clusters, scattered and zeroed', size: 256 * MiB, writes: ['write -P 0xa1 0 64k', 'write -P 0xa2 1000 3000', 'write -P 0xa3 100M 192k', 'write -z 8M 128k', `write -P 0xa4 ${256 * MiB - 512} 512`] },
    { name: 'v2 (compat 0.10), 4 KiB clusters', size: 64 * MiB, o: 'compat=0.10,cluster_size=4k', writes: ['write -P 0xb1 4k 12k', 'write -P 0xb2 33M 4k'] },
    { name: 'over a qcow2 backing file, zero clusters hiding it', size: 64 * MiB, backing: { writes: ['write -P 0xc1 0 2M'] }, writes: ['write -P 0xc2 64k 64k', 'write -z 1M 128k'] },
  ]),
});
