import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Vitest global setup: makes a local etcd available when possible, nothing else.
 *
 * Unless RESONANCE_TEST_ETCD_ENDPOINTS points elsewhere, runs `scripts/dev-services.sh etcd`
 * (the same start command CI uses) with its data under the temp dir and without installing
 * anything; etcd is left running for later runs. Never throws: a missing service is reported by
 * the tests that need it (see `test/support/services.ts`).
 */
export default function setup(): void {
  if (process.env.RESONANCE_TEST_ETCD_ENDPOINTS) return;
  const script = fileURLToPath(new URL("../scripts/dev-services.sh", import.meta.url));
  const r = spawnSync("bash", [script, "etcd"], {
    encoding: "utf8",
    timeout: 40_000,
    env: {
      ...process.env,
      RESONANCE_NO_INSTALL: "1",
      RESONANCE_ETCD_DATA_DIR: join(tmpdir(), "resonance-etcd"),
      RESONANCE_ETCD_LOG: join(tmpdir(), "resonance-etcd.log"),
    },
  });
  if (r.status !== 0) console.warn(`global-setup: no local etcd: ${(r.stderr || r.error?.message || "").trim()}`);
}
