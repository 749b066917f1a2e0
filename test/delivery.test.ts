import { afterAll, beforeAll, expect, it } from "vitest";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { NOTHING_NEEDED, describeWith, requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

/** A short idle timeout so the dead-connection test is quick; live sockets answer pings. */
const IDLE_MS = 2_000;

function pushOf(p: { payload: { case: string | undefined; value?: unknown } }) {
  return p.payload.case === "push" ? (p.payload.value as { msgId: bigint; seqId: bigint; sessionId: string; content: string }) : undefined;
}

for (const mode of ["cluster", "standalone"] as const satisfies readonly Mode[]) {
  describeWith(mode === "cluster" ? services : NOTHING_NEEDED, `delivery (${mode})`, () => {
    let cluster: TestCluster;
    let gw1: string;
    let gw2: string;
    const sockets: RawSocket[] = [];
    let nextUser = 0;

    beforeAll(async () => {
      cluster = await TestCluster.start({ mode, gateways: mode === "cluster" ? 2 : 1, env: { RESONANCE_WS_IDLE_TIMEOUT: `${IDLE_MS}ms`, RESONANCE_WS_PING_INTERVAL: "500ms" } });
      gw1 = cluster.urls[0]!;
      gw2 = cluster.urls[1] ?? gw1;
    });
    afterAll(async () => {
      for (const s of sockets) s.ws.terminate();
      await cluster?.destroy();
    });

    /** Registers fresh users for one test (names get a unique suffix); resolves with their name and token. */
    async function users(...names: string[]): Promise<Array<{ name: string; token: string }>> {
      const api = createApi(gw1, { binary: true });
      const n = ++nextUser;
      return Promise.all(
        names.map(async (base) => {
          const name = `${base}${n}`;
          return { name, token: (await api.auth.register({ username: name, password: `pw-${name}-123` })).accessToken };
        }),
      );
    }

    const open = async (url: string, token: string, opts?: { autoPong?: boolean }) => {
      const s = new RawSocket(url, token, opts);
      sockets.push(s);
      await s.opened;
      return s;
    };

    const session = (token: string, url = gw1) => createApi(url, { binary: true, token }).session;

    async function hasInInbox(token: string, msgId: bigint): Promise<boolean> {
      return (await session(token, gw2).pullInboxDelta({ cursorId: 0n, limit: 500n })).events.some((e) => e.message?.msgId === msgId);
    }

    it("delivery - the WebSocket upgrade needs a valid token (401 without upgrading)", async () => {
      const bad = new RawSocket(gw1, "not-a-token");
      await expect(bad.opened).rejects.toThrow(/401/);
    });

    it("delivery - a single-chat message is acked, pushed to the peer and to the sender's other connection, and lands in history and both inboxes", async () => {
      const [alice, bob] = await users("alice", "bob");
      const a1 = await open(gw1, alice!.token);
      const a2 = await open(gw1, alice!.token);
      const b = await open(gw2, bob!.token);
      const sessionId = (await session(alice!.token).createSession({ members: [bob!.name], type: 1 })).sessionId;

      a1.send({ seq: "c-1", payload: { case: "chat", value: { sessionId, content: "hi bob" } } });
      const ack = await a1.ackFor("c-1");
      expect(ack.error).toBe("");
      expect(ack.seqId).toBe(2n); // after the session's system message
      const onBob = pushOf(await b.next((p) => pushOf(p)?.msgId === ack.msgId))!;
      const onAlice2 = pushOf(await a2.next((p) => pushOf(p)?.msgId === ack.msgId))!;
      expect(onBob).toMatchObject({ content: "hi bob", seqId: ack.seqId, sessionId });
      expect(onAlice2.content).toBe("hi bob");

      const history = await session(bob!.token).getHistoryMessages({ sessionId, limit: 100n });
      expect(history.messages.map((m) => m.content)).toContain("hi bob");
      for (const u of [alice!, bob!]) await eventually(() => hasInInbox(u.token, ack.msgId), 10_000, `${u.name}'s inbox`);
    });

    it("delivery - a group message reaches all three members", async () => {
      const [alice, bob, carol] = await users("alice", "bob", "carol");
      const a = await open(gw1, alice!.token);
      const b = await open(gw2, bob!.token);
      const c = await open(gw2, carol!.token);
      const sessionId = (await session(alice!.token).createSession({ members: [bob!.name, carol!.name], name: "g", type: 2 })).sessionId;
      a.send({ seq: "g-1", payload: { case: "chat", value: { sessionId, content: "hello group" } } });
      const ack = await a.ackFor("g-1");
      expect(ack.error).toBe("");
      for (const s of [b, c]) expect(pushOf(await s.next((p) => pushOf(p)?.msgId === ack.msgId))!.content).toBe("hello group");
      for (const u of [alice!, bob!, carol!]) await eventually(() => hasInInbox(u.token, ack.msgId), 10_000, `${u.name}'s inbox`);
    });

    it("delivery - offline catch-up: bob gets exactly the five messages sent while he was away, in seq order", async () => {
      const [alice, bob] = await users("alice", "bob");
      const a = await open(gw1, alice!.token);
      const sessionId = (await session(alice!.token).createSession({ members: [bob!.name], type: 1 })).sessionId;
      const b = await open(gw2, bob!.token);
      a.send({ seq: "before", payload: { case: "chat", value: { sessionId, content: "before he left" } } });
      const seen = await a.ackFor("before");
      await b.next((p) => pushOf(p)?.msgId === seen.msgId);
      // Bob's cursor when he leaves: everything so far, once it reached his inbox.
      const bobApi = session(bob!.token, gw2);
      const before = await eventually(async () => {
        const delta = await bobApi.pullInboxDelta({ cursorId: 0n, limit: 500n });
        return delta.events.some((e) => e.message?.msgId === seen.msgId) && delta.nextCursorId;
      }, 10_000, "bob's inbox to catch up");
      b.close();
      await b.closed;

      const acks = [];
      for (let i = 1; i <= 5; i++) {
        a.send({ seq: `off-${i}`, payload: { case: "chat", value: { sessionId, content: `while away ${i}` } } });
        acks.push(await a.ackFor(`off-${i}`));
      }
      const delta = await eventually(async () => {
        const d = await bobApi.pullInboxDelta({ cursorId: before, limit: 100n });
        return d.events.length >= 5 && d;
      }, 10_000, "five inbox events");
      expect(delta.events.map((e) => e.message?.content)).toEqual([1, 2, 3, 4, 5].map((i) => `while away ${i}`));
      expect(delta.events.map((e) => e.message?.msgId)).toEqual(acks.map((x) => x.msgId));
      const seqs = delta.events.map((e) => e.message!.seqId);
      expect(seqs).toEqual([...seqs].sort((x, y) => (x < y ? -1 : 1)));
      expect(delta.hasMore).toBe(false);
    });

    it("delivery - the same client seq sent twice is one message with one ack value", async () => {
      const [alice, bob] = await users("alice", "bob");
      const sessionId = (await session(alice!.token).createSession({ members: [bob!.name], type: 1 })).sessionId;
      const a = await open(gw1, alice!.token);
      a.send({ seq: "dup-1", payload: { case: "chat", value: { sessionId, content: "once" } } });
      const first = await a.ackFor("dup-1");
      const a2 = await open(gw2, alice!.token);
      a2.send({ seq: "dup-1", payload: { case: "chat", value: { sessionId, content: "once" } } });
      const second = await a2.ackFor("dup-1");
      expect(second).toMatchObject({ error: "", msgId: first.msgId, seqId: first.seqId });
      const history = await session(alice!.token).getHistoryMessages({ sessionId, limit: 100n });
      expect(history.messages.filter((m) => m.content === "once")).toHaveLength(1);
    });

    it("delivery - a chat to a session of strangers is permission_denied, and the connection keeps working", async () => {
      const [alice, bob, carol] = await users("alice", "bob", "carol");
      const sessionId = (await session(alice!.token).createSession({ members: [bob!.name], type: 1 })).sessionId;
      const c = await open(gw1, carol!.token);
      c.send({ seq: "x-1", payload: { case: "chat", value: { sessionId, content: "let me in" } } });
      const ack = await c.ackFor("x-1");
      expect(ack.errorCode).toBe("permission_denied");
      c.send({ seq: "x-2", payload: { case: "chat", value: { sessionId: "0", content: "room ok" } } });
      expect((await c.ackFor("x-2")).error).toBe("");
    });

    it("delivery - bad frames: unknown payload gets an error ack; undecodable gets 1003; oversized gets 1009; others are unaffected", async () => {
      const [bob, carol] = await users("bob", "carol");
      const watcher = await open(gw1, bob!.token);
      const u = await open(gw1, carol!.token);
      u.send({ seq: "u-1" });
      expect((await u.ackFor("u-1")).errorCode).toBe("invalid_argument");
      u.send({ seq: "u-2", payload: { case: "chat", value: { sessionId: "0", content: "" } } });
      expect((await u.ackFor("u-2")).errorCode).toBe("invalid_argument");

      const garbage = await open(gw1, carol!.token);
      garbage.ws.send(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
      expect((await garbage.closed).code).toBe(1003);

      const big = await open(gw1, carol!.token);
      big.ws.send(Buffer.alloc(128 * 1024, 1));
      expect((await big.closed).code).toBe(1009);

      // Everyone else still works: carol's first socket reaches bob's.
      u.send({ seq: "u-3", payload: { case: "chat", value: { sessionId: "0", content: "still here" } } });
      const ack = await u.ackFor("u-3");
      expect(ack.error).toBe("");
      await watcher.next((p) => pushOf(p)?.msgId === ack.msgId);
    });

    it("delivery - a connection that answers no ping is dropped after the idle timeout; one that answers outlives its own", async () => {
      const [bob] = await users("bob");
      // Taken before the upgrade request: the server's last word from it is later than this.
      const silentOpened = performance.now();
      const silent = await open(gw1, bob!.token, { autoPong: false });
      const alive = await open(gw1, bob!.token);
      const aliveOpened = performance.now();
      const closed = await silent.closed;
      expect(closed.code).toBe(1006);
      // Not before its deadline.
      expect(performance.now() - silentOpened).toBeGreaterThanOrEqual(IDLE_MS);
      // The live one is still pinged, and still open, well past the moment its own deadline would have been.
      await eventually(() => alive.pings.some((t) => t > aliveOpened + 2 * IDLE_MS), 4 * IDLE_MS + 10_000, "a ping past twice the idle timeout");
      expect(alive.ws.readyState).toBe(alive.ws.OPEN);
    });

    it("delivery - a socket is a push target as soon as its upgrade completes: a message sent right after reaches it", async () => {
      const [alice, carol] = await users("alice", "carol");
      const sender = await open(gw1, alice!.token);
      for (let i = 0; i < 3; i++) {
        // A fresh socket of carol on the other gateway, and at once a message to the room.
        const fresh = await open(gw2, carol!.token);
        sender.send({ seq: `at-once-${i}`, payload: { case: "chat", value: { sessionId: "0", content: `at once ${i}` } } });
        const ack = await sender.ackFor(`at-once-${i}`);
        expect(ack.error).toBe("");
        await fresh.next((p) => pushOf(p)?.msgId === ack.msgId);
        fresh.close();
        await fresh.closed;
      }
    });

    it("delivery - pulse is answered with pulse", async () => {
      const [alice] = await users("alice");
      const s = await open(gw2, alice!.token);
      s.send({ payload: { case: "pulse", value: {} } });
      await s.next((p) => p.payload.case === "pulse");
    });
  });
}
