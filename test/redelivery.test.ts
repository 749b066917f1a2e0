import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthService as LogicAuthService } from "../src/gen/resonance/logic/v1/logic_pb.js";
import { NATS_URL, TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
if (!services.ok) console.warn(`redelivery tests skipped: ${services.reason}`);

describe.skipIf(!services.ok)("redelivery (cluster)", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    // A short ack wait so the event of a killed task comes back quickly.
    cluster = await TestCluster.start({ mode: "cluster", gateways: 1, tasks: 0, env: { RESONANCE_ACK_WAIT: "2s" } });
  });
  afterAll(() => cluster?.destroy());

  it("redelivery - a task killed between its inbox write and its ack: the event comes back, no inbox row is duplicated", async () => {
    const url = cluster.urls[0]!;
    const api = createApi(url, { binary: true });
    const alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    await api.auth.register({ username: "bob", password: "pw-bob-12" });
    const sessionId = (await createApi(url, { binary: true, token: alice }).session.createSession({ members: ["bob"], type: 1 })).sessionId;

    // This task writes the inbox, then hangs before acking.
    const stuck = await cluster.startProcess("task", { RESONANCE_FAULTS: "task.before-ack=hang" });
    const a = new RawSocket(url, alice);
    await a.opened;
    a.send({ seq: "r-1", payload: { case: "chat", value: { sessionId, content: "survive the crash" } } });
    const ack = await a.ackFor("r-1");
    expect(ack.error).toBe("");
    const rowsFor = () => cluster.sql<{ owner: string }>("select owner from inbox where msg_id = $1 order by owner", [ack.msgId.toString()]);
    await eventually(async () => (await rowsFor()).length === 2, 15_000, "inbox rows written by the stuck task");

    await stuck.stop(); // SIGKILL: no ack was sent.
    const fresh = await cluster.startProcess("task");
    // The redelivered event is handled (and acked) by the new task: its counter says so.
    const metricsUrl = `http://127.0.0.1:${fresh.env.RESONANCE_METRICS_PORT}/metrics`;
    await eventually(async () => {
      const text = await (await fetch(metricsUrl)).text();
      const m = /resonance_events_handled_total\{outcome="acked"\} (\d+)/.exec(text);
      return m && Number(m[1]) >= 2; // the session's system message and the chat
    }, 20_000, "the new task to ack the redelivered events");
    // Exactly those two came back: the stuck task acked nothing.
    const text = await (await fetch(metricsUrl)).text();
    expect(text).toMatch(/resonance_events_handled_total\{outcome="acked"\} 2\n/);
    expect((await rowsFor()).map((r) => r.owner)).toEqual(["alice", "bob"]);
    const dupes = await cluster.sql<{ n: string }>("select count(*) - count(distinct (owner, session_id, seq_id)) as n from inbox");
    expect(dupes[0]!.n).toBe("0");
    a.ws.terminate();
  });

  it("redelivery - an undecodable event goes to the dead-letter subject, is acked and counted, and delivery goes on", async () => {
    const task = cluster.tasks.at(-1)!;
    const metricsUrl = `http://127.0.0.1:${task.env.RESONANCE_METRICS_PORT}/metrics`;
    const ns = cluster.namespace;
    const nc = await connect({ servers: NATS_URL });
    try {
      const js = jetstream(nc);
      await js.publish(`${ns}.resonance.push.event.v1`, new Uint8Array([0xff, 0xff, 0xff]), { msgID: "garbage-1" });
      await task.waitForLog((l) => l.msg === "undecodable event moved to the dead-letter subject");
      const text = await (await fetch(metricsUrl)).text();
      expect(text).toMatch(/resonance_events_handled_total\{outcome="dead-letter"\} 1/);
      const jsm = await jetstreamManager(nc);
      const stream = `RESONANCE_PUSH_${ns.toUpperCase()}`;
      const dead = await jsm.streams.getMessage(stream, { last_by_subj: `${ns}.resonance.push.dead.v1` });
      expect([...dead!.data]).toEqual([0xff, 0xff, 0xff]);
      await eventually(async () => (await jsm.consumers.info(stream, "resonance-task")).num_ack_pending === 0, 5_000, "ack pending 0");
    } finally {
      await nc.close();
    }
  });

  it("operations - internal gRPC refuses calls without the shared secret", async () => {
    const logicAddress = `127.0.0.1:${cluster.logics[0]!.env.RESONANCE_LOGIC_PORT}`;
    const call = (secret?: string) =>
      createClient(
        LogicAuthService,
        createGrpcTransport({
          baseUrl: `http://${logicAddress}`,
          interceptors: secret ? [(next) => (req) => (req.header.set("x-resonance-internal", secret), next(req))] : [],
        }),
      ).validateToken({ accessToken: "x" });
    await expect(call()).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(call("wrong-secret")).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect((await call(cluster.baseEnv.RESONANCE_INTERNAL_SECRET)).valid).toBe(false);
  });

  it("operations - health, readiness and Prometheus metrics on every service", async () => {
    for (const p of cluster.all.filter((x) => x.proc.exitCode === null && x.proc.signalCode === null)) {
      const base = `http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}`;
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      expect((await fetch(`${base}/readyz`)).status).toBe(200);
    }
    const metricsOf = async (p: { env: Record<string, string> }) => (await fetch(`http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}/metrics`)).text();
    const gw = await metricsOf(cluster.gateways[0]!);
    for (const m of ["resonance_ws_connections", "resonance_messages_in_total", "resonance_ack_latency_seconds_bucket", "resonance_messages_out_total"]) {
      expect(gw).toContain(m);
    }
    expect(await metricsOf(cluster.logics[0]!)).toContain("resonance_outbox_backlog");
    const task = await metricsOf(cluster.tasks.at(-1)!);
    expect(task).toContain("resonance_consumer_ack_pending");
    expect(task).toContain("resonance_consumer_lag");
    const lines = cluster.gateways[0]!.logs();
    expect(lines.every((l) => l.service === "gateway" && l.instance === cluster.gateways[0]!.env.RESONANCE_INSTANCE_ID)).toBe(true);
  });
});
