import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrations } from "../logic/migrations.js";
import { createLogger } from "../observability/log.js";
import { createStorage, migrate, type Storage } from "../infra/storage/index.js";
import { eventually } from "../../test/support/processes.js";
import { requireReachable, TEST_DATABASE_URL } from "../../test/support/services.js";
import { INBOX_INSERT, writeInboxFront, type InboxEvent } from "./inbox.js";

const log = createLogger("test", "inbox", process.env.RESONANCE_TEST_LOG_LEVEL ?? "silent");

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const pgAvailable = await requireReachable("PostgreSQL", () => withClient(TEST_DATABASE_URL, (c) => c.query("select 1").then(() => undefined)));

interface Subject {
  readonly storage: Storage;
  /** PostgreSQL only: the database URL, for tests that need connections of their own. */
  readonly url?: string;
  cleanup(): Promise<void>;
}

const implementations: Array<{ kind: Storage["kind"]; available: boolean; setup(): Promise<Subject> }> = [
  {
    kind: "postgres",
    available: pgAvailable,
    async setup() {
      const db = `resonance_inbox_${randomBytes(6).toString("hex")}`;
      await withClient(TEST_DATABASE_URL, (c) => c.query(`create database ${db}`));
      const url = new URL(TEST_DATABASE_URL);
      url.pathname = `/${db}`;
      const storage = createStorage({ databaseUrl: url.toString(), dataDir: "/nonexistent", applicationName: "resonance-inbox-test", log, poolSize: 4 });
      return {
        storage,
        url: url.toString(),
        async cleanup() {
          await storage.close();
          await withClient(TEST_DATABASE_URL, (c) => c.query(`drop database if exists ${db} with (force)`));
        },
      };
    },
  },
  {
    kind: "pglite",
    available: true,
    async setup() {
      const dataDir = await mkdtemp(join(tmpdir(), "resonance-inbox-"));
      const storage = createStorage({ dataDir, applicationName: "unused", log });
      return {
        storage,
        async cleanup() {
          await storage.close();
          await rm(dataDir, { recursive: true, force: true });
        },
      };
    },
  },
];

const ev = (sessionId: string, seq: number, msgId: number): InboxEvent => ({ sessionId, seqId: BigInt(seq), msgId: BigInt(msgId) });

describe.each(implementations.filter((i) => i.available))("inbox batch statement - $kind", ({ kind, setup }) => {
  let subject: Subject;
  let db: Storage;
  /** Inbox rows of `owner` in id order, as "session/seq". */
  const inboxOf = async (owner: string): Promise<string[]> =>
    (await db.query<{ s: string }>("select session_id || '/' || seq_id as s from inbox where owner = $1 order by id", [owner])).rows.map((r) => r.s);

  beforeAll(async () => {
    subject = await setup();
    db = subject.storage;
    await db.start();
    await migrate(db, migrations, log);
    const users = ["ann", "bob", "cid", "dan", "eve"];
    await db.query("insert into users (username, nickname, password_hash) select u, u, '-' from unnest($1::text[]) u", [users]);
    await db.query("insert into sessions (id, name, type) values ('pair', 'pair', 1), ('trio', 'trio', 2), ('empty', 'empty', 2), ('solo', 'solo', 2)");
    await db.query(
      `insert into session_members (session_id, username) values
         ('pair', 'ann'), ('pair', 'bob'), ('trio', 'bob'), ('trio', 'cid'), ('trio', 'dan'), ('solo', 'eve')`,
    );
  });
  afterAll(async () => {
    await subject?.cleanup();
  });

  it("inbox - one statement writes every member's row of every event; one session's rows get ids in seq order", async () => {
    // Delivery order is not seq order (redeliveries, several publishers): the ids still follow seq.
    const members = await writeInboxFront(db, [ev("pair", 3, 103), ev("trio", 1, 201), ev("pair", 1, 101), ev("pair", 2, 102)]);
    expect(members).toEqual([["ann", "bob"], ["bob", "cid", "dan"], ["ann", "bob"], ["ann", "bob"]]);
    expect(await inboxOf("ann")).toEqual(["pair/1", "pair/2", "pair/3"]);
    expect((await inboxOf("bob")).filter((s) => s.startsWith("pair/"))).toEqual(["pair/1", "pair/2", "pair/3"]);
    expect(await inboxOf("dan")).toEqual(["trio/1"]);
  });

  it("inbox - a redelivered event, in a later batch or twice in one, inserts nothing more", async () => {
    const before = await inboxOf("bob");
    const members = await writeInboxFront(db, [ev("pair", 2, 102), ev("trio", 2, 202), ev("trio", 2, 202)]);
    expect(members).toEqual([["ann", "bob"], ["bob", "cid", "dan"], ["bob", "cid", "dan"]]);
    expect(await inboxOf("bob")).toEqual([...before, "trio/2"]);
    expect(await inboxOf("cid")).toEqual(["trio/1", "trio/2"]);
  });

  it("inbox - an event whose session has no members is taken, with no rows", async () => {
    const members = await writeInboxFront(db, [ev("empty", 1, 301), ev("solo", 1, 401)]);
    expect(members).toEqual([[], ["eve"]]);
    expect(await inboxOf("eve")).toEqual(["solo/1"]);
  });

  it("inbox - the row cap: events are taken from the front while their rows fit, and always the first", async () => {
    const batch = [ev("trio", 3, 203), ev("pair", 4, 104), ev("solo", 2, 402), ev("pair", 5, 105)];
    // 3 + 2 rows fit in 5; the third event would make 6.
    expect(await writeInboxFront(db, batch, 5)).toHaveLength(2);
    expect(await writeInboxFront(db, batch.slice(2), 5)).toEqual([["eve"], ["ann", "bob"]]);
    // An event larger than the cap goes alone.
    expect(await writeInboxFront(db, [ev("trio", 4, 204), ev("solo", 3, 403)], 2)).toEqual([["bob", "cid", "dan"]]);
    expect(await inboxOf("ann")).toEqual(["pair/1", "pair/2", "pair/3", "pair/4", "pair/5"]);
    expect(await inboxOf("eve")).toEqual(["solo/1", "solo/2"]);
  });

  if (kind === "postgres") {
    it("inbox - a later batch sharing an owner waits for the earlier one's commit and draws higher ids", async () => {
      const a = new pg.Client({ connectionString: subject.url });
      const b = new pg.Client({ connectionString: subject.url });
      await a.connect();
      await b.connect();
      try {
        await a.query("begin");
        // a holds ann, bob, cid, dan (uncommitted); b needs dan (via trio) and eve.
        await a.query(INBOX_INSERT, [["pair", "trio"], ["10", "10"], ["110", "210"], 1024]);
        let bDone = false;
        const second = b.query(INBOX_INSERT, [["solo", "trio"], ["10", "11"], ["410", "211"], 1024]).then(() => (bDone = true));
        await eventually(async () => {
          const waiting = await db.query<{ n: string }>("select count(*) as n from pg_locks where locktype = 'advisory' and not granted");
          return waiting.rows[0]!.n === "1";
        }, 5_000, "the second batch to wait for the first");
        expect(bDone).toBe(false);
        // b took no id yet: eve (only b's) has nothing new before a commits.
        expect(await inboxOf("eve")).toEqual(["solo/1", "solo/2"]);
        await a.query("commit");
        await second;
        expect((await inboxOf("dan")).slice(-2)).toEqual(["trio/10", "trio/11"]);
        expect((await inboxOf("eve")).at(-1)).toBe("solo/10");
      } finally {
        await a.end();
        await b.end();
      }
    });
  }
});
