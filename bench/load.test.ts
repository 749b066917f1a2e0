import { fork, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { relayPairs } from "./deploy.js";
import { drive } from "./drive.js";
import { readProcStat } from "./proc.js";
import type { BenchResult } from "./report.js";
import { startOwnServers } from "./servers.js";
import { requireServices } from "../test/support/services.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

describe("bench - the lean client against the bare relay", () => {
  let relay: ReturnType<typeof fork>;
  let port: number;
  beforeAll(async () => {
    relay = fork(fileURLToPath(new URL("./relay.ts", import.meta.url)), [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
    port = await new Promise<number>((resolve) => relay.once("message", (m: { port: number }) => resolve(m.port)));
  });
  afterAll(() => void relay.kill("SIGKILL"));

  it("closed loop: every chat is acked and pushed to its receiver, and the CPU of relay and client is measured", async () => {
    const settings = { window: 4, rate: 0, warmupMs: 200, measureMs: 1000, graceMs: 5000, contentBytes: 16 };
    const r = await drive(relayPairs(port, 3), settings, [{ name: "ws relay", kind: "relay", pids: async () => [relay.pid!] }]);
    const c = r.client;
    expect(c.acked).toBeGreaterThan(0);
    expect(c.totals.ackedOk).toBe(c.totals.sent);
    expect(c.totals.delivered).toBe(c.totals.sent);
    expect(c.totals.lost).toBe(0);
    expect(c.totals.duplicatePushes).toBe(0);
    expect(c.errors).toEqual({});
    expect(c.ackMs.count).toBeGreaterThan(0);
    expect(c.pushMs.p50).not.toBeNull();
    expect(r.cpu.groups.map((g) => g.name)).toEqual(["ws relay", "load client"]);
    expect(r.cpu.messages).toBe(c.acked);
    // The relay did the work of every message: it cannot have used no CPU at all.
    expect(r.cpu.groups[0]!.cpuMs).toBeGreaterThan(0);
    expect(r.cpu.totalUsPerMsg).toBeGreaterThan(0);
  });

  it("open loop: offers the rate spread over the senders and paces it (sent + not offered ≈ rate × time)", async () => {
    const settings = { window: 8, rate: 300, warmupMs: 200, measureMs: 2000, graceMs: 5000, contentBytes: 16 };
    const r = await drive(relayPairs(port, 4), settings, []);
    const c = r.client;
    const due = 300 * c.measuredSeconds;
    expect(c.sent + c.notOffered).toBeGreaterThan(due * 0.75);
    expect(c.sent + c.notOffered).toBeLessThan(due * 1.25);
    expect(c.totals.lost).toBe(0);
    expect(c.totals.delivered).toBe(c.totals.sent);
  });

  it("open loop: a send due while the sender's window is full is counted as not offered, never queued", async () => {
    // 2 sends due per ms and one unacked chat allowed: in each timer tick all but one due send find the window full.
    const settings = { window: 1, rate: 2000, warmupMs: 100, measureMs: 1000, graceMs: 5000, contentBytes: 16 };
    const r = await drive(relayPairs(port, 1), settings, []);
    const c = r.client;
    expect(c.sent).toBeGreaterThan(0);
    expect(c.notOffered).toBeGreaterThan(0);
    expect(c.totals.unacked).toBe(0);
    expect(c.totals.lost).toBe(0);
  });
});

describe("bench - private servers for a cluster run", () => {
  it("starts nats-server (JetStream), redis-server and etcd on free ports and stops them", async () => {
    const s = await startOwnServers(await mkdtemp(join(tmpdir(), "bench-servers-test-")));
    try {
      expect(s.processes.map((p) => p.name)).toEqual(["nats-server", "redis-server", "etcd"]);
      for (const p of s.processes) expect(readProcStat(p.pid)).toBeDefined();
      expect(s.natsUrl).toMatch(/^nats:\/\/127\.0\.0\.1:\d+$/);
    } finally {
      await s.stop();
    }
    for (const p of s.processes) expect(readProcStat(p.pid)?.state ?? "gone").toMatch(/gone|Z/);
  });
});

/** Runs `npm run bench -- ...args --json <file>`; resolves with its exit code, output and result object. */
async function runBench(dir: string, args: string[]): Promise<{ code: number | null; out: string; result: BenchResult | undefined }> {
  const file = join(dir, `result-${Date.now()}.json`);
  const proc = spawn("npm", ["run", "bench", "--", ...args, "--json", file], { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  proc.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
  proc.stderr.setEncoding("utf8").on("data", (c: string) => (out += c));
  const code = await new Promise<number | null>((r) => proc.once("exit", r));
  const text = await readFile(file, "utf8").catch(() => undefined);
  return { code, out, result: text === undefined ? undefined : (JSON.parse(text) as BenchResult) };
}

describe("bench - npm run bench end to end", () => {
  let dir: string;
  beforeAll(async () => void (dir = await mkdtemp(join(tmpdir(), "bench-e2e-"))));
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it("runs a short standalone load and writes the result object with --json", async () => {
    const { code, out, result } = await runBench(dir, ["--pairs", "2", "--window", "4", "--seconds", "1", "--warmup", "0.5", "--grace", "15", "--no-ceiling"]);
    expect(code, out).toBe(0);
    expect(out).toContain("CPU per acked message");
    const r = result!;
    expect(r.product.client.acked).toBeGreaterThan(0);
    expect(r.product.client.totals.lost).toBe(0);
    expect(r.product.client.totals.ackErrors).toEqual({});
    expect(r.product.cpu.groups.map((g) => g.name)).toEqual(["all-1", "load client"]);
    expect(r.product.cpu.groups[0]!.cpuMs).toBeGreaterThan(0);
    expect(r.ceiling).toBeUndefined();
  }, 180_000);
});

const services = await requireServices(["postgres"]);
if (!services.ok) console.warn(`bench: cluster run skipped: ${services.reason}`);

describe.skipIf(!services.ok)("bench - npm run bench end to end (cluster, SIGTERM under load)", () => {
  let dir: string;
  beforeAll(async () => void (dir = await mkdtemp(join(tmpdir(), "bench-e2e-"))));
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it("measures every process of a cluster on private servers, then reports each service's shutdown", async () => {
    const args = ["--deploy", "cluster", "--gateways", "2", "--logics", "1", "--tasks", "1", "--pairs", "2", "--rate", "40", "--seconds", "1", "--warmup", "0.5"];
    const { code, out, result } = await runBench(dir, [...args, "--grace", "15", "--no-ceiling", "--sigterm-after"]);
    expect(code, out).toBe(0);
    const r = result!;
    expect(r.product.client.acked).toBeGreaterThan(0);
    const names = r.product.cpu.groups.map((g) => g.name);
    expect(names.filter((n) => n.startsWith("gateway-"))).toHaveLength(2);
    expect(names.filter((n) => n.startsWith("logic-"))).toHaveLength(1);
    expect(names.filter((n) => n.startsWith("task-"))).toHaveLength(1);
    expect(names).toEqual(expect.arrayContaining(["postgres backends", "nats-server", "redis-server", "etcd", "load client"]));
    // The logic and task processes hold PostgreSQL connections to the run's database.
    expect(r.product.cpu.groups.find((g) => g.name === "postgres backends")!.processes).toBeGreaterThan(0);
    expect(r.shutdown).toHaveLength(4);
    for (const s of r.shutdown!) {
      expect(s.exitCode, s.name).toBe(0);
      expect(s.report?.exitCode, s.name).toBe(0);
    }
    // Whatever was acked but not pushed before the shutdown must at least be committed.
    if (r.lostCheck) expect(r.lostCheck.missing).toBe(0);
    else expect(r.product.client.totals.lost).toBe(0);
  }, 240_000);
});
