import { once } from "node:events";
import { createServer, Socket } from "node:net";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Redis } from "ioredis";
import { Etcd3 } from "etcd3";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ETCD_ENDPOINTS, NATS_URL, REDIS_URL, TestCluster } from "./support/cluster.js";
import { ServiceProcess, eventually, freePort } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";
import { PROC_AVAILABLE, accepts, filesUnder, tcpSocketsOf } from "./support/sockets.js";
import { TEST_NATS_MONITOR_URL, describeWith, requireServices, serviceTarget } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "nats-monitor", "etcd"]);

const PHASES = {
  gateway: ["unready", "gateway.stop-accepting", "gateway.finish-inflight", "gateway.close-websockets", "gateway.flush-presence", "gateway.stop-push-rpc", "deregister", "release"],
  logic: ["unready", "logic.stop-rpc", "logic.flush-outbox", "deregister", "release"],
  task: ["unready", "task.stop-consumer", "task.flush-pushes", "deregister", "release"],
  all: [
    "unready",
    "gateway.stop-accepting",
    "gateway.finish-inflight",
    "gateway.close-websockets",
    "gateway.flush-presence",
    "logic.stop-rpc",
    "logic.flush-outbox",
    "task.stop-consumer",
    "task.flush-pushes",
    "gateway.stop-push-rpc",
    "deregister",
    "release",
  ],
} as const;

const FAST = { RESONANCE_WS_DRAIN_WINDOW: "300ms", RESONANCE_SHUTDOWN_TIMEOUT: "10s" };
/** For processes a test pauses in a phase: room for the pause inside the shutdown budget. */
const PAUSABLE = { RESONANCE_SHUTDOWN_TIMEOUT: "30s" };
/** How long a fault pause holds a process while a test looks at it (pausedAt() proves it was enough). */
const PAUSE_MS = 3_000;

const baseUrl = (p: ServiceProcess) => `http://127.0.0.1:${p.env.RESONANCE_HTTP_PORT}`;
const healthUrl = (p: ServiceProcess, path: string) => `http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}${path}`;
const connectionName = (p: ServiceProcess) => `resonance-${p.role}-${p.env.RESONANCE_INSTANCE_ID}`;
const status = (url: string) => fetch(url).then((r) => r.status);

/** The registry entry of a process as etcd holds it now, or undefined. */
async function registryEntry(cluster: TestCluster, p: ServiceProcess): Promise<{ state: string; address: string } | undefined> {
  const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS.split(",") });
  try {
    const v = await etcd.get(`/${cluster.namespace}/resonance/services/${p.role}/${p.env.RESONANCE_INSTANCE_ID}`).string();
    return v === null ? undefined : (JSON.parse(v) as { state: string; address: string });
  } finally {
    etcd.close();
  }
}

/** How many connections PostgreSQL, Redis and NATS each see from a process (by its connection name). */
async function serverSide(cluster: TestCluster, p: ServiceProcess): Promise<{ pg: number; redis: number; nats: number }> {
  const name = connectionName(p);
  const redis = new Redis(REDIS_URL);
  try {
    const pg = (await cluster.sql("select pid from pg_stat_activity where application_name = $1", [name])).length;
    const clients = String(await redis.client("LIST")).split("\n").filter((l) => l.includes(` name=${name} `)).length;
    const connz = (await (await fetch(`${TEST_NATS_MONITOR_URL}/connz?limit=4096`)).json()) as { connections?: Array<{ name?: string }> };
    const nats = (connz.connections ?? []).filter((c) => c.name === name).length;
    return { pg, redis: clients, nats };
  } finally {
    redis.disconnect();
  }
}

/** A raw HTTP/1.1 connection that has sent part of a request and waits to send the rest. */
async function halfSentRequest(port: number, head: string): Promise<{ finish(rest: string): Promise<string> }> {
  const s = new Socket();
  s.connect(port, "127.0.0.1");
  await once(s, "connect");
  s.write(head);
  return {
    finish: async (rest) => {
      let answer = "";
      s.setEncoding("utf8").on("data", (c: string) => (answer += c));
      s.write(rest);
      await Promise.race([once(s, "end"), once(s, "close")]);
      s.destroy();
      return answer;
    },
  };
}

/**
 * Reads `read()` until `done` holds or 2 s have passed, and resolves with the last reading
 * (which the caller then asserts on, so a failure shows what was left).
 */
async function settled<T>(read: () => Promise<T>, done: (v: T) => boolean): Promise<T> {
  const end = Date.now() + 2_000;
  for (;;) {
    const v = await read();
    if (done(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Sums how long this process's event loop was held up (gaps over 20 ms between 5 ms ticks). */
function stallMeter(): { stop(): number } {
  let last = performance.now();
  let stalled = 0;
  const t = setInterval(() => {
    const now = performance.now();
    stalled += Math.max(0, now - last - 20);
    last = now;
  }, 5);
  return {
    stop: () => {
      clearInterval(t);
      return stalled;
    },
  };
}

describeWith(services, "shutdown (cluster)", () => {
  let cluster: TestCluster;
  let alice: string;
  let bob: string;
  const etcdPort = serviceTarget("etcd").port;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 1, env: FAST });
    const api = createApi(cluster.urls[0]!, { binary: true });
    alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    bob = (await api.auth.register({ username: "bob", password: "pw-bob-12" })).accessToken;
  });
  afterAll(() => cluster?.destroy());

  for (const role of ["gateway", "logic", "task"] as const) {
    for (const signal of ["SIGTERM", "SIGINT"] as const) {
      it(`shutdown - ${role} on ${signal}: exit 0, every phase ok and in order, one report`, async () => {
        const p = await cluster.startProcess(role);
        p.kill(signal);
        const [report, exit] = await Promise.all([p.report(), p.exited]);
        expect(exit.code).toBe(0);
        expect(report.reason).toBe(`signal ${signal}`);
        expect(report.phases.map((x) => x.name)).toEqual(PHASES[role]);
        expect(report.phases.every((x) => x.outcome === "ok")).toBe(true);
        expect(p.logs().filter((l) => l.msg === "shutdown report")).toHaveLength(1);
      });
    }
  }

  it("shutdown - gateway at the first moment of shutdown: /readyz 503 and registry entry draining, while requests and upgrades are still served", async () => {
    const gw = await cluster.startProcess("gateway", { ...PAUSABLE, RESONANCE_FAULTS: `after.unready=${PAUSE_MS}` });
    expect(await status(healthUrl(gw, "/readyz"))).toBe(200);
    expect(await registryEntry(cluster, gw)).toMatchObject({ state: "serving" });
    gw.kill("SIGTERM");
    const stillPaused = await gw.pausedAt("after.unready");
    const seen = {
      readyz: await status(healthUrl(gw, "/readyz")),
      healthz: await status(healthUrl(gw, "/healthz")),
      entry: (await registryEntry(cluster, gw))?.state,
      login: (await postJson(baseUrl(gw), "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "pw-alice-1" })).status,
      upgrade: await (async () => {
        const s = new RawSocket(baseUrl(gw), alice);
        await s.opened;
        s.ws.terminate();
        return "opened";
      })(),
    };
    stillPaused();
    expect(seen).toEqual({ readyz: 503, healthz: 200, entry: "draining", login: 200, upgrade: "opened" });
    expect((await gw.exited).code).toBe(0);
  });

  it("shutdown - logic at the first moment of shutdown: /readyz 503, registry entry draining, and gateways send new calls to the other logic", async () => {
    // Every Login this logic answers leaves a "fault injected" line (a 1 ms fault), so its share is visible.
    const draining = await cluster.startProcess("logic", { ...PAUSABLE, RESONANCE_FAULTS: `after.unready=${PAUSE_MS + 3_000},logic.Login=1` });
    const gw = cluster.gateways[0]!;
    const loginsThere = () => draining.logs().filter((l) => l.fault === "logic.Login").length;
    const login = () => postJson(baseUrl(gw), "resonance.gateway.v1.AuthService/Login", { username: "bob", password: "pw-bob-12" });
    // Serving: the gateway's round robin reaches it.
    await eventually(async () => (await login()).status === 200 && loginsThere() > 0, 15_000, "the gateway to use the new logic");
    draining.kill("SIGTERM");
    const stillPaused = await draining.pausedAt("after.unready");
    const readyz = await status(healthUrl(draining, "/readyz"));
    const entry = (await registryEntry(cluster, draining))?.state;
    // Once the gateway's watch has the change, six logins in a row all go to the other instance.
    await eventually(async () => {
      const before = loginsThere();
      for (let i = 0; i < 6; i++) expect((await login()).status).toBe(200);
      return loginsThere() === before;
    }, 3_000, "six logins in a row to avoid the draining logic");
    stillPaused();
    expect({ readyz, entry }).toEqual({ readyz: 503, entry: "draining" });
    expect((await draining.exited).code).toBe(0);
  });

  it("shutdown - drain delay: after turning unready the gateway keeps serving for RESONANCE_DRAIN_DELAY, then stops accepting", async () => {
    const gw = await cluster.startProcess("gateway", { ...PAUSABLE, RESONANCE_DRAIN_DELAY: "3s" });
    gw.kill("SIGTERM");
    await gw.waitForLog((l) => l.msg === "shutdown phase started" && l.phase === "drain-delay");
    const seen = {
      readyz: await status(healthUrl(gw, "/readyz")),
      login: (await postJson(baseUrl(gw), "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "pw-alice-1" })).status,
    };
    const s = new RawSocket(baseUrl(gw), alice);
    await s.opened;
    const stopped = gw.logs().some((l) => l.msg === "shutdown phase started" && l.phase === "gateway.stop-accepting");
    expect(stopped, "the checks took longer than the drain delay").toBe(false);
    expect(seen).toEqual({ readyz: 503, login: 200 });
    // The socket opened during the delay is then closed like any other.
    expect(await s.closed).toMatchObject({ code: 1001, wasClean: true });
    const [report, exit] = await Promise.all([gw.report(), gw.exited]);
    expect(exit.code).toBe(0);
    expect(report.phases.map((x) => x.name)).toEqual(["unready", "drain-delay", ...PHASES.gateway.slice(1)]);
    expect(report.phases.find((x) => x.name === "drain-delay")!.durationMs).toBeGreaterThanOrEqual(2_900);
  });

  it("shutdown - a request in flight completes with Connection: close; new connections are refused; a request or an upgrade arriving on an open connection gets 503", async () => {
    // A second logic whose Login takes 1.5 s, reached through a gateway bound to it alone.
    const slowLogic = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.Login=1500" });
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${slowLogic.env.RESONANCE_LOGIC_PORT}` });
    const url = baseUrl(gw);
    const port = Number(gw.env.RESONANCE_HTTP_PORT);
    // Connections that have begun a request (so they are not idle) before the shutdown.
    const request = await halfSentRequest(port, "POST /resonance.gateway.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
    const upgrade = await halfSentRequest(
      port,
      `GET /ws?token=${alice} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n`,
    );
    const inFlight = fetch(`${url}/resonance.gateway.v1.AuthService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: "alice", password: "pw-alice-1" }),
    });
    await slowLogic.waitForLog((l) => l.fault === "logic.Login");
    gw.kill("SIGTERM");
    // The listener is closed once the phase after stop-accepting has begun.
    await gw.waitForLog((l) => l.msg === "shutdown phase started" && l.phase === "gateway.finish-inflight");
    expect(await accepts(port)).toBe(false);
    const refused = await request.finish("Content-Length: 2\r\n\r\n{}");
    expect(refused).toMatch(/^HTTP\/1\.1 503 /);
    expect(refused).toMatch(/\r\nconnection: close\r\n/i);
    expect(refused).toContain('"code":"unavailable"');
    expect(await upgrade.finish("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).toMatch(/^HTTP\/1\.1 503 /);
    const done = await inFlight;
    expect(done.status).toBe(200);
    expect(((await done.json()) as { user: { username: string } }).user.username).toBe("alice");
    // The answer tells the client not to reuse this connection.
    expect(done.headers.get("connection")).toBe("close");
    const report = await gw.report();
    expect(report.counts.httpCompleted).toBeGreaterThanOrEqual(1);
    expect(report.counts.httpAborted).toBe(0);
    expect((await gw.exited).code).toBe(0);
    slowLogic.kill("SIGTERM");
    expect((await slowLogic.exited).code).toBe(0);
  });

  it("shutdown - a request still running when the gateway releases its listener is counted as aborted (httpAborted)", async () => {
    const slowLogic = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.Login=20000" });
    // Budget 6 s: finish-inflight waits 2 s for the Login, which takes 20 s.
    const gw = await cluster.startProcess("gateway", { RESONANCE_SHUTDOWN_TIMEOUT: "6s", RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${slowLogic.env.RESONANCE_LOGIC_PORT}` });
    const inFlight = fetch(`${baseUrl(gw)}/resonance.gateway.v1.AuthService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: "alice", password: "pw-alice-1" }),
    }).then(
      (r) => r.status,
      (err: Error) => `failed: ${err.message}`,
    );
    await slowLogic.waitForLog((l) => l.fault === "logic.Login");
    gw.kill("SIGTERM");
    const [report, exit] = await Promise.all([gw.report(), gw.exited]);
    expect(await inFlight).toMatch(/^failed/);
    expect(report.counts.httpAborted).toBe(1);
    expect(report.counts.httpCompleted ?? 0).toBe(0);
    expect(exit.code).toBe(0);
    // Gracefully, so its registry entry goes now (a SIGKILLed one would linger for the lease TTL).
    slowLogic.kill("SIGTERM");
    await slowLogic.exited;
  });

  it("shutdown - a chat in flight at logic gets its ack when logic is stopped", async () => {
    const slowLogic = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.SendMessages=1000" });
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${slowLogic.env.RESONANCE_LOGIC_PORT}` });
    const s = new RawSocket(baseUrl(gw), alice);
    await s.opened;
    s.send({ seq: "slow-1", payload: { case: "chat", value: { sessionId: "0", content: "in flight" } } });
    await slowLogic.waitForLog((l) => l.fault === "logic.SendMessages");
    slowLogic.kill("SIGTERM");
    const ack = await s.ackFor("slow-1");
    expect(ack.error).toBe("");
    expect(ack.msgId).toBeGreaterThan(0n);
    expect((await slowLogic.exited).code).toBe(0);
    s.close();
    gw.kill("SIGTERM");
    await gw.exited;
  });

  it("shutdown - every WebSocket gets Goaway then a clean 1001, the closes spread over the drain window; none sees 1006", async () => {
    const windowMs = 1_000;
    const gw = await cluster.startProcess("gateway", { RESONANCE_WS_DRAIN_WINDOW: `${windowMs}ms` });
    const sockets = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const s = new RawSocket(baseUrl(gw), i % 2 ? alice : bob);
        await s.opened;
        return s;
      }),
    );
    const stalls = stallMeter();
    gw.kill("SIGTERM");
    const closedAt: number[] = [];
    const closes = await Promise.all(sockets.map((s) => s.closed.then((c) => (closedAt.push(performance.now()), c))));
    const stalled = stalls.stop();
    // Sent evenly over the window (about 950 ms from first to last). This process seeing them
    // closer together is only possible while its own event loop was held up, so that time is allowed for.
    expect(Math.max(...closedAt) - Math.min(...closedAt)).toBeGreaterThanOrEqual(windowMs / 2 - stalled);
    for (const [i, c] of closes.entries()) {
      expect(c).toMatchObject({ code: 1001, reason: "server shutdown", wasClean: true });
      expect(sockets[i]!.packets.at(-1)?.payload.case).toBe("goaway");
    }
    const report = await gw.report();
    expect(report.counts.wsClosedClean).toBe(20);
    expect(report.counts.wsTerminated).toBe(0);
    expect((await gw.exited).code).toBe(0);
  });

  it.skipIf(!PROC_AVAILABLE).each(["gateway", "logic", "task"] as const)(
    "shutdown - %s after its release phase, still alive: it holds no socket at all, no server has a connection of it, its ports are closed",
    async (role) => {
      const p = await cluster.startProcess(role, { ...PAUSABLE, RESONANCE_FAULTS: `after.release=${PAUSE_MS}` });
      const pid = p.proc.pid!;
      const ports = [p.env.RESONANCE_METRICS_PORT, ...(role === "gateway" ? [p.env.RESONANCE_HTTP_PORT, p.env.RESONANCE_PUSH_PORT] : []), ...(role === "logic" ? [p.env.RESONANCE_LOGIC_PORT] : [])].map(Number);
      if (role === "gateway") {
        // A call through it opens its channel to logic.
        expect((await postJson(baseUrl(p), "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "pw-alice-1" })).status).toBe(200);
      }
      // Before: what the checks below look for is there to be seen.
      const before = await tcpSocketsOf(pid);
      expect(before.filter((s) => s.state === "LISTEN").map((s) => s.localPort).sort()).toEqual([...ports].sort());
      expect(before.some((s) => s.remotePort === etcdPort)).toBe(true);
      if (role === "gateway") expect(before.some((s) => s.remotePort === Number(cluster.logics[0]!.env.RESONANCE_LOGIC_PORT))).toBe(true);
      if (role !== "gateway") expect(Object.values(await serverSide(cluster, p)).every((n) => n > 0)).toBe(true);

      p.kill("SIGTERM");
      const stillPaused = await p.pausedAt("after.release");
      // Closing sockets finish their handshake within milliseconds; one never closed stays for the whole pause.
      const held = await settled(() => tcpSocketsOf(pid), (s) => s.length === 0);
      const side = await settled(() => serverSide(cluster, p), (s) => s.pg + s.redis + s.nats === 0);
      const open = await Promise.all(ports.map(accepts));
      const entry = await registryEntry(cluster, p);
      stillPaused();
      expect(held).toEqual([]);
      expect(side).toEqual({ pg: 0, redis: 0, nats: 0 });
      expect(open.every((o) => !o)).toBe(true);
      expect(entry).toBeUndefined();
      const [report, exit] = await Promise.all([p.report(), p.exited]);
      expect(exit.code).toBe(0);
      expect(report.phases.at(-1)).toMatchObject({ name: "release", outcome: "ok" });
    },
  );

  it.each(["gateway", "logic"] as const)("shutdown - %s deregisters: its registry entry is there (draining) until the deregister phase and gone right after it, not at lease expiry", async (role) => {
    const p = await cluster.startProcess(role, { ...PAUSABLE, RESONANCE_FAULTS: `phase.deregister=${PAUSE_MS},after.deregister=${PAUSE_MS}` });
    expect(await registryEntry(cluster, p)).toMatchObject({ state: "serving" });
    p.kill("SIGTERM");
    let stillPaused = await p.pausedAt("phase.deregister");
    const before = await registryEntry(cluster, p);
    stillPaused();
    stillPaused = await p.pausedAt("after.deregister");
    const after = await registryEntry(cluster, p);
    stillPaused();
    expect(before).toMatchObject({ state: "draining" });
    expect(after).toBeUndefined();
    expect((await p.exited).code).toBe(0);
  });

  it("shutdown - a hanging phase: exit 1 at the configured deadline, the report names the phase", async () => {
    const p = await cluster.startProcess("gateway", { RESONANCE_SHUTDOWN_TIMEOUT: "2s", RESONANCE_FAULTS: "phase.gateway.flush-presence=hang" });
    const t0 = Date.now();
    p.kill("SIGTERM");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(1);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_900);
    expect(report.durationMs).toBeGreaterThanOrEqual(1_990);
    // Measured inside the process: the deadline, plus what a busy machine adds to one timer.
    expect(report.durationMs).toBeLessThan(4_000);
    expect(report.deadlineExceeded).toBe(true);
    expect(report.phases.find((x) => x.outcome === "running")?.name).toBe("gateway.flush-presence");
  });

  it.each([
    ["process.unhandled-rejection", "unhandled rejection"],
    ["process.uncaught-exception", "uncaught exception"],
  ])("shutdown - a crash (%s) runs the same shutdown and exits 1", async (fault, reason) => {
    const p = await cluster.startProcess("gateway", { RESONANCE_FAULTS: `${fault}=100` });
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(1);
    expect(report.reason).toBe(reason);
    expect(report.phases.map((x) => x.name)).toEqual(PHASES.gateway);
    expect(report.phases.every((x) => x.outcome === "ok")).toBe(true);
  });

  it("shutdown - a second signal exits at once, non-zero", async () => {
    // Without the second signal this shutdown would hang for its whole 60 s budget.
    const p = await cluster.startProcess("gateway", { RESONANCE_SHUTDOWN_TIMEOUT: "60s", RESONANCE_FAULTS: "phase.gateway.flush-presence=hang" });
    p.kill("SIGTERM");
    await p.waitForLog((l) => l.fault === "phase.gateway.flush-presence");
    const t0 = Date.now();
    p.kill("SIGTERM");
    const exit = await p.exited;
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(exit.signal).toBeNull(); // it exited by itself, not killed by the signal
    expect(exit.code).not.toBe(0);
    expect(p.logs().some((l) => l.msg === "second signal: exiting now")).toBe(true);
    expect(p.logs().some((l) => l.msg === "shutdown report")).toBe(false);
  });

  it("shutdown - a signal during start: an await-start phase first, then the usual phases; never reported ready", async () => {
    const p = new ServiceProcess("gateway", await cluster.processEnv("gateway", { RESONANCE_FAULTS: "start.gateway=2000" }));
    await p.waitForLog((l) => l.fault === "start.gateway");
    p.kill("SIGTERM");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(0);
    expect(report.phases.map((x) => x.name)).toEqual(["await-start", ...PHASES.gateway]);
    expect(report.phases.every((x) => x.outcome === "ok")).toBe(true);
    expect(p.logs().some((l) => l.msg === "started")).toBe(false);
  });

  it("shutdown - a process started on an unmigrated database exits non-zero and says to migrate", async () => {
    const env = await cluster.processEnv("task", { RESONANCE_DATABASE_URL: cluster.databaseUrl!.replace(/\/[^/]*$/, "/postgres") });
    const p = new ServiceProcess("task", env);
    expect((await p.exited).code).not.toBe(0);
    expect(p.stderr.join("")).toMatch(/resonance migrate/);
  });

  it("shutdown - startup with an unreachable dependency exits non-zero with a clear message", async () => {
    const env = await cluster.processEnv("logic", { RESONANCE_DATABASE_URL: "postgres://postgres@127.0.0.1:1/nowhere" });
    const p = new ServiceProcess("logic", env);
    const exit = await p.exited;
    expect(exit.code).not.toBe(0);
    expect(p.stderr.join("")).toMatch(/startup failed/);
    expect(p.stderr.join("")).toMatch(/127\.0\.0\.1:1|ECONNREFUSED/);
  });

  it.skipIf(!PROC_AVAILABLE)("shutdown - a failed start closes everything it had opened (health port, etcd, PostgreSQL, Redis, NATS) before exiting 1", async () => {
    // Its own logic port is taken: the last step fails, after every connection was made.
    const blocker = createServer().listen(await freePort(), "127.0.0.1");
    await once(blocker, "listening");
    try {
      const taken = String((blocker.address() as { port: number }).port);
      const p = new ServiceProcess("logic", await cluster.processEnv("logic", { RESONANCE_LOGIC_PORT: taken, RESONANCE_FAULTS: `start.failed=${PAUSE_MS}` }));
      const stillPaused = await p.pausedAt("start.failed");
      const held = await settled(() => tcpSocketsOf(p.proc.pid!), (s) => s.length === 0);
      const side = await settled(() => serverSide(cluster, p), (s) => s.pg + s.redis + s.nats === 0);
      const health = await accepts(Number(p.env.RESONANCE_METRICS_PORT));
      stillPaused();
      // It had got that far: every connection was open before the failure.
      for (const msg of ["health and metrics listening", "registry connected to etcd", "connected to NATS JetStream"]) {
        expect(p.logs().some((l) => l.msg === msg), msg).toBe(true);
      }
      expect(held).toEqual([]);
      expect(side).toEqual({ pg: 0, redis: 0, nats: 0 });
      expect(health).toBe(false);
      expect((await p.exited).code).toBe(1);
      expect(p.stderr.join("")).toContain(`startup failed: port ${taken} is already in use (RESONANCE_LOGIC_PORT)`);
    } finally {
      blocker.close();
    }
  });
});

describeWith(services, "shutdown (cluster, queue)", () => {
  // Each test has its own deployment (no task, one logic): what is queued and relayed is its own.
  let cluster: TestCluster;
  let alice: string;

  beforeEach(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 1, logics: 1, tasks: 0, env: FAST });
    const api = createApi(cluster.urls[0]!, { binary: true });
    alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    await api.auth.register({ username: "bob", password: "pw-bob-12" });
  });
  afterEach(() => cluster?.destroy());

  const stream = () => `RESONANCE_PUSH_${cluster.namespace.toUpperCase()}`;

  async function consumerInfo() {
    const nc = await connect({ servers: NATS_URL });
    try {
      return await (await jetstreamManager(nc)).consumers.info(stream(), "resonance-task");
    } finally {
      await nc.close();
    }
  }

  async function chat(n: number, prefix: string): Promise<bigint[]> {
    const s = new RawSocket(cluster.urls[0]!, alice);
    await s.opened;
    const ids: bigint[] = [];
    for (let i = 0; i < n; i++) {
      s.send({ seq: `${prefix}-${i}`, payload: { case: "chat", value: { sessionId: "0", content: `${prefix} ${i}` } } });
      const ack = await s.ackFor(`${prefix}-${i}`);
      expect(ack.error).toBe("");
      ids.push(ack.msgId);
    }
    s.close();
    return ids;
  }

  it("shutdown - task stopped mid-event: the event in hand is handled once and acked, the ones fetched but not started are nak'd and handled by the next task, none lost", async () => {
    const slow = await cluster.startProcess("task", { RESONANCE_FAULTS: "task.before-ack=3000", RESONANCE_TASK_CONCURRENCY: "1" });
    const ids = (await chat(5, "mid")).map(String);
    await slow.waitForLog((l) => l.fault === "task.before-ack");
    // It holds more than it runs: one event in its handler, at least one fetched and waiting.
    await eventually(async () => (await consumerInfo()).num_ack_pending >= 2, 15_000, "the task to hold a fetched event");
    slow.kill("SIGTERM");
    const [report, exit] = await Promise.all([slow.report(), slow.exited]);
    expect(exit.code).toBe(0);
    expect(report.counts.mqAcked).toBeGreaterThanOrEqual(1);
    expect(report.counts.mqNaked).toBeGreaterThanOrEqual(1);
    expect(slow.logs().filter((l) => l.fault === "task.before-ack").length).toBe(report.counts.mqAcked);

    const next = await cluster.startProcess("task");
    await eventually(async () => {
      const rows = await cluster.sql<{ n: string }>("select count(distinct msg_id) as n from inbox where owner = 'bob' and msg_id = any($1::bigint[])", [ids]);
      return rows[0]!.n === "5";
    }, 20_000, "bob's inbox to hold all five");
    await eventually(async () => {
      const info = await consumerInfo();
      return info.num_ack_pending === 0 && info.num_pending === 0;
    }, 10_000, "nothing pending");
    // The next task handled exactly what the stopped one had not acked: nothing acked came back.
    const metrics = await (await fetch(healthUrl(next, "/metrics"))).text();
    expect(metrics).toContain(`resonance_events_handled_total{outcome="acked"} ${5 - report.counts.mqAcked!}\n`);
    // Counted per (owner, msg_id), whatever the table's own unique key is; and as bob reads it.
    const twice = await cluster.sql("select owner, msg_id from inbox where msg_id = any($1::bigint[]) group by owner, msg_id having count(*) > 1", [ids]);
    expect(twice).toEqual([]);
    const delta = await createApi(cluster.urls[0]!, { binary: true, token: (await createApi(cluster.urls[0]!, { binary: true }).auth.login({ username: "bob", password: "pw-bob-12" })).accessToken }).session.pullInboxDelta({ cursorId: 0n, limit: 500n });
    const seen = delta.events.map((e) => e.message!.msgId.toString()).filter((id) => ids.includes(id));
    expect(seen.sort()).toEqual([...ids].sort());
    next.kill("SIGTERM");
    expect((await next.exited).code).toBe(0);
  });

  it("shutdown - logic reports the outbox rows it published (outboxFlushed) and those left for the next relay (outboxPending)", async () => {
    // The only logic relays everything: its count is every message's outbox row.
    const logic = cluster.logics[0]!;
    const ids = await chat(4, "flushed");
    await eventually(async () => (await cluster.sql<{ n: string }>("select count(*) as n from outbox where published_at is null"))[0]!.n === "0", 10_000, "the outbox to drain");
    const published = Number((await cluster.sql<{ n: string }>("select count(*) as n from messages"))[0]!.n);
    expect(published).toBeGreaterThanOrEqual(ids.length);
    logic.kill("SIGTERM");
    const [report, exit] = await Promise.all([logic.report(), logic.exited]);
    expect(exit.code).toBe(0);
    expect({ flushed: report.counts.outboxFlushed, pending: report.counts.outboxPending }).toEqual({ flushed: published, pending: 0 });

    // With the stream gone (an operator deleted it) nothing can be published: the rows stay.
    const successor = await cluster.startProcess("logic");
    const nc = await connect({ servers: NATS_URL });
    try {
      await (await jetstreamManager(nc)).streams.delete(stream());
    } finally {
      await nc.close();
    }
    await chat(3, "stuck");
    successor.kill("SIGTERM");
    const [stuck, exit2] = await Promise.all([successor.report(), successor.exited]);
    expect(exit2.code).toBe(0);
    expect({ flushed: stuck.counts.outboxFlushed, pending: stuck.counts.outboxPending }).toEqual({ flushed: 0, pending: 3 });
    expect((await cluster.sql<{ n: string }>("select count(*) as n from outbox where published_at is null"))[0]!.n).toBe("3");
    // The next logic recreates the stream at start and publishes them.
    await cluster.startProcess("logic");
    await eventually(async () => (await cluster.sql<{ n: string }>("select count(*) as n from outbox where published_at is null"))[0]!.n === "0", 15_000, "the next relay to publish the rows left");
  });
});

describe("shutdown (standalone all)", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "standalone", env: FAST });
  });
  afterAll(() => cluster?.destroy());

  /** The running `all` process on the data dir, after stopping any other one (one process per data dir). */
  async function fresh(env: Record<string, string> = {}): Promise<ServiceProcess> {
    for (const p of cluster.gateways) {
      if (!p.alive) continue;
      p.kill("SIGTERM");
      await p.exited;
    }
    return cluster.startProcess("all", { RESONANCE_DATA_DIR: cluster.dataDir!, ...env });
  }

  it("shutdown - all on SIGTERM: gateway, logic, task phases in order, Goaway + 1001 to every socket, exit 0", async () => {
    const p = await fresh();
    const url = baseUrl(p);
    const token = (await createApi(url, { binary: true }).auth.register({ username: "dora", password: "pw-dora-1" })).accessToken;
    const sockets = await Promise.all(
      Array.from({ length: 5 }, async () => {
        const s = new RawSocket(url, token);
        await s.opened;
        return s;
      }),
    );
    p.kill("SIGTERM");
    const closes = await Promise.all(sockets.map((s) => s.closed));
    for (const [i, c] of closes.entries()) {
      expect(c).toMatchObject({ code: 1001, wasClean: true });
      expect(sockets[i]!.packets.some((x) => x.payload.case === "goaway")).toBe(true);
    }
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(0);
    expect(report.phases.map((x) => x.name)).toEqual(PHASES.all);
    expect(report.counts.wsClosedClean).toBe(5);
  });

  it("shutdown - all on SIGINT: exit 0 with the same phases; the data survives for the next start", async () => {
    const p = await fresh();
    await createApi(baseUrl(p), { binary: true }).auth.register({ username: "erin", password: "pw-erin-1" });
    p.kill("SIGINT");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(0);
    expect(report.reason).toBe("signal SIGINT");
    expect(report.phases.map((x) => x.name)).toEqual(PHASES.all);
    const again = await fresh();
    const login = await createApi(baseUrl(again), { binary: true }).auth.login({ username: "erin", password: "pw-erin-1" });
    expect(login.user?.username).toBe("erin");
  });

  it.skipIf(!PROC_AVAILABLE)("shutdown - all after its release phase, still alive: no socket and no file of its data dir held open", async () => {
    const p = await fresh({ ...PAUSABLE, RESONANCE_FAULTS: `after.release=${PAUSE_MS}` });
    const pid = p.proc.pid!;
    expect((await tcpSocketsOf(pid)).some((s) => s.state === "LISTEN")).toBe(true);
    expect((await filesUnder(pid, cluster.dataDir!)).length).toBeGreaterThan(0);
    p.kill("SIGTERM");
    const stillPaused = await p.pausedAt("after.release");
    const held = {
      sockets: await settled(() => tcpSocketsOf(pid), (s) => s.length === 0),
      files: await settled(() => filesUnder(pid, cluster.dataDir!), (f) => f.length === 0),
    };
    stillPaused();
    expect(held).toEqual({ sockets: [], files: [] });
    expect((await p.exited).code).toBe(0);
  });
});
