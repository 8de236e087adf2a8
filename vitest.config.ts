import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration files each run an etcd, captures and sometimes PostgreSQL: on a
    // 2-core machine running them one at a time keeps lease timings honest.
    fileParallelism: false,
  },
});
