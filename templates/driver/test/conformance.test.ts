import { describeDriver } from '@ic/conformance';
import { toyDriver } from '../src/index.js';
describeDriver(toyDriver);
