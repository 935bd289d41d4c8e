export { main, VERSION, type MainOptions } from './main.js';
export { EXIT, UsageError, errorLine, type CliStreams, type Writer } from './context.js';
export { bundledDrivers, createRegistry, driversFromModules, looksLikeDriver, type BundledRegistry } from './drivers.js';
export { DEMO_RUNS, DEMO_VIRTUAL_SIZE, patternByte } from './commands/demo.js';
export { fullBackingFilename, hasProtocol, sizeToString } from '@ic/qemu-output';
