import { defineConfig } from 'vitest/config';

// Conversions with the bundled drivers and qemu's checks take seconds each on a small machine.
export default defineConfig({ test: { include: ['test/**/*.test.ts'], testTimeout: 120_000, hookTimeout: 120_000 } });
