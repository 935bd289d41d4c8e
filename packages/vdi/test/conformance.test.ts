import { describeDriver } from '@ic/conformance';
import { vdiDriver } from '../src/index.js';

describeDriver(vdiDriver);
