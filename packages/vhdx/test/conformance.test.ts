import { describeDriver } from '@ic/conformance';
import { vhdxDriver } from '../src/index.js';

describeDriver(vhdxDriver);
