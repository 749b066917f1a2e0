import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, expect, it } from "vitest";
import { NATS_URL, TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { describeWith, requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

describeWith(services, "redelivery (cluster)", () => {
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

    // The only task: it writes the inbox, then hangs before acking.
    for (const t of cluster.tasks.filter((x) => x.alive)) {
      t.kill("SIGTERM");
      await t.exited;
    }
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
    // Counted per (owner, msg_id), not on the table's own unique key; and as bob reads his inbox.
    const twice = await cluster.sql("select owner, msg_id from inbox group by owner, msg_id having count(*) > 1");
    expect(twice).toEqual([]);
    const bobToken = (await api.auth.login({ username: "bob", password: "pw-bob-12" })).accessToken;
    const delta = await createApi(url, { binary: true, token: bobToken }).session.pullInboxDelta({ cursorId: 0n, limit: 500n });
    expect(delta.events.filter((e) => e.message?.msgId === ack.msgId)).toHaveLength(1);
    a.ws.terminate();
  });

  it("redelivery - an undecodable event goes to the dead-letter subject, is acked and counted, and delivery goes on", async () => {
    const task = cluster.tasks.find((p) => p.alive) ?? (await cluster.startProcess("task"));
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
});
