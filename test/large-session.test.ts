import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApi } from "../src/client/api.js";
import { ResonanceClient } from "../src/client/client.js";
import { createStorage } from "../src/infra/storage/index.js";
import { createLogger } from "../src/observability/log.js";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
if (!services.ok) console.warn(`large session cluster tests skipped: ${services.reason}`);

/** Members bulk-inserted into the room: past PGlite's and PostgreSQL's lock tables in one inbox statement. */
const BULK = 20_000;

/** Bulk members of the room "0", and the room's member count kept in step (what registration does one by one). */
const BULK_SQL = `
  insert into users (username, nickname, password_hash) select 'bulk' || g, '', 'x' from generate_series(1, ${BULK}) g;
  insert into session_members (session_id, username) select '0', 'bulk' || g from generate_series(1, ${BULK}) g;
  update sessions set member_count = (select count(*) from session_members where session_id = '0') where id = '0';`;

/** A counter of a process's /metrics (0 when absent). */
async function counter(p: ServiceProcess, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}/metrics`)).text();
  const m = new RegExp(`^${name} (\\d+)`, "m").exec(text);
  return m ? Number(m[1]) : 0;
}

async function register(url: string, username: string): Promise<string> {
  return (await createApi(url, { binary: true }).auth.register({ username, password: `pw-${username}-1` })).accessToken;
}

/**
 * A deployment whose room has `users` (registered, their tokens put in `tokens`) and the bulk
 * members; resolves with it and the process whose metrics count the task's work.
 */
async function withBulkRoom(mode: Mode, users: string[], tokens: Record<string, string>, env: Record<string, string> = {}) {
  const cluster = await TestCluster.start({ mode, gateways: mode === "cluster" ? 2 : 1, env });
  for (const u of users) tokens[u] = await register(cluster.urls[0]!, u);
  if (mode === "cluster") {
    await cluster.sql(BULK_SQL);
    return { cluster, task: cluster.tasks[0]! };
  }
  // PGlite is opened by one process only: stop the server, bulk insert, start it again.
  const old = cluster.gateways[0]!;
  old.kill("SIGTERM");
  await old.exited;
  cluster.gateways.splice(0, 1);
  const db = createStorage({ databaseUrl: undefined, applicationName: "test", dataDir: cluster.dataDir!, log: createLogger("test", "large", "silent") });
  await db.start();
  await db.query(BULK_SQL);
  await db.close();
  return { cluster, task: await cluster.replace(old) };
}

for (const mode of ["cluster", "standalone"] as const satisfies readonly Mode[]) {
  describe.skipIf(mode === "cluster" && !services.ok)(`a room of ${BULK} members (${mode})`, () => {
    let cluster: TestCluster;
    const tokens: Record<string, string> = {};
    /** The process whose metrics count the task's work. */
    let task: ServiceProcess;

    beforeAll(async () => {
      ({ cluster, task } = await withBulkRoom(mode, ["alice", "bob", "carol", "dave"], tokens));
    }, 120_000);
    afterAll(async () => {
      await cluster?.destroy();
    });

    it("a post reaches online members on every gateway with no inbox rows and no route lookups; an offline member finds it by seq", async () => {
      const urls = cluster.urls;
      const bob = new RawSocket(urls[0]!, tokens.bob!);
      const carol = new RawSocket(urls[urls.length - 1]!, tokens.carol!);
      const alice = new RawSocket(urls[0]!, tokens.alice!);
      await Promise.all([bob.opened, carol.opened, alice.opened]);
      const before = { rows: await counter(task, "resonance_inbox_rows_total"), lookups: await counter(task, "resonance_route_lookups_total") };

      alice.send({ seq: "room-1", payload: { case: "chat", value: { sessionId: "0", content: "hello twenty thousand" } } });
      const ack = await alice.ackFor("room-1");
      expect(ack.error).toBe("");
      const isPost = (p: { payload: { case?: string; value?: unknown } }) =>
        p.payload.case === "push" && (p.payload.value as { seqId: bigint }).seqId === ack.seqId;
      await Promise.all([bob.next(isPost, 20_000), carol.next(isPost, 20_000), alice.next(isPost, 20_000)]);

      await eventually(async () => (await counter(task, "resonance_large_events_total")) >= 1, 10_000, "the task handled the large event");
      // The task's work for the post does not grow with the member count: no inbox row, no route lookup.
      expect(await counter(task, "resonance_inbox_rows_total")).toBe(before.rows);
      expect(await counter(task, "resonance_route_lookups_total")).toBe(before.lookups);

      // Dave was offline: the room is large and moved past his read position; the post is there by seq.
      const dave = createApi(urls[0]!, { binary: true, token: tokens.dave! });
      const moved = (await dave.session.syncSessions({ known: [] })).moved;
      expect(moved.map((m) => [m.sessionId, m.maxSeqId])).toEqual([["0", ack.seqId]]);
      const page = await dave.session.getHistoryMessages({ sessionId: "0", afterSeq: moved[0]!.afterSeq, limit: 100n });
      expect(page.messages.map((m) => m.content)).toContain("hello twenty thousand");
      expect((await dave.session.pullInboxDelta({ cursorId: 0n, limit: 100n })).events.filter((e) => e.message?.sessionId === "0")).toEqual([]);

      // And the SDK does it by itself when Dave connects: the post once, fetched by seq.
      const daveClient = new ResonanceClient({ urls: [urls[0]!], username: "dave", password: "pw-dave-1", binary: true });
      const got: Array<[string, string]> = [];
      daveClient.onMessage((m, source) => {
        if (m.sessionId === "0") got.push([m.content, source]);
      });
      await daveClient.start();
      await daveClient.close();
      expect(got).toEqual([["hello twenty thousand", "history"]]);

      // Unread counts as usual; the sender has read her own post.
      const list = async (token: string) => (await createApi(urls[0]!, { binary: true, token }).session.getSessionList({})).sessions.find((s) => s.sessionId === "0")!;
      const daveRoom = await list(tokens.dave!);
      expect([daveRoom.large, daveRoom.maxSeqId, daveRoom.unreadCount]).toEqual([true, ack.seqId, 1n]);
      await eventually(async () => (await list(tokens.alice!)).unreadCount === 0n, 10_000, "the sender's own post is read");
      for (const s of [alice, bob, carol]) s.close();
    }, 60_000);
  });
}

/** What a client emitted of the room: seqs in emission order. */
function roomSeqs(c: ResonanceClient): bigint[] {
  const seqs: bigint[] = [];
  c.onMessage((m) => {
    if (m.sessionId === "0" && m.type !== "system") seqs.push(m.seqId);
  });
  return seqs;
}

const ascending = (from: bigint, to: bigint) => Array.from({ length: Number(to - from + 1n) }, (_, i) => from + BigInt(i));

/**
 * The room crosses RESONANCE_INBOX_FANOUT_LIMIT while messages flow: users register between
 * posts. A member online all along gets every post pushed; a member who was away gets them from
 * the inbox (before the switch) and by seq (after it). Each sees every post once, in seq order.
 */
for (const mode of ["cluster", "standalone"] as const satisfies readonly Mode[]) {
  describe.skipIf(mode === "cluster" && !services.ok)(`the room crossing the fan-out limit (${mode})`, () => {
    const LIMIT = 6;
    let cluster: TestCluster;
    const clients: ResonanceClient[] = [];

    beforeAll(async () => {
      cluster = await TestCluster.start({ mode, gateways: mode === "cluster" ? 2 : 1, env: { RESONANCE_INBOX_FANOUT_LIMIT: String(LIMIT) } });
    }, 60_000);
    afterAll(async () => {
      await Promise.all(clients.map((c) => c.close()));
      await cluster?.destroy();
    });

    const client = (url: string, username: string) => {
      const c = new ResonanceClient({ urls: [url], username, password: `pw-${username}-1`, register: true, binary: true, reconnect: { maxMs: 500 } });
      clients.push(c);
      return c;
    };

    it("nothing is lost or doubled across the switch, online or away", async () => {
      const urls = cluster.urls;
      const last = urls[urls.length - 1]!;
      // Online all along, on the last gateway; away: on the first one, which goes down (cluster), or not started yet (standalone).
      const bob = client(last, "bob");
      const bobSeqs = roomSeqs(bob);
      await bob.start();
      const carol = client(urls[0]!, "carol");
      const carolSeqs = roomSeqs(carol);
      if (mode === "cluster") await carol.start();
      else await createApi(last, { binary: true }).auth.register({ username: "carol", password: "pw-carol-1" });
      const alice = client(last, "alice");
      await alice.start();

      const post = async (n: number) => (await alice.send({ sessionId: "0", content: `post ${n}` })).seqId;
      const first = await post(0);
      if (mode === "cluster") {
        await eventually(() => carolSeqs.length === 1, 10_000, "carol got the first post");
        cluster.gateways[0]!.kill("SIGKILL");
        await cluster.gateways[0]!.exited;
      }
      // Three members; the room turns large when the fourth newcomer registers (3 + 4 > 6).
      let lastSeq = first;
      for (let i = 1; i <= 8; i++) {
        await createApi(last, { binary: true }).auth.register({ username: `newcomer${i}`, password: "pw-newcomer-1" });
        lastSeq = await post(i);
      }
      const expected = ascending(first, lastSeq);
      await eventually(() => bobSeqs.length >= expected.length, 20_000, "bob got every post live");
      if (mode === "cluster") await cluster.replace(cluster.gateways[0]!);
      else await carol.start();
      await eventually(() => carolSeqs.length >= expected.length, 20_000, "carol caught up");
      expect(bobSeqs).toEqual(expected);
      expect(carolSeqs).toEqual(expected);
      // Before the switch carol's posts came from her inbox or live; after it, by seq.
      expect(carol.stats().historyReceived).toBeGreaterThan(0);
      expect(bob.stats().pushesReceived).toBeGreaterThanOrEqual(expected.length);
    }, 90_000);
  });
}

/**
 * A room post whose inbox write can never succeed is retried with back-off, then dead-lettered
 * with its reason; meanwhile and afterwards other sessions' messages flow (in standalone the
 * relay is not held by it). Standalone: the issue's failure itself, fan-out on write for a
 * 20,000-member room (the limit set above it) in PGlite, whose lock table is too small. Cluster:
 * the database refuses the post's inbox rows (a trigger of the test's own database), because
 * filling PostgreSQL's shared lock table would fail the other test files running on that server.
 */
const POISON_TRIGGER = `
  create function refuse_poison() returns trigger language plpgsql as $$
  begin
    if exists (select 1 from messages m where m.id = new.msg_id and m.content = 'poison') then
      raise exception 'the test refuses inbox rows of this message';
    end if;
    return new;
  end $$;
  create trigger refuse_poison before insert on inbox for each row execute function refuse_poison();`;

for (const mode of ["cluster", "standalone"] as const satisfies readonly Mode[]) {
  describe.skipIf(mode === "cluster" && !services.ok)(`a poison event (${mode})`, () => {
    let cluster: TestCluster;
    let task: ServiceProcess;
    const tokens: Record<string, string> = {};

    beforeAll(async () => {
      if (mode === "standalone") {
        ({ cluster, task } = await withBulkRoom(mode, ["alice", "bob"], tokens, { RESONANCE_INBOX_FANOUT_LIMIT: "1000000" }));
        return;
      }
      cluster = await TestCluster.start({ mode, gateways: 1 });
      for (const u of ["alice", "bob"]) tokens[u] = await register(cluster.urls[0]!, u);
      await cluster.sql(POISON_TRIGGER);
      task = cluster.tasks[0]!;
    }, 120_000);
    afterAll(async () => {
      await cluster?.destroy();
    });

    it("is retried with back-off, dead-lettered after a bounded number of deliveries, and never stalls other messages", async () => {
      const url = cluster.urls[0]!;
      const sessionId = (await createApi(url, { binary: true, token: tokens.alice! }).session.createSession({ members: ["bob"], type: 1 })).sessionId;
      const alice = new RawSocket(url, tokens.alice!);
      const bob = new RawSocket(url, tokens.bob!);
      await Promise.all([alice.opened, bob.opened]);
      alice.send({ seq: "room", payload: { case: "chat", value: { sessionId: "0", content: mode === "cluster" ? "poison" : "too many to fan out on write" } } });
      expect((await alice.ackFor("room")).error).toBe("");
      // While the room post is failing, one-to-one messages still go through.
      // (While the room's statement fills PGlite's lock table, a commit may be refused with
      // unavailable, "the database is busy": the client resends, as the SDK does.)
      const sendDm = async (seq: string, content: string) => {
        for (let attempt = 1; ; attempt++) {
          alice.send({ seq, payload: { case: "chat", value: { sessionId, content } } });
          const ack = await alice.ackFor(seq);
          alice.packets.splice(alice.packets.findIndex((p) => p.payload.case === "ack" && p.payload.value.refSeq === seq), 1);
          if (ack.errorCode !== "unavailable" || attempt === 10) return ack;
        }
      };
      for (let i = 0; i < 3; i++) {
        const ack = await sendDm(`dm-${i}`, `dm ${i}`);
        expect(ack.error).toBe("");
        await bob.next((p) => p.payload.case === "push" && p.payload.value.seqId === ack.seqId, 20_000);
      }
      // They did not wait for it: it is still being retried (its back-off alone adds up to 1.5 s).
      expect(task.logs().some((l) => l.msg === "event moved to the dead-letter subject")).toBe(false);
      const dead = await eventually(
        () => task.logs().find((l) => l.msg === "event moved to the dead-letter subject"),
        30_000,
        "the room post dead-lettered",
      );
      expect(dead.deliveryCount).toBe(5);
      expect(String(dead.reason)).toMatch(mode === "cluster" ? /^inbox write failed 5 times: .*the test refuses inbox rows/ : /^inbox write failed 5 times: .*(shared memory|max_locks_per_transaction)/);
      expect(await counter(task, 'resonance_events_handled_total{outcome="dead-letter"}')).toBe(1);
      expect(await counter(task, 'resonance_events_handled_total{outcome="retry"}')).toBeGreaterThanOrEqual(4);
      // And after it, too.
      const after = await sendDm("dm-after", "dm after");
      expect(after.error).toBe("");
      await bob.next((p) => p.payload.case === "push" && p.payload.value.seqId === after.seqId, 20_000);
      alice.close();
      bob.close();
    }, 60_000);
  });
}
