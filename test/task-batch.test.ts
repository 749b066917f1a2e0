import { create, toBinary } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PushEventSchema } from "../src/gen/resonance/mq/v1/mq_pb.js";
import { createApi } from "../src/client/api.js";
import { NATS_URL, TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
if (!services.ok) console.warn(`task batch tests skipped: ${services.reason}`);

/** The value of `resonance_events_handled_total{outcome}` (0 when absent). */
function handled(metrics: string, outcome: string): number {
  const m = new RegExp(`resonance_events_handled_total\\{outcome="${outcome}"\\} (\\d+)`).exec(metrics);
  return m ? Number(m[1]) : 0;
}

describe.skipIf(!services.ok)("task batches (cluster)", () => {
  let cluster: TestCluster;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  let stream: string;

  beforeAll(async () => {
    // No task yet: the events wait in the stream and the first task takes them in one go.
    cluster = await TestCluster.start({ mode: "cluster", gateways: 1, tasks: 0 });
    stream = `RESONANCE_PUSH_${cluster.namespace.toUpperCase()}`;
    nc = await connect({ servers: NATS_URL });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await nc?.close();
    await cluster?.destroy();
  });

  it("task - a batch holding poison events: they go to the dead letters alone; the rest are written, pushed and acked once", async () => {
    const url = cluster.urls[0]!;
    const api = createApi(url, { binary: true });
    const alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    const bob = (await api.auth.register({ username: "bob", password: "pw-bob-12" })).accessToken;
    const sessionId = (await createApi(url, { binary: true, token: alice }).session.createSession({ members: ["bob"], type: 1 })).sessionId;
    const a = new RawSocket(url, alice);
    const b = new RawSocket(url, bob);
    await Promise.all([a.opened, b.opened]);

    const ns = cluster.namespace;
    const subject = `${ns}.resonance.push.event.v1`;
    const js = jetstream(nc);
    const acks: Array<Awaited<ReturnType<RawSocket["ackFor"]>>> = [];
    const chat = async (i: number) => {
      a.send({ seq: `b-${i}`, payload: { case: "chat", value: { sessionId, content: `batch ${i}` } } });
      acks.push(await a.ackFor(`b-${i}`));
    };
    for (let i = 0; i < 3; i++) await chat(i);
    // Not protobuf at all, and a well-formed event the inbox could never store (a NUL in its session id).
    await js.publish(subject, new Uint8Array([0xff, 0xff, 0xff]), { msgID: "poison-garbage" });
    const nul = create(PushEventSchema, { msgId: 9_000_001n, seqId: 1n, sessionId: "bad\u0000id", fromUsername: "alice", content: "x", type: "text" });
    await js.publish(subject, toBinary(PushEventSchema, nul), { msgID: "poison-nul" });
    for (let i = 3; i < 6; i++) await chat(i);
    expect(acks.every((k) => k.error === "")).toBe(true);
    // The session's system message, six chats and two poison events are waiting.
    await eventually(async () => (await jsm.consumers.info(stream, "resonance-task")).num_pending === 9, 15_000, "nine events in the stream");

    const task = await cluster.startProcess("task");
    await eventually(async () => {
      const info = await jsm.consumers.info(stream, "resonance-task");
      return info.num_pending === 0 && info.num_ack_pending === 0;
    }, 20_000, "every event settled");

    const metrics = await (await fetch(`http://127.0.0.1:${task.env.RESONANCE_METRICS_PORT}/metrics`)).text();
    expect([handled(metrics, "acked"), handled(metrics, "dead-letter"), handled(metrics, "retry")]).toEqual([7, 2, 0]);
    const dead = await jsm.streams.info(stream, { subjects_filter: `${ns}.resonance.push.dead.v1` });
    expect(dead.state.subjects?.[`${ns}.resonance.push.dead.v1`]).toBe(2);
    const reasons = task.logs().filter((l) => l.msg === "undecodable event moved to the dead-letter subject").map((l) => l.id).sort();
    expect(reasons).toEqual(["poison-garbage", "poison-nul"]);

    // Both members have every message once, in seq order; bob got each chat pushed.
    const ids = acks.map((k) => k.msgId.toString());
    for (const owner of ["alice", "bob"]) {
      const rows = await cluster.sql<{ msg_id: string; seq_id: string }>("select msg_id, seq_id from inbox where owner = $1 and session_id = $2 order by id", [owner, sessionId]);
      expect(rows.map((r) => Number(r.seq_id))).toEqual([1, 2, 3, 4, 5, 6, 7]);
      expect(rows.slice(1).map((r) => r.msg_id)).toEqual(ids);
    }
    for (const [i, id] of ids.entries()) {
      const push = await b.next((p) => p.payload.case === "push" && p.payload.value.msgId.toString() === id);
      expect(push.payload.value).toMatchObject({ content: `batch ${i}`, sessionId });
    }
    a.close();
    b.close();
  });
});
