import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // GPU suites run only on a CUDA machine: `npx vitest run test/gpu`.
    exclude: process.env.TROUPE_GPU_TESTS ? [] : ['test/gpu/**'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // The engine uses both cores itself; running suites in parallel only thrashes.
    fileParallelism: false,
  },
});
