import { spawn } from "node:child_process";
import { accessSync, constants, mkdirSync, openSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

/**
 * Vitest global setup: makes a local etcd available when possible, nothing else.
 *
 * If nothing answers on 127.0.0.1:2379 (and RESONANCE_TEST_ETCD_ENDPOINTS is unset, i.e. the
 * tests expect the loopback default) and an `etcd` binary is on PATH, starts it detached with its
 * data under `os.tmpdir()/resonance-etcd` and waits for `/health`. It is left running: later test
 * runs reuse it. Never installs anything and never throws: a missing service is reported by the
 * tests that need it (see `test/support/services.ts`).
 */
export default async function setup(): Promise<void> {
  try {
    await ensureLocalEtcd();
  } catch (err) {
    console.warn(`global-setup: could not start etcd: ${err instanceof Error ? err.message : String(err)}`);
  }
}

const ETCD_CLIENT_URL = "http://127.0.0.1:2379";
const ETCD_PEER_URL = "http://127.0.0.1:2380";
const READY_TIMEOUT_MS = 15_000;

async function ensureLocalEtcd(): Promise<void> {
  if (process.env.RESONANCE_TEST_ETCD_ENDPOINTS) return;
  if (await etcdHealthy()) return;
  const binary = findOnPath("etcd");
  if (!binary) return;

  const dataDir = join(tmpdir(), "resonance-etcd");
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const logPath = join(tmpdir(), "resonance-etcd.log");
  const logFd = openSync(logPath, "a");
  try {
    const child = spawn(
      binary,
      [
        "--name", "s1",
        "--data-dir", dataDir,
        "--listen-client-urls", ETCD_CLIENT_URL,
        "--advertise-client-urls", ETCD_CLIENT_URL,
        "--listen-peer-urls", ETCD_PEER_URL,
        "--initial-advertise-peer-urls", ETCD_PEER_URL,
        "--initial-cluster", `s1=${ETCD_PEER_URL}`,
      ],
      // Own process group and no pipes to us: it outlives this test run.
      { detached: true, stdio: ["ignore", logFd, logFd] },
    );
    child.on("error", (err) => console.warn(`global-setup: etcd failed to spawn: ${err.message}`));
    child.unref();
  } finally {
    closeSync(logFd);
  }

  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (await etcdHealthy()) {
      console.info(`global-setup: started etcd on ${ETCD_CLIENT_URL} (data ${dataDir}, log ${logPath})`);
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.warn(`global-setup: etcd did not report healthy within ${READY_TIMEOUT_MS} ms (log ${logPath})`);
}

/** Resolves true when etcd's `/health` answers healthy; never rejects. */
async function etcdHealthy(): Promise<boolean> {
  try {
    const res = await fetch(`${ETCD_CLIENT_URL}/health`, { signal: AbortSignal.timeout(1_000) });
    if (!res.ok) return false;
    const body = (await res.json()) as { health?: unknown };
    return body.health === "true" || body.health === true;
  } catch {
    return false;
  }
}

function findOnPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}
