export * from './qemu.js';
export * from './files.js';
