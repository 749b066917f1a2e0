import { defineConfig } from "vitest/config";

// Integration tests spawn real service processes; on a 2-core machine they run one file at a time.
export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "web/**/*.test.ts", "test/**/*.test.ts", "bench/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    globalSetup: ["test/global-setup.ts"],
    reporters: ["default"],
  },
});
