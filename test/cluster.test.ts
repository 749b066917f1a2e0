import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApi } from "../src/client/api.js";
import { ResonanceClient } from "../src/client/client.js";
import { TestCluster } from "./support/cluster.js";
import { eventually, ServiceProcess } from "./support/processes.js";
import { requireServices, TEST_DATABASE_URL } from "./support/services.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
if (!services.ok) console.warn(`cluster: tests skipped: ${services.reason}`);

/** `n` consecutive free ports on loopback (the README's cluster takes ports in runs). */
async function freeRun(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    const free = await Promise.all(
      Array.from({ length: n }, (_, i) => new Promise<boolean>((resolve) => {
        const s = createServer();
        s.once("error", () => resolve(false));
        s.listen(base + i, "127.0.0.1", () => s.close(() => resolve(true)));
      })),
    );
    if (free.every(Boolean)) return base;
  }
  throw new Error("no run of free ports");
}

/** A README command run as an operator would, in its own process group (like a terminal's job). */
class Command {
  readonly proc: ChildProcess;
  out = "";
  readonly exited: Promise<number | null>;
  readonly #waiters = new Set<() => void>();
  constructor(cmd: string, args: string[], env: Record<string, string>) {
    this.proc = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"], detached: true });
    const add = (c: string) => {
      this.out += c;
      for (const w of this.#waiters) w();
    };
    this.proc.stdout!.setEncoding("utf8").on("data", add);
    this.proc.stderr!.setEncoding("utf8").on("data", add);
    this.exited = new Promise((r) => this.proc.once("exit", (code) => r(code)));
  }
  /** What Ctrl-C does in a terminal: SIGINT to the whole foreground job. */
  interrupt(): void {
    try {
      process.kill(-this.proc.pid!, "SIGINT");
    } catch {
      // Already gone.
    }
  }
  /** Resolves when the output matches; rejects (with the output) if the command exits first. */
  waitFor(re: RegExp): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = re.exec(this.out);
        if (m) {
          this.#waiters.delete(check);
          resolve(m);
        }
      };
      this.#waiters.add(check);
      void this.exited.then((code) => {
        if (!re.test(this.out)) reject(new Error(`exited ${code} before ${re}:\n${this.out.slice(-4000)}`));
      });
      check();
    });
  }
}

describe.skipIf(!services.ok)("cluster", () => {
  let dataDir: string;
  let dbName: string;
  const admin = async (sql: string) => {
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "resonance-cluster-"));
    dbName = `resonance_c${randomBytes(4).toString("hex")}`;
  });
  afterAll(async () => {
    await admin(`drop database if exists ${dbName} with (force)`).catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("cluster - the README's commands: one command runs logic, task and two gateways; chat across them; secrets made once and reused", { timeout: 300_000 }, async () => {
    const readme = await readFile(join(ROOT, "README.md"), "utf8");
    const section = readme.slice(readme.indexOf("## Cluster mode"), readme.indexOf("## Settings"));
    for (const line of ["npx resonance cluster", "npx resonance chat --user alice --url http://127.0.0.1:8081", "npx resonance chat --user bob"]) {
      expect(section).toContain(line);
    }
    // Ports and names of this run only; the database is created by the command itself.
    const [http, push, metrics, logic] = [await freeRun(2), await freeRun(2), await freeRun(4), await freeRun(1)];
    const env = {
      RESONANCE_DATA_DIR: dataDir,
      RESONANCE_DATABASE_URL: `${TEST_DATABASE_URL.replace(/\/[^/]*$/, "")}/${dbName}`,
      RESONANCE_NAMESPACE: `c${randomBytes(3).toString("hex")}`,
      RESONANCE_HTTP_PORT: String(http),
      RESONANCE_PUSH_PORT: String(push),
      RESONANCE_METRICS_PORT: String(metrics),
      RESONANCE_LOGIC_PORT: String(logic),
      RESONANCE_LOG_FORMAT: "json",
    };
    const cluster = new Command("npx", ["--no-install", "resonance", "cluster"], env);
    await cluster.waitFor(/Resonance cluster is up/);
    const gw1 = `http://127.0.0.1:${http}`;
    const gw2 = `http://127.0.0.1:${http + 1}`;
    expect(cluster.out).toContain(gw1);
    expect(cluster.out).toContain(gw2);
    for (let i = 0; i < 4; i++) expect((await fetch(`http://127.0.0.1:${metrics + i}/readyz`)).status).toBe(200);

    const alice = new Command("npx", ["--no-install", "resonance", "chat", "--user", "alice", "--url", gw2], {});
    const bob = new Command("npx", ["--no-install", "resonance", "chat", "--user", "bob", "--url", gw1], {});
    await alice.waitFor(/alice in Resonance Room/);
    await bob.waitFor(/bob in Resonance Room/);
    alice.proc.stdin!.write("hello through gateway 2\n");
    await bob.waitFor(/alice: hello through gateway 2/);
    alice.proc.stdin!.end("/quit\n");
    bob.proc.stdin!.end("/quit\n");
    expect(await alice.exited).toBe(0);
    expect(await bob.exited).toBe(0);

    const file = join(dataDir, "cluster.env");
    const secrets = await readFile(file, "utf8");
    expect(secrets).toMatch(/^RESONANCE_TOKEN_SECRET=[0-9a-f]{64}$/m);
    expect(secrets).toMatch(/^RESONANCE_INTERNAL_SECRET=[0-9a-f]{64}$/m);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    const token = (await createApi(gw1).auth.login({ username: "alice", password: "resonance-alice" })).accessToken;

    // Ctrl-C: every process shuts down gracefully (its report says exit 0) and its ports close.
    // (npx itself may exit first, on the signal; the processes finish regardless.)
    const stopped = async (c: Command) => {
      c.interrupt();
      await eventually(
        () => ["logic", "task", "gw1", "gw2"].every((n) => new RegExp(`\\[${n}\\s*\\] .*"exitCode":0.*"msg":"shutdown report"`).test(c.out)),
        60_000,
        "a shutdown report with exit code 0 from every process",
      );
      for (let i = 0; i < 4; i++) {
        await eventually(() => fetch(`http://127.0.0.1:${metrics + i}/readyz`).then(() => false, () => true), 30_000, "the health ports to close");
      }
      await c.exited;
    };
    await stopped(cluster);

    // Run again: the same secrets, so a token from the first run is still good.
    const again = new Command("npx", ["--no-install", "resonance", "cluster", "--no-services"], env);
    await again.waitFor(/Resonance cluster is up/);
    expect(await readFile(file, "utf8")).toBe(secrets);
    const list = await createApi(gw2, { token }).session.getSessionList({});
    expect(list.sessions.map((s) => s.name)).toContain("Resonance Room");
    await stopped(again);
  });

  it("cluster - a gateway started before logic is not ready until logic comes; one whose secret logic refuses says why and fails its clients clearly", { timeout: 180_000 }, async () => {
    const c = await TestCluster.start({ mode: "cluster", gateways: 0, logics: 0, tasks: 0 });
    try {
      const early = await c.startProcess("gateway");
      const earlyHealth = `http://127.0.0.1:${early.env.RESONANCE_METRICS_PORT}/readyz`;
      const first = await fetch(earlyHealth);
      expect(first.status).toBe(503);
      expect(await first.text()).toMatch(/no logic instance/);

      await c.startProcess("logic");
      await eventually(async () => (await fetch(earlyHealth)).status === 200, 30_000, "the early gateway to turn ready");
      await early.waitForLog((l) => l.msg === "gateway ready again: logic answers");

      const wrong = new ServiceProcess("gateway", await c.processEnv("gateway", { RESONANCE_INTERNAL_SECRET: randomBytes(24).toString("hex") }));
      c.gateways.push(wrong);
      await wrong.ready();
      const health = await fetch(`http://127.0.0.1:${wrong.env.RESONANCE_METRICS_PORT}/readyz`);
      expect(health.status).toBe(503);
      expect(await health.text()).toMatch(/refuses this gateway's RESONANCE_INTERNAL_SECRET/);

      // A client gets one clear, non-retryable answer instead of reconnecting for ever.
      const url = `http://127.0.0.1:${wrong.env.RESONANCE_HTTP_PORT}`;
      const client = new ResonanceClient({ urls: [url], username: "carol", password: "pw-carol-1", register: true, startTimeoutMs: 60_000 });
      const started = Date.now();
      const err = await client.start().then(
        () => undefined,
        (e: { code?: string; message?: string }) => e,
      );
      expect(err?.code).toBe("failed_precondition");
      expect(err?.message).toMatch(/RESONANCE_INTERNAL_SECRET/);
      expect(Date.now() - started).toBeLessThan(30_000);

      // Logged once per cause, not once per probe: the probe repeats every 2 s while failing.
      await new Promise((r) => setTimeout(r, 5_000));
      const warnings = wrong.logs().filter((l) => l.msg === "gateway not ready: logic at 127.0.0.1:" + c.logics[0]!.env.RESONANCE_LOGIC_PORT + " refuses this gateway's RESONANCE_INTERNAL_SECRET");
      expect(warnings).toHaveLength(1);
      expect(early.logs().filter((l) => typeof l.msg === "string" && l.msg.startsWith("gateway not ready"))).toHaveLength(1);
    } finally {
      await c.destroy();
    }
  });
});
