import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../infra/storage/migrate.js";
import { PgliteStorage } from "../infra/storage/pglite.js";
import { createLogger } from "../observability/log.js";
import { migrations } from "./migrations.js";
import { LogicStore } from "./store.js";

const log = createLogger("test", "migrations", "silent");

describe("migration 3 - usernames unique regardless of case, on a database that already has case duplicates", () => {
  let dir: string;
  let db: PgliteStorage;
  let store: LogicStore;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "resonance-migrations-"));
    db = new PgliteStorage({ dir, log });
    await db.start();
    // A database of version 2, when "Alice", "alice" and "ALICE" could all register.
    await migrate(db, migrations.filter((m) => m.version <= 2), log);
    for (const [name, at] of [["Alice", "2024-01-01"], ["alice", "2024-02-01"], ["ALICE", "2024-03-01"], ["bob", "2024-01-05"]] as const) {
      await db.query("insert into users (username, nickname, password_hash, created_at) values ($1, $1, 'x', $2::timestamptz)", [name, at]);
    }
    const r = await migrate(db, migrations, log);
    expect(r.applied).toContain(3);
    store = new LogicStore(db);
  }, 60_000);
  afterAll(async () => {
    await db?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("migrations - every existing account is kept; the oldest of a case group owns the name", async () => {
    const { rows } = await db.query<{ username: string; case_duplicate: boolean }>("select username, case_duplicate from users order by created_at");
    expect(rows).toEqual([
      { username: "Alice", case_duplicate: false },
      { username: "bob", case_duplicate: false },
      { username: "alice", case_duplicate: true },
      { username: "ALICE", case_duplicate: true },
    ]);
  });

  it("migrations - Login finds the exact spelling first, else the owner of the name", async () => {
    expect((await store.findLogin("alice"))?.username).toBe("alice");
    expect((await store.findLogin("ALICE"))?.username).toBe("ALICE");
    expect((await store.findLogin("Alice"))?.username).toBe("Alice");
    expect((await store.findLogin("aLiCe"))?.username).toBe("Alice");
    expect((await store.findLogin("BOB"))?.username).toBe("bob");
    expect(await store.findLogin("carol")).toBeUndefined();
  });

  it("migrations - no new account takes any spelling of an existing name", async () => {
    expect(await store.createUser("aLICE", "x", "x")).toBe(false);
    expect(await store.createUser("Bob", "x", "x")).toBe(false);
    expect(await store.createUser("carol", "x", "x")).toBe(true);
    expect(await store.createUser("CAROL", "x", "x")).toBe(false);
  });

  it("migrations - names resolve to the accounts' own spelling", async () => {
    const found = await store.resolveUsers(["ALICE", "aLiCe", "bob", "BOB", "ghost"]);
    expect(Object.fromEntries(found)).toEqual({ ALICE: "ALICE", aLiCe: "Alice", bob: "bob", BOB: "bob" });
  });

  it("migrations - log out everywhere: tokens_valid_after starts at 0 and only moves forward", async () => {
    expect((await store.findUser("bob"))?.tokens_valid_after).toBe("0");
    await store.revokeAllTokens("bob", 2_000);
    await store.revokeAllTokens("bob", 1_000);
    expect((await store.findUser("bob"))?.tokens_valid_after).toBe("2000");
  });
});
