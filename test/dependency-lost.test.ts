import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { eventually, freePort, ServiceProcess } from "./support/processes.js";
import { probeTcp } from "./support/services.js";

/**
 * A dependency lost for good starts the shutdown (README "What happens on SIGTERM"). Each test
 * runs its own NATS or etcd server on free ports, so killing it disturbs nobody else.
 */

function has(binary: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${binary}`]).status === 0;
}
const binaries = { nats: has("nats-server"), etcd: has("etcd") };
for (const [name, ok] of Object.entries(binaries)) {
  if (!ok && process.env.CI === "true") throw new Error(`${name} binary missing in CI (scripts/dev-services.sh installs it)`);
  if (!ok) console.warn(`dependency-lost: ${name} tests skipped: binary missing`);
}

/** A server process of the test's own, killed at the end whatever happens. */
class Server {
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  output = "";

  constructor(cmd: string, args: string[]) {
    this.proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.proc.stdout!.on("data", (c: Buffer) => (this.output += c.toString()));
    this.proc.stderr!.on("data", (c: Buffer) => (this.output += c.toString()));
    this.exited = new Promise((r) => this.proc.once("exit", () => r()));
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGKILL");
    await this.exited;
  }
}

const cleanup: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => undefined);
});

async function portOpen(port: number): Promise<boolean> {
  return (await probeTcp({ host: "127.0.0.1", port }, 500)) === null;
}

async function startNats(port: number, dir: string, extra: string[] = []): Promise<Server> {
  const s = new Server("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir, ...extra]);
  cleanup.push(() => s.kill());
  await eventually(() => portOpen(port), 20_000, `nats-server on ${port}\n${s.output}`);
  return s;
}

/** The shutdown expected after a lost dependency: exit 1, the report says why, every phase ran. */
async function expectLostShutdown(p: ServiceProcess, what: RegExp): Promise<void> {
  const [report, exit] = await Promise.all([p.report(90_000), p.exited]);
  expect(exit.code).toBe(1);
  expect(report.reason).toMatch(/^dependency lost: /);
  expect(report.reason).toMatch(what);
  expect(report.phases.at(-1)?.name).toBe("release");
  expect(report.deadlineExceeded).toBe(false);
  expect(p.logs().some((l) => l.msg === "a dependency is gone for good")).toBe(true);
}

describe("a dependency lost for good", () => {
  it.skipIf(!binaries.nats)("dependency-lost - NATS closes for good (it came back refusing our credentials): the process shuts down and exits 1", { timeout: 120_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "resonance-lost-nats-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const natsPort = await freePort();
    const nats = await startNats(natsPort, join(dir, "js"));
    const env = {
      RESONANCE_NATS_URL: `nats://127.0.0.1:${natsPort}`,
      RESONANCE_DATA_DIR: join(dir, "data"),
      RESONANCE_HTTP_PORT: String(await freePort()),
      RESONANCE_LOGIC_PORT: String(await freePort()),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
      RESONANCE_SHUTDOWN_TIMEOUT: "10s",
      RESONANCE_WS_DRAIN_WINDOW: "100ms",
    };
    const p = new ServiceProcess("all", env);
    cleanup.push(() => p.stop());
    await p.ready();
    // The server goes away and comes back requiring a user: the client's reconnects are refused
    // twice for authorization, after which the NATS client gives up and closes the connection.
    await nats.kill();
    await startNats(natsPort, join(dir, "js"), ["--user", "someone", "--pass", "else-entirely"]);
    await expectLostShutdown(p, /./);
    expect(p.logs().some((l) => l.msg === "NATS connection lost for good")).toBe(true);
  });

  it.skipIf(!binaries.etcd)("dependency-lost - etcd gone longer than the lease: the lease is lost, one re-registration fails, the process shuts down and exits 1", { timeout: 150_000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "resonance-lost-etcd-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const [client, peer] = [await freePort(), await freePort()];
    const etcdUrl = `http://127.0.0.1:${client}`;
    const etcd = new Server("etcd", [
      "--name", "lost-test",
      "--data-dir", join(dir, "etcd"),
      "--listen-client-urls", etcdUrl,
      "--advertise-client-urls", etcdUrl,
      "--listen-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-advertise-peer-urls", `http://127.0.0.1:${peer}`,
      "--initial-cluster", `lost-test=http://127.0.0.1:${peer}`,
    ]);
    cleanup.push(() => etcd.kill());
    await eventually(async () => (await fetch(`${etcdUrl}/health`)).ok, 30_000, `etcd on ${client}\n${etcd.output}`);
    // A gateway needs nothing but the registry (its logic address is static).
    const p = new ServiceProcess("gateway", {
      RESONANCE_ETCD_ENDPOINTS: etcdUrl,
      RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${await freePort()}`,
      RESONANCE_HTTP_PORT: String(await freePort()),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
      RESONANCE_SHUTDOWN_TIMEOUT: "10s",
      RESONANCE_WS_DRAIN_WINDOW: "100ms",
    });
    cleanup.push(() => p.stop());
    await p.ready();
    await etcd.kill();
    await p.waitForLog((l) => l.msg === "registry lease lost; trying to re-register once", 90_000);
    await expectLostShutdown(p, /lease .* lost/);
  });
});
