import { describeDriver } from '@ic/conformance';
import { qedDriver } from '../src/index.js';

describeDriver(qedDriver);
