import { Socket } from "node:net";
import { describe } from "vitest";

/**
 * The external services integration tests run against, and a reachability check for them.
 *
 * Pattern for a test file (top-level await is fine in vitest):
 *
 * ```ts
 * const services = await requireServices(["postgres", "redis"]);
 * describeWith(services, "my area (cluster)", () => { ... });
 * ```
 *
 * Without the services the suite's tests still appear in the runner's count, as skipped, and
 * the reason is printed and part of the suite's name.
 *
 * With `CI=true` a missing service throws instead, so the test file fails loudly rather than
 * skipping silently (`scripts/dev-services.sh` starts everything in CI).
 */

/** PostgreSQL database for tests (`RESONANCE_TEST_DATABASE_URL`). */
export const TEST_DATABASE_URL = process.env.RESONANCE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
/** Redis for tests (`RESONANCE_TEST_REDIS_URL`). */
export const TEST_REDIS_URL = process.env.RESONANCE_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
/** NATS with JetStream for tests (`RESONANCE_TEST_NATS_URL`). */
export const TEST_NATS_URL = process.env.RESONANCE_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
/** NATS monitoring for tests (`RESONANCE_TEST_NATS_MONITOR_URL`; scripts/dev-services.sh enables it). */
export const TEST_NATS_MONITOR_URL = process.env.RESONANCE_TEST_NATS_MONITOR_URL ?? "http://127.0.0.1:8222";
/** Comma-separated etcd endpoints for tests (`RESONANCE_TEST_ETCD_ENDPOINTS`). */
export const TEST_ETCD_ENDPOINTS = process.env.RESONANCE_TEST_ETCD_ENDPOINTS ?? "http://127.0.0.1:2379";

export type ServiceName = "postgres" | "redis" | "nats" | "nats-monitor" | "etcd";

export type ServicesCheck = { ok: true } | { ok: false; reason: string };

/** How long one TCP connect may take before the service counts as unreachable. */
const CONNECT_TIMEOUT_MS = 1_500;

interface Target {
  readonly host: string;
  readonly port: number;
}

const DEFAULT_PORTS: Record<ServiceName, number> = { postgres: 5432, redis: 6379, nats: 4222, "nats-monitor": 8222, etcd: 2379 };

/** The host:port to probe for a service, taken from its test URL (the first endpoint for etcd). */
export function serviceTarget(name: ServiceName): Target {
  const url = {
    postgres: TEST_DATABASE_URL,
    redis: TEST_REDIS_URL,
    nats: TEST_NATS_URL,
    "nats-monitor": TEST_NATS_MONITOR_URL,
    etcd: TEST_ETCD_ENDPOINTS.split(",")[0]?.trim() ?? "",
  }[name];
  return parseTarget(url, DEFAULT_PORTS[name]);
}

function parseTarget(url: string, defaultPort: number): Target {
  try {
    const u = new URL(url);
    // URL keeps IPv6 literals in brackets; net.connect wants them bare.
    const host = u.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
    return { host, port: u.port ? Number(u.port) : defaultPort };
  } catch {
    return { host: "127.0.0.1", port: defaultPort };
  }
}

/** Resolves with null when a TCP connection to the target opens, else with the reason; never rejects. */
export function probeTcp(target: Target, timeoutMs = CONNECT_TIMEOUT_MS): Promise<string | null> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (reason: string | null): void => {
      socket.destroy();
      resolve(reason);
    };
    socket.setTimeout(timeoutMs, () => done(`timed out after ${timeoutMs} ms`));
    socket.once("connect", () => done(null));
    socket.once("error", (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    socket.connect(target.port, target.host);
  });
}

/**
 * Checks that every named service accepts TCP connections (in parallel).
 *
 * Resolves `{ ok: true }` when all are reachable, else `{ ok: false, reason }` naming each missing
 * service and its address. When `process.env.CI === "true"` a missing service rejects instead,
 * so integration tests cannot silently skip in CI.
 */
export async function requireServices(names: readonly ServiceName[]): Promise<ServicesCheck> {
  const unique = [...new Set(names)];
  const results = await Promise.all(
    unique.map(async (name) => {
      const target = serviceTarget(name);
      const failure = await probeTcp(target);
      return failure === null ? null : `${name} unreachable at ${target.host}:${target.port} (${failure})`;
    }),
  );
  const missing = results.filter((r): r is string => r !== null);
  if (missing.length === 0) return { ok: true };
  const reason = `${missing.join("; ")} — run \`bash scripts/dev-services.sh\``;
  if (process.env.CI === "true") throw new Error(`required test services missing in CI: ${reason}`);
  return { ok: false, reason };
}

/**
 * Whether a service answers a real request (`probe`), for suites that need more than an open
 * port. Unreachable: throws under CI (`CI=true`), else prints the reason and returns false so
 * the suite can be skipped.
 */
export async function requireReachable(name: string, probe: () => Promise<void>): Promise<boolean> {
  try {
    await probe();
    return true;
  } catch (err) {
    const reason = `${name} unreachable: ${(err as Error).message}`;
    if (process.env.CI === "true") throw new Error(`${reason} (CI=true: the suite must run against it)`);
    console.warn(`skipping the ${name} tests: ${reason}`);
    return false;
  }
}

/** The check of a suite that needs nothing. */
export const NOTHING_NEEDED: ServicesCheck = { ok: true };

/**
 * `describe(name, fn)` when the services are there; otherwise the same suite skipped (its tests
 * counted as skipped by the runner, never silently absent), with the reason in its name and
 * printed once.
 */
export function describeWith(check: ServicesCheck, name: string, fn: () => void): void {
  if (check.ok) return void describe(name, fn);
  console.warn(`${name}: skipped: ${check.reason}`);
  describe.skip(`${name} [skipped: ${check.reason}]`, fn);
}
