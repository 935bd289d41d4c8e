import { describeDriver } from '@ic/conformance';
import { qcow2Driver } from '../src/index.js';

describeDriver(qcow2Driver, { clusterSizes: [512, 4096, 65536, 2 * 1024 * 1024] });
