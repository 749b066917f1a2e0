import { configDefaults, defineConfig } from "vitest/config";

// Integration tests spawn real service processes; on a 2-core machine they run one file at a time.
// Two projects: "main" is `npm test` (unit, contract and end-to-end tests); "e2e" is
// `npm run test:e2e`, the long scenarios under load (*.e2e.test.ts: chaos, rolling restart).
// CI runs both. A file named on the command line runs whichever project it belongs to.
export default defineConfig({
  test: {
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    globalSetup: ["test/global-setup.ts"],
    reporters: ["default"],
    projects: [
      {
        extends: true,
        test: { name: "main", include: ["src/**/*.test.ts", "web/**/*.test.ts", "test/**/*.test.ts", "bench/**/*.test.ts"], exclude: [...configDefaults.exclude, "**/*.e2e.test.ts"] },
      },
      { extends: true, test: { name: "e2e", include: ["test/**/*.e2e.test.ts"] } },
    ],
  },
});
