import { afterAll, beforeAll, expect, it } from "vitest";
import { TestCluster } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { describeWith, requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";
import { ResonanceClient } from "../src/client/index.js";
import { ChatService } from "../src/gen/resonance/logic/v1/logic_pb.js";
import { Channels } from "../src/rpc/channels.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

const baseUrl = (p: ServiceProcess) => `http://127.0.0.1:${p.env.RESONANCE_HTTP_PORT}`;
const logicAddress = (p: ServiceProcess) => `127.0.0.1:${p.env.RESONANCE_LOGIC_PORT}`;

/** A counter's value from a process's /metrics (0 when absent). */
async function counter(p: ServiceProcess, name: string, labels: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name}{${labels}}`));
  return line ? Number(line.split(" ").pop()) : 0;
}

describeWith(services, "gateway → logic dispatch (cluster)", () => {
  let cluster: TestCluster;
  let nextUser = 0;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 0 });
  });
  afterAll(async () => {
    await cluster?.destroy();
  });

  /** Registers two fresh users through `url`; resolves with their names and tokens. */
  async function pair(url: string): Promise<{ alice: string; bob: string; aliceToken: string; bobToken: string }> {
    const api = createApi(url, { binary: true });
    const n = ++nextUser;
    const [a, b] = await Promise.all(
      [`alice${n}`, `bob${n}`].map(async (name) => (await api.auth.register({ username: name, password: `pw-${name}-123` })).accessToken),
    );
    return { alice: `alice${n}`, bob: `bob${n}`, aliceToken: a!, bobToken: b! };
  }

  /** How many messages each client id of `sender` has (a lost one has 0, a duplicate 2). */
  async function committed(sender: string): Promise<Map<string, number>> {
    const rows = await cluster.sql<{ client_msg_id: string; n: string }>(
      "select client_msg_id, count(*) as n from messages where sender = $1 and client_msg_id is not null group by client_msg_id",
      [sender],
    );
    return new Map(rows.map((r) => [r.client_msg_id, Number(r.n)]));
  }

  it("dispatch - a logic instance that is draining refuses a batch; the whole batch is sent to the other instance and every chat is acked once", { timeout: 120_000 }, async () => {
    // `draining` keeps one call in hand (it never ends), so its shutdown stays in the phase
    // where new calls are refused with unavailable; `other` serves.
    const draining = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.SendMessages=hang" });
    const other = cluster.logics[0]!;
    // A static list: the gateway does not learn from the registry that `draining` drains, so
    // its batches do reach it and are refused.
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: `${logicAddress(draining)},${logicAddress(other)}` });
    const { alice, bob, aliceToken } = await pair(baseUrl(gw));
    const channels = new Channels({ timeoutMs: 120_000, secret: cluster.baseEnv.RESONANCE_INTERNAL_SECRET });
    try {
      const held = channels.client(ChatService, logicAddress(draining)).sendMessages({ items: [] }).catch(() => undefined);
      await draining.waitForLog((l) => l.fault === "logic.SendMessages");
      draining.kill("SIGTERM");
      await draining.waitForLog((l) => l.msg === "shutdown phase started" && l.phase === "logic.stop-rpc");

      const s = new RawSocket(baseUrl(gw), aliceToken);
      await s.opened;
      const seqs: string[] = [];
      // One at a time (each alone in its call, to whichever instance is chosen), then a burst.
      for (let i = 0; i < 6; i++) {
        const seq = `one-${i}`;
        seqs.push(seq);
        s.send({ seq, payload: { case: "chat", value: { toUsername: bob, content: `one ${i}` } } });
        expect((await s.ackFor(seq)).errorCode).toBe("");
      }
      const burst = Array.from({ length: 20 }, (_, i) => `burst-${i}`);
      for (const seq of burst) s.send({ seq, payload: { case: "chat", value: { toUsername: bob, content: seq } } });
      seqs.push(...burst);
      const acks = await Promise.all(burst.map((seq) => s.ackFor(seq, 30_000)));
      expect(acks.map((a) => a.errorCode).filter(Boolean)).toEqual([]);

      // At least one batch went to the draining instance, was refused, and moved whole.
      expect(await counter(gw, "resonance_chat_batches_total", 'outcome="moved"')).toBeGreaterThan(0);
      // Every chat committed exactly once, none by the draining instance's held call.
      const counts = await committed(alice);
      expect(seqs.filter((seq) => counts.get(seq) !== 1)).toEqual([]);
      expect(counts.size).toBe(seqs.length);
      s.close();
      channels.close();
      await held;
    } finally {
      channels.close();
      draining.kill("SIGKILL");
      gw.kill("SIGKILL");
    }
  });

  it("dispatch - beyond the connection's window of unacked chats, the excess is answered resource_exhausted at once; the SDK resends it and nothing is lost", { timeout: 120_000 }, async () => {
    const window = 4;
    // Every call spends 1.5 s in logic, so the first chats are still unacked when the rest arrive.
    const slow = await cluster.startProcess("logic", { RESONANCE_FAULTS: "logic.SendMessages=1500" });
    const gw = await cluster.startProcess("gateway", { RESONANCE_LOGIC_ADDRESSES: logicAddress(slow), RESONANCE_WS_CHAT_WINDOW: String(window) });
    try {
      const { alice, bob, aliceToken } = await pair(baseUrl(gw));
      const s = new RawSocket(baseUrl(gw), aliceToken);
      await s.opened;
      const seqs = Array.from({ length: 10 }, (_, i) => `w-${i}`);
      for (const seq of seqs) s.send({ seq, payload: { case: "chat", value: { toUsername: bob, content: seq } } });
      const acks = await Promise.all(seqs.map((seq) => s.ackFor(seq, 30_000)));
      const codes = acks.map((a) => a.errorCode);
      expect(codes.slice(0, window)).toEqual(Array(window).fill(""));
      expect(codes.slice(window)).toEqual(Array(seqs.length - window).fill("resource_exhausted"));
      // The excess was answered before any accepted chat: it did not wait for logic.
      const order = s.packets.filter((p) => p.payload.case === "ack").map((p) => (p.payload.value as { refSeq: string }).refSeq);
      expect(order.slice(0, seqs.length - window).sort()).toEqual(seqs.slice(window).sort());
      expect(await counter(gw, "resonance_chats_shed_total", 'reason="window"')).toBe(seqs.length - window);
      s.close();

      // The SDK takes resource_exhausted as "wait and resend the same seq": 12 sends at once
      // through a window of 4 all succeed, each committed once.
      const client = new ResonanceClient({ urls: [baseUrl(gw)], username: alice, password: `pw-${alice}-123`, binary: true });
      await client.start();
      try {
        const sdkSeqs = Array.from({ length: 12 }, (_, i) => `sdk-${i}`);
        const sent = await Promise.all(sdkSeqs.map((seq) => client.send({ sessionId: "", toUsername: bob, content: seq }, seq)));
        expect(sent.every((a) => a.msgId > 0n)).toBe(true);
        expect(client.stats().nonRetryableErrors).toBe(0);
        const counts = await eventually(async () => {
          const c = await committed(alice);
          return c.size === seqs.slice(0, window).length + sdkSeqs.length ? c : false;
        }, 10_000, "every accepted chat committed");
        expect([...seqs.slice(0, window), ...sdkSeqs].filter((seq) => counts.get(seq) !== 1)).toEqual([]);
      } finally {
        await client.close();
      }
    } finally {
      gw.kill("SIGKILL");
      slow.kill("SIGKILL");
    }
  });
});
