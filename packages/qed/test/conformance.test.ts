import { describeDriver } from '@ic/conformance';
import { qemuSamples } from '@ic/conformance/qemu';
import { qedDriver } from '../src/index.js';

const MiB = 1024 * 1024;

// The shape matrix with the other bundled drivers runs in tooling/e2e/test/matrix-*.test.ts; here, qemu's own images.
describeDriver(qedDriver, {
  matrix: false,
  samples: qemuSamples(qedDriver, [
    { name: '64 KiB clusters, scattered and zeroed', size: 256 * MiB, writes: ['write -P 0xa1 0 64k', 'write -P 0xa2 1000 3000', 'write -P 0xa3 100M 192k', 'write -z 8M 128k', `write -P 0xa4 ${256 * MiB - 512} 512`] },
    { name: '4 KiB clusters', size: 64 * MiB, o: 'cluster_size=4k', writes: ['write -P 0xb1 4k 12k', 'write -P 0xb2 33M 4k'] },
    { name: 'over a raw backing file', size: 64 * MiB, backing: { flat: true, writes: ['write -P 0xc1 0 2M'] }, writes: ['write -P 0xc2 64k 64k', 'write -z 1M 64k'] },
  ]),
});
