import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../observability/log.js";
import { createStorage } from "./index.js";
import { migrate, type Migration } from "./migrate.js";
import { PgliteStorage } from "./pglite.js";
import type { Storage } from "./types.js";
import { requireReachable } from "../../../test/support/services.js";

const log = createLogger("test", "storage-contract", process.env.RESONANCE_TEST_LOG_LEVEL ?? "silent");
const PG_URL = process.env.RESONANCE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";


async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const pgAvailable = await requireReachable("PostgreSQL", () => withClient(PG_URL, (c) => c.query("select 1").then(() => undefined)));

interface Subject {
  storage: Storage;
  applicationName: string;
  /** The directory (PGlite) or database URL (PostgreSQL) the storage uses. */
  location: string;
  cleanup(): Promise<void>;
}

const implementations: Array<{ kind: Storage["kind"]; available: boolean; setup(): Promise<Subject> }> = [
  {
    kind: "postgres",
    available: pgAvailable,
    async setup() {
      const db = `resonance_contract_${randomBytes(6).toString("hex")}`;
      await withClient(PG_URL, (c) => c.query(`create database ${db}`));
      const url = new URL(PG_URL);
      url.pathname = `/${db}`;
      const applicationName = `resonance-contract-${db.slice(-12)}`;
      const storage = createStorage({ databaseUrl: url.toString(), dataDir: "/nonexistent", applicationName, log, poolSize: 8 });
      return {
        storage,
        applicationName,
        location: url.toString(),
        async cleanup() {
          await storage.close();
          await withClient(PG_URL, (c) => c.query(`drop database if exists ${db} with (force)`));
        },
      };
    },
  },
  {
    kind: "pglite",
    available: true,
    async setup() {
      const dataDir = await mkdtemp(join(tmpdir(), "resonance-storage-"));
      const storage = createStorage({ dataDir, applicationName: "unused", log });
      return {
        storage,
        applicationName: "unused",
        location: join(dataDir, "pglite"),
        async cleanup() {
          await storage.close();
          await rm(dataDir, { recursive: true, force: true });
        },
      };
    },
  },
];

const MIGRATIONS: Migration[] = [
  { version: 2, name: "second", sql: "alter table mig_a add column note text not null default ''; create table mig_b (id int primary key)" },
  { version: 1, name: "first", sql: "create table mig_a (id bigserial primary key); insert into mig_a default values" },
];

// An unavailable implementation's tests are counted as skipped (the reason was printed above), never left out.
describe.each(implementations)("storage contract - $kind", ({ kind, available, setup }) => void describe.skipIf(!available)(`${kind}`, () => {
  let subject: Subject;
  let db: Storage;

  beforeAll(async () => {
    subject = await setup();
    db = subject.storage;
    await db.start();
    await db.start(); // idempotent
    await db.query("create table counter (id int primary key, n bigint not null)");
    await db.query("create table items (id bigserial primary key, label text not null, big bigint)");
  });
  afterAll(async () => {
    await subject?.cleanup();
  });

  it("storage - reports its kind", () => {
    expect(db.kind).toBe(kind);
  });

  it("storage - query binds parameters and returns rows and rowCount", async () => {
    const r = await db.query<{ sum: number; s: string }>("select $1::int + $2::int as sum, $3::text as s", [1, 2, "x"]);
    expect(r.rows).toEqual([{ sum: 3, s: "x" }]);
    expect(r.rowCount).toBe(1);
    const ins = await db.query("insert into items (label) values ($1), ($2)", ["a", "b"]);
    expect(ins.rowCount).toBe(2);
  });

  it("storage - int8 columns, bigserial and count(*) come back as strings", async () => {
    const big = 9007199254740993n; // not representable as a JS number
    const { rows } = await db.query<{ id: unknown; big: unknown }>("insert into items (label, big) values ('c', $1) returning id, big", [big]);
    expect(typeof rows[0]?.id).toBe("string");
    expect(rows[0]?.big).toBe(big.toString());
    const count = await db.query<{ n: unknown }>("select count(*) as n from items");
    expect(typeof count.rows[0]?.n).toBe("string");
  });

  it("storage - a committed transaction is visible and returns the callback's value", async () => {
    const id = await db.transaction(async (tx) => {
      const { rows } = await tx.query<{ id: string }>("insert into items (label) values ('committed') returning id");
      await tx.query("insert into items (label) values ('committed-2')");
      return rows[0]!.id;
    });
    const { rows } = await db.query<{ label: string }>("select label from items where id = $1", [id]);
    expect(rows).toEqual([{ label: "committed" }]);
  });

  it("storage - a throwing transaction rolls back and rethrows the same error", async () => {
    const boom = new Error("boom");
    let escaped: Parameters<Parameters<Storage["transaction"]>[0]>[0] | undefined;
    await expect(
      db.transaction(async (tx) => {
        escaped = tx;
        await tx.query("insert into items (label) values ('rolled-back')");
        throw boom;
      }),
    ).rejects.toBe(boom);
    const { rows } = await db.query("select 1 from items where label = 'rolled-back'");
    expect(rows).toHaveLength(0);
    await expect(escaped!.query("select 1")).rejects.toThrow(/finished transaction/);
  });

  it("storage - an SQL error inside a transaction rolls back and keeps the storage usable", async () => {
    await expect(
      db.transaction(async (tx) => {
        await tx.query("insert into items (label) values ('before-error')");
        await tx.query("select no_such_column from items");
      }),
    ).rejects.toMatchObject({ code: "42703" });
    expect((await db.query("select 1 from items where label = 'before-error'")).rows).toHaveLength(0);
    expect((await db.query<{ one: number }>("select 1 as one")).rows).toEqual([{ one: 1 }]);
  });

  it("storage - concurrent transactions on one row serialize", async () => {
    await db.query("insert into counter (id, n) values (1, 0)");
    const seen = await Promise.all(
      Array.from({ length: 20 }, () =>
        db.transaction(async (tx) => {
          const { rows } = await tx.query<{ n: string }>("update counter set n = n + 1 where id = 1 returning n");
          return Number(rows[0]!.n);
        }),
      ),
    );
    expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect((await db.query<{ n: string }>("select n from counter where id = 1")).rows[0]?.n).toBe("20");
  });

  it("storage - the same parameterized statement, run again and again, in and out of transactions, sees every change (arrays, nulls, bytea)", async () => {
    const sql = "select label, big, $2::bytea as b from items where label = any($1::text[]) order by id";
    const bytes = new Uint8Array([0, 1, 255]);
    expect((await db.query(sql, [["again"], bytes])).rows).toEqual([]);
    await db.query("insert into items (label, big) values ($1, $2)", ["again", null]);
    const inTx = await db.transaction(async (tx) => {
      await tx.query("insert into items (label, big) values ($1, $2)", ["again", 7n]);
      return (await tx.query<{ label: string; big: string | null; b: Uint8Array }>(sql, [["again", "other"], bytes])).rows;
    });
    expect(inTx.map((r) => r.big)).toEqual([null, "7"]);
    expect([...inTx[0]!.b]).toEqual([0, 1, 255]);
    expect((await db.query(sql, [["again"], bytes])).rowCount).toBe(2);
    // A bad value fails the statement alone; the next call works.
    await expect(db.query("insert into items (label, big) values ($1, $2)", ["bad", "not a number"])).rejects.toMatchObject({ code: "22P02" });
    expect((await db.query(sql, [["again"], bytes])).rowCount).toBe(2);
  });

  it("storage - a statement keeps working after its table changes under it", async () => {
    await db.query("create table shape (id int, a text)");
    await db.query("insert into shape values ($1, $2)", [1, "x"]);
    const read = () => db.query("select * from shape where id = $1", [1]).then((r) => r.rows);
    expect(await read()).toEqual([{ id: 1, a: "x" }]);
    await db.query("alter table shape add column b text default 'y'");
    // Postgres refuses a cached plan whose result changed at most once; then the statement is prepared afresh.
    const again = await read().catch(() => read());
    expect(again).toEqual([{ id: 1, a: "x", b: "y" }]);
  });

  it("migrate - applies in version order once, even when run twice at the same time", async () => {
    const [a, b] = await Promise.all([migrate(db, MIGRATIONS, log), migrate(db, MIGRATIONS, log)]);
    expect([...a.applied, ...b.applied].sort()).toEqual([1, 2]);
    expect((await migrate(db, MIGRATIONS, log)).applied).toEqual([]);
    const { rows } = await db.query<{ version: number; name: string }>("select version, name from schema_migrations order by version");
    expect(rows).toEqual([
      { version: 1, name: "first" },
      { version: 2, name: "second" },
    ]);
    expect((await db.query("select id, note from mig_a")).rows).toEqual([{ id: "1", note: "" }]);
  });

  it("migrate - a failing migration is rolled back and not recorded", async () => {
    const bad: Migration = { version: 3, name: "bad", sql: "create table mig_c (id int); select no_such_column from mig_c" };
    await expect(migrate(db, [...MIGRATIONS, bad], log)).rejects.toThrow(/migration 3 \(bad\) failed/);
    expect((await db.query("select 1 from schema_migrations where version = 3")).rows).toHaveLength(0);
    expect((await db.query("select 1 from information_schema.tables where table_name = 'mig_c'")).rows).toHaveLength(0);
    await expect(migrate(db, [{ version: 1, name: "dup", sql: "" }, ...MIGRATIONS], log)).rejects.toThrow(/duplicate version 1/);
  });

  if (kind === "postgres") it("postgres - every connection carries the application name", async () => {
    const { rows } = await withClient(PG_URL, (c) =>
      c.query<{ n: string }>("select count(*) as n from pg_stat_activity where application_name = $1", [subject.applicationName]),
    );
    expect(Number(rows[0]?.n)).toBeGreaterThan(0);
  });

  if (kind === "pglite") it("pglite - a second instance cannot open the same directory", async () => {
    const second = new PgliteStorage({ dir: subject.location, log, lockTimeoutMs: 300 });
    await expect(second.start()).rejects.toThrow(/in use by pid/);
    await second.close();
  });

  if (kind === "pglite") it("pglite - a table with many dead rows (outbox churn) is vacuumed; one without is left alone", async () => {
    const pglite = db as PgliteStorage;
    await db.query("create table churn (id bigserial primary key, v int)");
    for (let i = 0; i < 3; i++) {
      await db.query("insert into churn (v) select g from generate_series(1, $1::int) g", [1_000]);
      await db.query("delete from churn where v > $1", [0]);
    }
    // Statistics reach the shared view at most once a second unless a flush is asked for.
    const dead = async () => {
      await db.query("select pg_stat_force_next_flush()");
      return Number((await db.query<{ n: string }>("select n_dead_tup as n from pg_stat_user_tables where relname = $1", ["churn"])).rows[0]?.n ?? 0);
    };
    expect(await dead()).toBeGreaterThanOrEqual(3_000);
    expect(await pglite.vacuumDead()).toEqual(["churn"]);
    expect(await dead()).toBe(0);
    expect(await pglite.vacuumDead()).toEqual([]);
  });

  it("storage - close is idempotent and later queries reject", async () => {
    await Promise.all([db.close(), db.close()]);
    await db.close();
    await expect(db.query("select 1")).rejects.toThrow(/closed/);
    await expect(db.transaction(async () => undefined)).rejects.toThrow(/closed/);
  });
}));

describe("storage - start failures", () => {
  it("postgres - an unreachable server fails start() with a clear error, not the factory", async () => {
    const storage = createStorage({ databaseUrl: "postgres://u:secret@127.0.0.1:1/nowhere", dataDir: "/x", applicationName: "t", log });
    const err = (await storage.start().catch((e: unknown) => e)) as Error;
    expect(err.message).toMatch(/cannot connect to PostgreSQL at 127\.0\.0\.1:1\/nowhere/);
    expect(err.message).not.toMatch(/secret/);
    await storage.close();
    await storage.close();
  });
});
