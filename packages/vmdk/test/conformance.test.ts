import { describeDriver } from '@ic/conformance';
import { vmdkDriver } from '../src/index.js';

describeDriver(vmdkDriver);
