import { defineConfig } from 'tsup';

// The driver ships as one ESM file with its types; @ic/core is the host's (a peer dependency), never bundled.
export default defineConfig({ entry: ['src/index.ts'], format: ['esm'], dts: true, sourcemap: true, clean: true, target: 'node20', external: ['@ic/core'] });
