import { describeDriver } from '@ic/conformance';
import { parallelsDriver } from '../src/index.js';

// 4 KiB, 64 KiB and qemu's default 1 MiB. (With 4 KiB clusters the kit's empty 8 MiB image has a BAT of three
// clusters; qemu 7.2's check counts everything past the first cluster of an image without data as leaked, so the
// target asks for one data cluster, TargetLayout.needsDataCluster, and the image gets a cluster of zeros.)
// The shape round trips with the other bundled drivers run in tooling/e2e/test/matrix-*.test.ts (every pair, every
// size both support); here, the rest of the kit.
describeDriver(parallelsDriver, { clusterSizes: [4096, 65536, 1024 * 1024], matrix: false });
