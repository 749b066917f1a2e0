import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Redis } from "ioredis";
import { Etcd3 } from "etcd3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ETCD_ENDPOINTS, NATS_URL, REDIS_URL, TestCluster } from "./support/cluster.js";
import { ServiceProcess, eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { TEST_NATS_MONITOR_URL, requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "nats-monitor", "etcd"]);
if (!services.ok) console.warn(`shutdown tests (cluster) skipped: ${services.reason}`);

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

describe.skipIf(!services.ok)("shutdown (cluster)", () => {
  let cluster: TestCluster;
  let alice: string;
  let bob: string;

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

  it("shutdown - a slow request in flight completes after SIGTERM; a new one is refused", async () => {
    // A second logic whose Login takes 1.5 s, reached through a gateway bound to it alone.
    const slowLogic = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.Login=1500" });
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${slowLogic.env.RESONANCE_LOGIC_PORT}` });
    const url = `http://127.0.0.1:${gw.env.RESONANCE_HTTP_PORT}`;
    const inFlight = fetch(`${url}/resonance.gateway.v1.AuthService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ username: "alice", password: "pw-alice-1" }),
    });
    await slowLogic.waitForLog((l) => l.fault === "logic.Login");
    gw.kill("SIGTERM");
    // The listener is closed once the phase after stop-accepting has begun.
    await gw.waitForLog((l) => l.msg === "shutdown phase started" && l.phase === "gateway.finish-inflight");
    const refused = await fetch(`${url}/resonance.gateway.v1.AuthService/Login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    }).then(
      (r) => r.status,
      () => "refused",
    );
    expect([503, "refused"]).toContain(refused);
    const done = await inFlight;
    expect(done.status).toBe(200);
    expect(((await done.json()) as { user: { username: string } }).user.username).toBe("alice");
    // The answer tells the client not to reuse this connection.
    expect(done.headers.get("connection")).toBe("close");
    const report = await gw.report();
    expect(report.counts.httpCompleted).toBeGreaterThanOrEqual(1);
    expect((await gw.exited).code).toBe(0);
    slowLogic.kill("SIGTERM");
    expect((await slowLogic.exited).code).toBe(0);
  });

  it("shutdown - a chat in flight at logic gets its ack when logic is stopped", async () => {
    const slowLogic = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.SendMessage=1000" });
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${slowLogic.env.RESONANCE_LOGIC_PORT}` });
    const s = new RawSocket(`http://127.0.0.1:${gw.env.RESONANCE_HTTP_PORT}`, alice);
    await s.opened;
    s.send({ seq: "slow-1", payload: { case: "chat", value: { sessionId: "0", content: "in flight" } } });
    await slowLogic.waitForLog((l) => l.fault === "logic.SendMessage");
    slowLogic.kill("SIGTERM");
    const ack = await s.ackFor("slow-1");
    expect(ack.error).toBe("");
    expect(ack.msgId).toBeGreaterThan(0n);
    expect((await slowLogic.exited).code).toBe(0);
    s.close();
    gw.kill("SIGTERM");
    await gw.exited;
  });

  it("shutdown - task stopped mid-event: that event is handled once and acked, the rest go to the next task, none lost", async () => {
    const slow = await cluster.startProcess("task", { RESONANCE_FAULTS: "task.before-ack=1500", RESONANCE_TASK_CONCURRENCY: "1" });
    const s = new RawSocket(cluster.urls[0]!, alice);
    await s.opened;
    const acks = [];
    for (let i = 0; i < 5; i++) {
      s.send({ seq: `mid-${i}`, payload: { case: "chat", value: { sessionId: "0", content: `mid ${i}` } } });
      acks.push(await s.ackFor(`mid-${i}`));
    }
    await slow.waitForLog((l) => l.fault === "task.before-ack");
    slow.kill("SIGTERM");
    const [report, exit] = await Promise.all([slow.report(), slow.exited]);
    expect(exit.code).toBe(0);
    expect(report.counts.mqAcked).toBeGreaterThanOrEqual(1);
    // With one handler at a time it had fetched a second event it had not started: handed back.
    expect(report.counts.mqNaked).toBeGreaterThanOrEqual(1);
    // The other tasks of the cluster (the default one) take the rest; wait for bob's inbox to have all five.
    const ids = acks.map((a) => a.msgId.toString());
    await eventually(async () => {
      const rows = await cluster.sql<{ n: string }>("select count(*) as n from inbox where owner = 'bob' and msg_id = any($1::bigint[])", [ids]);
      return rows[0]!.n === "5";
    }, 20_000, "bob's inbox to hold all five");
    const handled = await cluster.sql<{ n: string }>(
      "select count(*) as n from inbox where msg_id = any($1::bigint[]) group by owner, msg_id having count(*) > 1",
      [ids],
    );
    expect(handled).toEqual([]);
    // No redelivery of the event the stopped task acked: the consumer has nothing pending.
    const nc = await connect({ servers: NATS_URL });
    try {
      const jsm = await jetstreamManager(nc);
      await eventually(async () => {
        const info = await jsm.consumers.info(`RESONANCE_PUSH_${cluster.namespace.toUpperCase()}`, "resonance-task");
        return info.num_ack_pending === 0 && info.num_pending === 0;
      }, 10_000, "ack pending 0");
    } finally {
      await nc.close();
    }
    const fault = slow.logs().filter((l) => l.fault === "task.before-ack");
    expect(fault.length).toBe(report.counts.mqAcked);
    s.close();
  });

  it("shutdown - every WebSocket gets Goaway then a clean 1001; none sees 1006", async () => {
    const gw = await cluster.startProcess("gateway");
    const url = `http://127.0.0.1:${gw.env.RESONANCE_HTTP_PORT}`;
    const sockets = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const s = new RawSocket(url, i % 2 ? alice : bob);
        await s.opened;
        return s;
      }),
    );
    gw.kill("SIGTERM");
    const closedAt: number[] = [];
    const closes = await Promise.all(sockets.map((s) => s.closed.then((c) => (closedAt.push(Date.now()), c))));
    // Spread over the drain window (300 ms here), not all in the same instant.
    expect(Math.max(...closedAt) - Math.min(...closedAt)).toBeGreaterThanOrEqual(150);
    for (const [i, c] of closes.entries()) {
      expect(c).toMatchObject({ code: 1001, reason: "server shutdown", wasClean: true });
      const goaway = sockets[i]!.packets.find((p) => p.payload.case === "goaway");
      expect(goaway).toBeDefined();
    }
    const report = await gw.report();
    expect(report.counts.wsClosedClean).toBe(20);
    expect(report.counts.wsTerminated).toBe(0);
    expect((await gw.exited).code).toBe(0);
  });

  it.each(["logic", "task"] as const)("shutdown - after %s exits no PostgreSQL, Redis or NATS connection of it remains and its etcd key is gone at once", async (role) => {
    const p = await cluster.startProcess(role);
    const name = `resonance-${role}-${p.env.RESONANCE_INSTANCE_ID}`;
    const redis = new Redis(REDIS_URL);
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS.split(",") });
    try {
      const pgConns = () => cluster.sql("select pid from pg_stat_activity where application_name = $1", [name]);
      const redisConns = async () => String(await redis.client("LIST")).split("\n").filter((l) => l.includes(` name=${name} `));
      const etcdKeys = () => etcd.getAll().prefix(`/${cluster.namespace}/`).keys();
      const natsConns = async () => {
        const connz = (await (await fetch(`${TEST_NATS_MONITOR_URL}/connz?limit=4096`)).json()) as { connections?: Array<{ name?: string }> };
        return (connz.connections ?? []).filter((c) => c.name === name);
      };
      expect((await pgConns()).length).toBeGreaterThan(0);
      expect((await redisConns()).length).toBeGreaterThan(0);
      expect((await natsConns()).length).toBeGreaterThan(0);
      // Only logic and gateways register (task has nothing to be found for).
      expect((await etcdKeys()).some((k) => k.includes(p.env.RESONANCE_INSTANCE_ID!))).toBe(role === "logic");
      p.kill("SIGTERM");
      expect((await p.exited).code).toBe(0);
      // The lease was revoked: the key is gone now, not after its TTL.
      expect((await etcdKeys()).some((k) => k.includes(p.env.RESONANCE_INSTANCE_ID!))).toBe(false);
      await eventually(
        async () => (await pgConns()).length === 0 && (await redisConns()).length === 0 && (await natsConns()).length === 0,
        2_000,
        "server-side connections to go",
      );
    } finally {
      redis.disconnect();
      etcd.close();
    }
  });

  it("shutdown - a hanging phase: exit 1 at the configured deadline, the report names the phase", async () => {
    const p = await cluster.startProcess("gateway", { RESONANCE_SHUTDOWN_TIMEOUT: "2s", RESONANCE_FAULTS: "phase.gateway.flush-presence=hang" });
    const t0 = Date.now();
    p.kill("SIGTERM");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    const took = Date.now() - t0;
    expect(exit.code).toBe(1);
    expect(took).toBeGreaterThanOrEqual(1900);
    expect(took).toBeLessThan(6000);
    expect(report.deadlineExceeded).toBe(true);
    expect(report.phases.find((x) => x.outcome === "running")?.name).toBe("gateway.flush-presence");
  });

  it("shutdown - an unhandled rejection runs the same shutdown and exits 1", async () => {
    const p = await cluster.startProcess("gateway", { RESONANCE_FAULTS: "process.unhandled-rejection=100" });
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(1);
    expect(report.reason).toBe("unhandled rejection");
    expect(report.phases.map((x) => x.name)).toEqual(PHASES.gateway);
    expect(report.phases.every((x) => x.outcome === "ok")).toBe(true);
  });

  it("shutdown - a second signal exits at once, non-zero", async () => {
    const p = await cluster.startProcess("gateway", { RESONANCE_FAULTS: "phase.gateway.flush-presence=hang" });
    p.kill("SIGTERM");
    await p.waitForLog((l) => l.msg === "shutting down");
    p.kill("SIGTERM");
    const exit = await p.exited;
    expect(exit.code).not.toBe(0);
    expect(p.logs().some((l) => l.msg === "second signal: exiting now")).toBe(true);
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
    // What it had opened before failing (its etcd lease and entry) is gone.
    const etcd = new Etcd3({ hosts: ETCD_ENDPOINTS.split(",") });
    try {
      const keys = await etcd.getAll().prefix(`/${cluster.namespace}/`).keys();
      expect(keys.some((k) => k.includes(env.RESONANCE_INSTANCE_ID!))).toBe(false);
    } finally {
      etcd.close();
    }
  });
});

describe("shutdown (standalone all)", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "standalone", env: FAST });
  });
  afterAll(() => cluster?.destroy());

  it("shutdown - all on SIGTERM: gateway, logic, task phases in order, Goaway + 1001 to every socket, exit 0", async () => {
    const p = cluster.gateways[0]!;
    const url = cluster.urls[0]!;
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
    const p = await cluster.startProcess("all", { RESONANCE_DATA_DIR: cluster.dataDir! });
    const url = `http://127.0.0.1:${p.env.RESONANCE_HTTP_PORT}`;
    // dora registered before the first shutdown: still there.
    const login = await createApi(url, { binary: true }).auth.login({ username: "dora", password: "pw-dora-1" });
    expect(login.user?.username).toBe("dora");
    p.kill("SIGINT");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code).toBe(0);
    expect(report.reason).toBe("signal SIGINT");
    expect(report.phases.map((x) => x.name)).toEqual(PHASES.all);
  });
});
