import { describeDriver } from '@ic/conformance';
import { qemuSamples } from '@ic/conformance/qemu';
import { rawDriver } from '../src/index.js';

const MiB = 1024 * 1024;

// raw is a source only: the kit cannot build its images, so qemu's raw files are converted to each bundled target.
describeDriver(rawDriver, {
  samples: qemuSamples(rawDriver, [
    { name: 'sparse, scattered writes', size: 64 * MiB, writes: ['write -P 0xa1 0 64k', 'write -P 0xa2 1000 3000', 'write -P 0xa3 10M 1M', `write -P 0xa4 ${64 * MiB - 4096} 4096`] },
    { name: 'written and then zeroed', size: 16 * MiB, writes: ['write -P 0xb1 0 4M', 'write -z 1M 512k'] },
  ]),
});
