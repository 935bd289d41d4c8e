import { defineConfig } from 'tsup';
export default defineConfig({
  entry: { index: 'src/index.ts', qemu: 'src/qemu/index.ts' },
  format: ['esm'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'node20',
  external: ['vitest', '@ic/core', /^@ic\/(qcow2|qed|vmdk)$/],
});
