import { describeDriver } from '@ic/conformance';
import { vdiDriver } from '../src/index.js';

// The shape round trips with the other bundled drivers run in tooling/e2e/test/matrix-*.test.ts (every pair, every
// size both support); here, the rest of the kit.
describeDriver(vdiDriver, { matrix: false });
