export * from './qemu.ts';
export * from './files.ts';
