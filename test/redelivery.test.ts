import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket, apiClients } from "./support/raw.js";
import { requireServices } from "./support/services.js";

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
    const api = apiClients(url, { binary: true });
    const alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    await api.auth.register({ username: "bob", password: "pw-bob-12" });
    const sessionId = (await apiClients(url, { binary: true, token: alice }).session.createSession({ members: ["bob"], type: 1 })).sessionId;

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
    expect((await rowsFor()).map((r) => r.owner)).toEqual(["alice", "bob"]);
    const dupes = await cluster.sql<{ n: string }>("select count(*) - count(distinct (owner, session_id, seq_id)) as n from inbox");
    expect(dupes[0]!.n).toBe("0");
    a.ws.terminate();
  });
});
