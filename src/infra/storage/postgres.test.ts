import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../observability/log.js";
import { requireServices, TEST_DATABASE_URL } from "../../../test/support/services.js";
import { migrate } from "./migrate.js";
import { DEFAULT_STATEMENT_TIMEOUT_MS, PostgresStorage } from "./postgres.js";

const log = createLogger("test", "postgres-timeouts", "silent");
const services = await requireServices(["postgres"]);
if (!services.ok) console.warn(`postgres timeouts: skipped: ${services.reason}`);

/** Runs one statement on the server's admin connection (creating and dropping test databases). */
async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

describe.skipIf(!services.ok)("postgres - statement_timeout", () => {
  // A database of its own: the migration below must not touch the shared test database.
  const dbName = `resonance_timeouts_${randomBytes(4).toString("hex")}`;
  const url = TEST_DATABASE_URL.replace(/\/[^/]*$/, `/${dbName}`);
  beforeAll(() => admin(`create database ${dbName}`));
  afterAll(() => admin(`drop database if exists ${dbName} with (force)`));

  it("postgres - every pooled connection has the default statement_timeout", async () => {
    const db = new PostgresStorage({ databaseUrl: url, applicationName: "resonance-test-timeouts", log });
    await db.start();
    try {
      const { rows } = await db.query<{ ms: string }>("select setting as ms from pg_settings where name = 'statement_timeout'");
      expect(Number(rows[0]!.ms)).toBe(DEFAULT_STATEMENT_TIMEOUT_MS);
      const idle = await db.query<{ ms: string }>("select setting as ms from pg_settings where name = 'idle_in_transaction_session_timeout'");
      expect(Number(idle.rows[0]!.ms)).toBeGreaterThan(0);
    } finally {
      await db.close();
    }
  });

  it("postgres - a statement over the timeout is cancelled (57014) and the pool keeps serving; migrations lift it", async () => {
    const db = new PostgresStorage({ databaseUrl: url, applicationName: "resonance-test-timeouts", log, statementTimeoutMs: 200 });
    await db.start();
    try {
      const started = Date.now();
      await expect(db.query("select pg_sleep(5)", [])).rejects.toMatchObject({ code: "57014" });
      expect(Date.now() - started).toBeLessThan(4_000);
      await expect(db.transaction((tx) => tx.query("select pg_sleep(5)", []))).rejects.toMatchObject({ code: "57014" });
      expect((await db.query<{ one: number }>("select 1 as one")).rows[0]!.one).toBe(1);
      // A migration's own transaction runs without the limit (its statement outlives 200 ms).
      const r = await migrate(db, [{ version: 1, name: "slow", sql: "create table probe as select 1 as x from pg_sleep(0.5)" }], log);
      expect(r.applied).toEqual([1]);
    } finally {
      await db.close();
    }
  });
});
