import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requireReachable, requireServices, TEST_DATABASE_URL, TEST_NATS_URL } from "../../test/support/services.js";
import { createQueue } from "../infra/queue/index.js";
import { eventually } from "../../test/support/processes.js";
import type { EventPublisher, OutgoingEvent } from "../infra/queue/types.js";
import { migrate } from "../infra/storage/migrate.js";
import { PgliteStorage } from "../infra/storage/pglite.js";
import { PostgresStorage } from "../infra/storage/postgres.js";
import type { Storage } from "../infra/storage/types.js";
import { createLogger } from "../observability/log.js";
import { Metrics } from "../observability/metrics.js";
import { GroupCommit } from "./group-commit.js";
import { migrations } from "./migrations.js";
import { OutboxRelay } from "./relay.js";
import { LogicStore, SESSION_GROUP, SESSION_SINGLE, singleChatId, type CommitOutcome, type CommittedEvent, type NewMessage } from "./store.js";

const log = createLogger("test", "group-commit", process.env.RESONANCE_TEST_LOG_LEVEL ?? "silent");

async function withClient<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: 3_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const pgAvailable = await requireReachable("PostgreSQL", () => withClient((c) => c.query("select 1").then(() => undefined)));

interface Subject {
  /** A new connection to the database (a second logic instance on PostgreSQL; PGlite has one). */
  open(): Promise<Storage>;
  cleanup(): Promise<void>;
}

const kinds: Array<{ kind: Storage["kind"]; available: boolean; setup(): Promise<Subject> }> = [
  {
    kind: "postgres",
    available: pgAvailable,
    async setup() {
      const name = `resonance_commit_${randomBytes(6).toString("hex")}`;
      await withClient((c) => c.query(`create database ${name}`));
      const url = new URL(TEST_DATABASE_URL);
      url.pathname = `/${name}`;
      const opened: Storage[] = [];
      return {
        async open() {
          const s = new PostgresStorage({ databaseUrl: url.toString(), applicationName: "resonance-commit-test", log, poolSize: 4 });
          await s.start();
          opened.push(s);
          return s;
        },
        async cleanup() {
          for (const s of opened) await s.close();
          await withClient((c) => c.query(`drop database if exists ${name} with (force)`));
        },
      };
    },
  },
  {
    kind: "pglite",
    available: true,
    async setup() {
      const dir = await mkdtemp(join(tmpdir(), "resonance-commit-"));
      let db: PgliteStorage | undefined;
      return {
        async open() {
          if (!db) {
            db = new PgliteStorage({ dir, log });
            await db.start();
          }
          return db;
        },
        async cleanup() {
          await db?.close();
          await rm(dir, { recursive: true, force: true });
        },
      };
    },
  },
];

const chat = (sessionId: string, from: string, content: string, clientMsgId?: string): NewMessage => ({
  sessionId,
  from,
  to: "",
  content,
  type: "text",
  clientMsgId,
});

const code = (o: CommitOutcome | undefined) => (o instanceof ConnectError ? o.code : "ok");
const ids = (o: CommitOutcome | undefined) => {
  if (!o || o instanceof ConnectError) throw new Error(`expected a commit, got ${String(o)}`);
  return { msgId: o.msgId, seqId: o.seqId, created: o.created };
};

function committer(store: LogicStore, owner: string, events: CommittedEvent[] = [], maxBatch = 256, maxInFlight = 2): GroupCommit {
  return new GroupCommit(store, { maxBatch, maxInFlight, maxQueued: 10_000, claimMs: 5_000, owner }, (e) => events.push(...e), log);
}

/** The seqs of a session, in order. */
async function seqs(db: Storage, sessionId: string): Promise<number[]> {
  const { rows } = await db.query<{ seq_id: string }>("select seq_id from messages where session_id = $1 order by seq_id", [sessionId]);
  return rows.map((r) => Number(r.seq_id));
}

const upTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe.each(kinds)("group commit - $kind", ({ kind, available, setup }) =>
  void describe.skipIf(!available)(kind, () => {
    let subject: Subject;
    let db: Storage;
    let store: LogicStore;

    beforeAll(async () => {
      subject = await setup();
      db = await subject.open();
      await migrate(db, migrations, log);
      store = new LogicStore(db);
      for (const u of ["alice", "bob", "carol", "dave"]) await store.createUser(u, u, "x");
    }, 60_000);
    afterAll(async () => {
      await subject?.cleanup();
    });

    it("group commit - one batch: valid rows, a stranger, an unknown session, resends and repeats inside the batch, each answered on its own; seqs gap-free", async () => {
      const events: CommittedEvent[] = [];
      const commits = committer(store, "logic-a", events);
      const s = (await store.createSession(singleChatId("alice", "bob"), "", SESSION_SINGLE, "alice", ["bob"], "hello")).sessionId;
      const [before] = await commits.submit([chat(s, "alice", "m1", "c1")]);
      expect(ids(before)).toMatchObject({ seqId: 2n, created: true });

      const out = await commits.submit([
        chat(s, "alice", "a", "c2"), // 0: new
        chat(s, "carol", "let me in", "k1"), // 1: not a member
        chat("group:999999", "alice", "nowhere", "n1"), // 2: no such session (answered as a stranger is: it must not tell which sessions exist)
        chat(s, "alice", "m1", "c1"), // 3: resend of a committed message
        chat(s, "alice", "b", "c3"), // 4: new
        chat(s, "alice", "a", "c2"), // 5: the same message twice in the batch
        chat(s, "alice", "not b", "c3"), // 6: the same client id, other content, in the batch
        chat(s, "bob", "hi"), // 7: new, no client id
        chat("0", "alice", "room", "c2"), // 8: the same client id in another session: its own message
        chat(s, "alice", "m1, edited", "c1"), // 9: a resend whose content differs
      ]);
      expect(out.map(code)).toEqual(["ok", Code.PermissionDenied, Code.PermissionDenied, "ok", "ok", "ok", Code.AlreadyExists, "ok", "ok", Code.AlreadyExists]);
      expect(ids(out[0])).toMatchObject({ seqId: 3n, created: true });
      expect(ids(out[3])).toEqual({ ...ids(before), created: false });
      expect(ids(out[4])).toMatchObject({ seqId: 4n, created: true });
      expect(ids(out[5])).toEqual({ ...ids(out[0]), created: false });
      expect(ids(out[7])).toMatchObject({ seqId: 5n, created: true });
      expect(ids(out[8])).toMatchObject({ created: true });
      expect((out[1] as ConnectError).rawMessage).toBe((out[2] as ConnectError).rawMessage);
      // Gap-free: the system message, m1, then a, b and hi.
      expect(await seqs(db, s)).toEqual(upTo(5));
      const { rows } = await db.query<{ content: string }>("select content from messages where session_id = $1 order by seq_id", [s]);
      expect(rows.map((r) => r.content)).toEqual(["hello", "m1", "a", "b", "hi"]);
      // Every new message has its outbox row, claimed for the fast path, and its event.
      expect(events.map((e) => e.msgId).sort()).toEqual([before, out[0], out[4], out[7], out[8]].map((o) => ids(o).msgId.toString()).sort());
      const outbox = await db.query<{ msg_id: string; claimed_by: string }>("select msg_id, claimed_by from outbox where msg_id = any($1::bigint[])", [events.map((e) => e.msgId)]);
      expect(outbox.rows.length).toBe(5);
      expect(new Set(outbox.rows.map((r) => r.claimed_by))).toEqual(new Set(["logic-a"]));
    });

    it("group commit - a row the database refuses (a NUL byte) is answered alone; the rest of its batch commits", async () => {
      const commits = committer(store, "logic-a");
      const s = (await store.createSession(undefined, "nul", SESSION_GROUP, "alice", ["bob"], "made")).sessionId;
      const out = await commits.submit([chat(s, "alice", "one"), chat(s, "bob", "bad \u0000 byte"), chat(s, "alice", "two"), chat(s, "bob", "three")]);
      expect(out.map(code)).toEqual(["ok", Code.InvalidArgument, "ok", "ok"]);
      expect((out[1] as ConnectError).rawMessage).toBe("invalid input: a value the database cannot store");
      expect(await seqs(db, s)).toEqual(upTo(4));
    });

    it("group commit - concurrent submissions are batched; with two statements in flight, a session's seqs still follow submission order", async () => {
      let statements = 0;
      const counting = new LogicStore(db);
      const commitBatch = counting.commitBatch.bind(counting);
      counting.commitBatch = (...args) => (statements++, commitBatch(...args));
      const commits = committer(counting, "logic-a", [], 16, 2);
      // A second session keeps the second statement slot busy alongside.
      const other = (await store.createSession(undefined, "beside", SESSION_GROUP, "alice", ["bob"], "made")).sessionId;
      const s = (await store.createSession(undefined, "burst", SESSION_GROUP, "alice", ["bob"], "made")).sessionId;
      const out = await Promise.all(
        upTo(100).map((i) => commits.submit([chat(s, i % 2 ? "alice" : "bob", `m${i}`, `burst-${i}`), chat(other, "bob", `o${i}`)]).then(([o]) => [o])),
      );
      expect(out.map(([o]) => Number(ids(o).seqId))).toEqual(upTo(100).map((i) => i + 1));
      expect(await seqs(db, s)).toEqual(upTo(101));
      expect(await seqs(db, other)).toEqual(upTo(101));
      // 200 messages in batches of at most 16: at least 13 statements, and far fewer than 200.
      expect(statements).toBeGreaterThanOrEqual(13);
      expect(statements).toBeLessThan(40);
    });

    it("group commit - a full queue refuses at once with resource_exhausted", async () => {
      const commits = new GroupCommit(store, { maxBatch: 4, maxInFlight: 1, maxQueued: 3, claimMs: 5_000, owner: "logic-a" }, () => {}, log);
      const out = await commits.submit(upTo(5).map((i) => chat("0", "dave", `q${i}`)));
      expect(out.map(code)).toEqual(["ok", "ok", "ok", Code.ResourceExhausted, Code.ResourceExhausted]);
    });

    it("group commit - two logic instances commit into the same sessions at once: no gap, no duplicate, no deadlock", async () => {
      // On PostgreSQL each has its own pool (two processes' worth); PGlite has one connection.
      const other = new LogicStore(await subject.open());
      const sessions: string[] = [];
      for (let i = 0; i < 4; i++) sessions.push((await store.createSession(undefined, `race ${i}`, SESSION_GROUP, "alice", ["bob", "carol"], "made")).sessionId);
      const a = committer(store, "logic-a", [], 32);
      const b = committer(other, "logic-b", [], 32);
      const senders = ["alice", "bob", "carol"];
      // Each instance writes every session in its own order; both send the same client ids, as a
      // gateway does when it moves a refused batch to another instance.
      const plan = (reverse: boolean) =>
        upTo(300).map((i) => {
          const k = reverse ? 301 - i : i;
          return chat(sessions[k % 4]!, senders[k % 3]!, `msg ${k}`, `race-${k}`);
        });
      const calls = (c: GroupCommit, messages: NewMessage[]) => Promise.all(Array.from({ length: 10 }, (_, j) => c.submit(messages.slice(j * 30, j * 30 + 30))));
      const [fromA, fromB] = await Promise.all([calls(a, plan(false)), calls(b, plan(true))]);
      const byId = new Map<string, { msgId: bigint; seqId: bigint }>();
      for (const [c, results] of [[plan(false), fromA.flat()], [plan(true), fromB.flat()]] as const) {
        for (const [i, o] of results.entries()) {
          const { msgId, seqId } = ids(o);
          const key = c[i]!.clientMsgId!;
          const seen = byId.get(key);
          if (seen) expect({ key, msgId, seqId }).toEqual({ key, ...seen });
          else byId.set(key, { msgId, seqId });
        }
      }
      expect(byId.size).toBe(300);
      for (const s of sessions) expect(await seqs(db, s)).toEqual(upTo(1 + 75));
      const { rows } = await db.query<{ n: string }>("select count(*) as n from messages where client_msg_id like 'race-%'");
      expect(Number(rows[0]!.n)).toBe(300);
    });

    it("relay - published rows stay until the queue's sync interval has passed, then go; a queue server that restarted gets them again", async () => {
      const published: string[] = [];
      let server = "server-1";
      let unsyncedMs = 60_000;
      const publisher: EventPublisher = {
        publish: async (events: readonly OutgoingEvent[]) => void published.push(...events.map((e) => e.id)),
        get unsyncedMs() {
          return unsyncedMs;
        },
        destination: () => server,
      };
      const relay = new OutboxRelay(store, publisher, { batchSize: 256, intervalMs: 20, owner: "logic-r", syncMarginMs: 0 }, log, new Metrics());
      // The rows earlier tests' committers left claimed, as a relay of theirs would after its crash.
      await store.releaseStaleClaims("logic-a", true);
      await relay.start();
      await eventually(async () => (await store.outboxBacklog()) === 0, 10_000, "earlier rows to be published");
      const events: CommittedEvent[] = [];
      const commits = new GroupCommit(store, { maxBatch: 64, maxInFlight: 1, maxQueued: 100, claimMs: 5_000, owner: "logic-r" }, (e) => {
        events.push(...e);
        relay.publishCommitted(e);
      }, log);
      const out = await commits.submit(upTo(3).map((i) => chat("0", "dave", `kept ${i}`)));
      const msgIds = out.map((o) => ids(o).msgId.toString());
      const marked = async () => {
        const { rows } = await db.query<{ published_to: string | null }>("select published_to from outbox where msg_id = any($1::bigint[])", [msgIds]);
        return rows;
      };
      // Published by the fast path, and kept: the server has not necessarily written them yet.
      await eventually(async () => (await marked()).filter((r) => r.published_to === "server-1").length === 3, 10_000, "the rows to be marked published");
      expect(msgIds.every((id) => published.includes(id))).toBe(true);
      expect(await store.outboxBacklog()).toBe(0);

      // The server restarted (a new id): what it acked may be lost; the rows are published again.
      server = "server-2";
      const before = published.length;
      relay.poke();
      await eventually(async () => (await marked()).filter((r) => r.published_to === "server-2").length === 3, 10_000, "the rows to be published again");
      expect(published.slice(before)).toEqual(expect.arrayContaining(msgIds));

      // Once the interval has passed, the rows go.
      unsyncedMs = 50;
      await eventually(async () => {
        relay.poke();
        return (await marked()).length === 0;
      }, 10_000, "the synced rows to be deleted");
      await relay.stop();
    });
  }),
);

const natsCheck = await requireServices(["nats"]);

describe.skipIf(!natsCheck.ok)("relay - what the real queues promise", () => {
  it("relay - JetStream acks are not on disk for the sync interval and name the server that gave them; the embedded queue's are final", async () => {
    const run = randomBytes(4).toString("hex");
    const stream = `RESONANCE_COMMIT_${run.toUpperCase()}`;
    const js = createQueue({
      natsUrl: TEST_NATS_URL,
      name: `resonance-commit-${run}`,
      log,
      ackWaitMs: 5_000,
      durable: `commit-${run}`,
      stream,
      subjects: { push: `commit.${run}.push`, deadLetter: `commit.${run}.dead` },
    });
    try {
      await js.start();
      expect(js.publisher.unsyncedMs).toBe(120_000);
      // nats-server makes a new id at every start: a restarted server is told apart by it.
      expect(js.publisher.destination()).toMatch(/^N[A-Z0-9]{55}$/);
    } finally {
      await js.close();
      const nc = await connect({ servers: TEST_NATS_URL });
      await (await jetstreamManager(nc)).streams.delete(stream).catch(() => false);
      await nc.close();
    }
    const embedded = createQueue({ name: "embedded", log, ackWaitMs: 5_000 });
    expect(embedded.publisher.unsyncedMs).toBe(0);
    await embedded.close();
  });
});
