export * from './qemu.js';
export * from './files.js';
export * from './processes.js';
export * from './ic.js';
