export * from './qemu.js';
export * from './files.js';
export * from './processes.js';
export * from './ic.js';
export * from './into.js';
export * from './crash-states.js';
export * from './repair.js';
