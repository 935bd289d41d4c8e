import { describeDriver } from '@ic/conformance';
import { qemuSamples } from '@ic/conformance/qemu';
import { vmdkDriver } from '../src/index.js';

const MiB = 1024 * 1024;

// The shape matrix with the other bundled drivers runs in tooling/e2e/test/matrix-*.test.ts; here, qemu's own images.
describeDriver(vmdkDriver, {
  matrix: false,
  samples: qemuSamples(vmdkDriver, [
    { name: 'monolithicSparse, scattered', size: 256 * MiB, writes: ['write -P 0xa1 0 64k', 'write -P 0xa2 1000 3000', 'write -P 0xa3 100M 192k', `write -P 0xa4 ${256 * MiB - 512} 512`] },
    { name: 'zeroed_grain=on, odd size, zeroed', size: 100 * MiB + 512, o: 'zeroed_grain=on', writes: ['write -P 0xb1 4k 12k', 'write -z 4M 128k', `write -P 0xb2 ${100 * MiB} 512`] },
    { name: 'over a VMDK parent', size: 64 * MiB, backing: { writes: ['write -P 0xc1 0 1M'] }, writes: ['write -P 0xc2 64k 64k'] },
  ]),
});
