import { defineConfig } from 'tsup';
export default defineConfig({
  entry: { index: 'src/index.ts', sdk: 'src/sdk/index.ts', node: 'src/platform/index.ts' },
  format: ['esm'],
  dts: true,
  sourcemap: true,
  clean: true,
  target: 'node20',
});
