import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
const modes: Mode[] = services.ok ? ["cluster", "standalone"] : ["standalone"];
if (!services.ok) console.warn(`delivery tests: cluster mode skipped: ${services.reason}`);

function pushOf(p: { payload: { case: string | undefined; value?: unknown } }) {
  return p.payload.case === "push" ? (p.payload.value as { msgId: bigint; seqId: bigint; sessionId: string; content: string }) : undefined;
}

describe.each(modes)("delivery (%s)", (mode) => {
  let cluster: TestCluster;
  let gw1: string;
  let gw2: string;
  const token: Record<string, string> = {};
  const sockets: RawSocket[] = [];
  const open = async (url: string, user: string) => {
    const s = new RawSocket(url, token[user]!);
    sockets.push(s);
    await s.opened;
    return s;
  };

  beforeAll(async () => {
    // A short idle timeout so the dead-connection test is quick; live sockets answer pings.
    const env = { RESONANCE_WS_IDLE_TIMEOUT: "2s", RESONANCE_WS_PING_INTERVAL: "500ms" };
    cluster = await TestCluster.start({ mode, gateways: mode === "cluster" ? 2 : 1, env });
    gw1 = cluster.urls[0]!;
    gw2 = cluster.urls[1] ?? gw1;
    for (const u of ["alice", "bob", "carol"]) {
      token[u] = (await createApi(gw1, { binary: true }).auth.register({ username: u, password: `pw-${u}-123` })).accessToken;
    }
  });
  afterAll(async () => {
    for (const s of sockets) s.ws.terminate();
    await cluster?.destroy();
  });

  async function sessionHistory(user: string, sessionId: string) {
    return (await createApi(gw1, { binary: true, token: token[user]! }).session.getHistoryMessages({ sessionId, limit: 100n })).messages;
  }

  async function inbox(user: string) {
    return (await createApi(gw2, { binary: true, token: token[user]! }).session.pullInboxDelta({ cursorId: 0n, limit: 500n })).events;
  }

  it("delivery - the WebSocket upgrade needs a valid token (401 without upgrading)", async () => {
    const bad = new RawSocket(gw1, "not-a-token");
    await expect(bad.opened).rejects.toThrow(/401/);
  });

  it("delivery - a single-chat message is acked, pushed to the peer and to the sender's other connection, and lands in history and both inboxes", async () => {
    const a1 = await open(gw1, "alice");
    const a2 = await open(gw1, "alice");
    const b = await open(gw2, "bob");
    const sessionId = (await createApi(gw1, { binary: true, token: token.alice! }).session.createSession({ members: ["bob"], type: 1 })).sessionId;

    a1.send({ seq: "c-1", payload: { case: "chat", value: { sessionId, content: "hi bob" } } });
    const ack = await a1.ackFor("c-1");
    expect(ack.error).toBe("");
    expect(ack.seqId).toBeGreaterThan(1n);
    const onBob = pushOf(await b.next((p) => pushOf(p)?.msgId === ack.msgId))!;
    const onAlice2 = pushOf(await a2.next((p) => pushOf(p)?.msgId === ack.msgId))!;
    expect(onBob).toMatchObject({ content: "hi bob", seqId: ack.seqId, sessionId });
    expect(onAlice2.content).toBe("hi bob");

    expect((await sessionHistory("bob", sessionId)).map((m) => m.content)).toContain("hi bob");
    for (const user of ["alice", "bob"]) {
      await eventually(async () => (await inbox(user)).some((e) => e.message?.msgId === ack.msgId), 10_000, `${user}'s inbox`);
    }
  });

  it("delivery - a group message reaches all three members", async () => {
    const a = await open(gw1, "alice");
    const b = await open(gw2, "bob");
    const c = await open(gw2, "carol");
    const sessionId = (await createApi(gw1, { binary: true, token: token.alice! }).session.createSession({ members: ["bob", "carol"], name: "g", type: 2 }))
      .sessionId;
    a.send({ seq: "g-1", payload: { case: "chat", value: { sessionId, content: "hello group" } } });
    const ack = await a.ackFor("g-1");
    expect(ack.error).toBe("");
    for (const s of [b, c]) expect(pushOf(await s.next((p) => pushOf(p)?.msgId === ack.msgId))!.content).toBe("hello group");
    for (const user of ["alice", "bob", "carol"]) {
      await eventually(async () => (await inbox(user)).some((e) => e.message?.msgId === ack.msgId), 10_000, `${user}'s inbox`);
    }
  });

  it("delivery - offline catch-up: bob gets exactly the five messages sent while he was away, in seq order", async () => {
    const a = await open(gw1, "alice");
    const sessionId = "single:alice:bob";
    const bob = createApi(gw2, { binary: true, token: token.bob! }).session;
    // Bob's cursor before he goes away: everything so far, once it reached his inbox.
    const before = await eventually(async () => {
      const history = await sessionHistory("bob", sessionId);
      const last = history.at(-1)!;
      const delta = await bob.pullInboxDelta({ cursorId: 0n, limit: 500n });
      return delta.events.some((e) => e.message?.msgId === last.msgId) && delta.nextCursorId;
    }, 10_000, "bob's inbox to catch up");
    for (const s of sockets.filter((s) => s.ws.url.includes(encodeURIComponent(token.bob!)))) s.close();

    const acks = [];
    for (let i = 1; i <= 5; i++) {
      a.send({ seq: `off-${i}`, payload: { case: "chat", value: { sessionId, content: `while away ${i}` } } });
      acks.push(await a.ackFor(`off-${i}`));
    }
    const delta = await eventually(async () => {
      const d = await bob.pullInboxDelta({ cursorId: before, limit: 100n });
      return d.events.length >= 5 && d;
    }, 10_000, "five inbox events");
    expect(delta.events.map((e) => e.message?.content)).toEqual([1, 2, 3, 4, 5].map((i) => `while away ${i}`));
    expect(delta.events.map((e) => e.message?.msgId)).toEqual(acks.map((x) => x.msgId));
    const seqs = delta.events.map((e) => e.message!.seqId);
    expect(seqs).toEqual([...seqs].sort((x, y) => (x < y ? -1 : 1)));
    expect(delta.hasMore).toBe(false);
  });

  it("delivery - the same client seq sent twice is one message with one ack value", async () => {
    const a = await open(gw1, "alice");
    const sessionId = "single:alice:bob";
    a.send({ seq: "dup-1", payload: { case: "chat", value: { sessionId, content: "once" } } });
    const first = await a.ackFor("dup-1");
    const a2 = await open(gw2, "alice");
    a2.send({ seq: "dup-1", payload: { case: "chat", value: { sessionId, content: "once" } } });
    const second = await a2.ackFor("dup-1");
    expect(second).toMatchObject({ error: "", msgId: first.msgId, seqId: first.seqId });
    const history = await sessionHistory("alice", sessionId);
    expect(history.filter((m) => m.content === "once")).toHaveLength(1);
  });

  it("delivery - a chat to a session of strangers is permission_denied, and the connection keeps working", async () => {
    const c = await open(gw1, "carol");
    c.send({ seq: "x-1", payload: { case: "chat", value: { sessionId: "single:alice:bob", content: "let me in" } } });
    const ack = await c.ackFor("x-1");
    expect(ack.errorCode).toBe("permission_denied");
    c.send({ seq: "x-2", payload: { case: "chat", value: { sessionId: "0", content: "room ok" } } });
    expect((await c.ackFor("x-2")).error).toBe("");
  });

  it("delivery - bad frames: unknown payload gets an error ack; undecodable gets 1003; oversized gets 1009; others are unaffected", async () => {
    const watcher = await open(gw1, "bob");
    const u = await open(gw1, "carol");
    u.send({ seq: "u-1" });
    expect((await u.ackFor("u-1")).errorCode).toBe("invalid_argument");
    u.send({ seq: "u-2", payload: { case: "chat", value: { sessionId: "0", content: "" } } });
    expect((await u.ackFor("u-2")).errorCode).toBe("invalid_argument");

    const garbage = await open(gw1, "carol");
    garbage.ws.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
    expect((await garbage.closed).code).toBe(1003);

    const big = await open(gw1, "carol");
    big.ws.send(Buffer.alloc(128 * 1024, 1));
    expect((await big.closed).code).toBe(1009);

    // Everyone else still works: carol's first socket reaches bob's.
    u.send({ seq: "u-3", payload: { case: "chat", value: { sessionId: "0", content: "still here" } } });
    const ack = await u.ackFor("u-3");
    expect(ack.error).toBe("");
    await watcher.next((p) => pushOf(p)?.msgId === ack.msgId);
  });

  it("delivery - a connection that answers no ping is dropped after the idle timeout; one that answers stays", async () => {
    const silent = new RawSocket(gw1, token.bob!, { autoPong: false });
    sockets.push(silent);
    await silent.opened;
    const alive = await open(gw1, "bob");
    const t0 = Date.now();
    const closed = await silent.closed;
    expect(closed.code).toBe(1006);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_500);
    expect(alive.ws.readyState).toBe(alive.ws.OPEN);
  });

  it("delivery - a socket is a push target as soon as its upgrade completes: a message sent right after reaches it", async () => {
    const sender = await open(gw1, "alice");
    for (let i = 0; i < 3; i++) {
      // A fresh socket of carol on the other gateway, and at once a message to the room.
      const fresh = await open(gw2, "carol");
      sender.send({ seq: `at-once-${i}`, payload: { case: "chat", value: { sessionId: "0", content: `at once ${i}` } } });
      const ack = await sender.ackFor(`at-once-${i}`);
      expect(ack.error).toBe("");
      await fresh.next((p) => pushOf(p)?.msgId === ack.msgId);
      fresh.close();
      await fresh.closed;
    }
  });

  it("delivery - pulse is answered with pulse", async () => {
    const s = await open(gw2, "alice");
    s.send({ payload: { case: "pulse", value: {} } });
    await s.next((p) => p.payload.case === "pulse");
  });
});
