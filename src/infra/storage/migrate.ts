import type { Logger } from "../../observability/log.js";
import type { Queryable, Storage } from "./types.js";

/**
 * One schema change. `sql` may hold several statements; it runs inside a transaction, so it must
 * not contain BEGIN/COMMIT or statements that refuse transactions (`create index concurrently`).
 * Never edit a migration once applied: add a new version.
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

/**
 * Key of the transaction-scoped advisory lock every migration transaction takes first, so two
 * processes migrating the same database at once apply each version exactly once ("RsnM").
 */
const MIGRATION_LOCK_KEY = 0x52736e4d;

const CREATE_TABLE = `create table if not exists schema_migrations (
  version    int primary key,
  name       text not null,
  applied_at timestamptz not null default now()
)`;

function validate(migrations: readonly Migration[]): Migration[] {
  const seen = new Set<number>();
  for (const m of migrations) {
    if (!Number.isSafeInteger(m.version) || m.version <= 0) throw new Error(`migrate: invalid version ${m.version} (${m.name})`);
    if (seen.has(m.version)) throw new Error(`migrate: duplicate version ${m.version}`);
    seen.add(m.version);
  }
  return [...migrations].sort((a, b) => a.version - b.version);
}

async function lockAndList(tx: Queryable): Promise<Map<number, string>> {
  await tx.query(`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`);
  await tx.query(CREATE_TABLE);
  const { rows } = await tx.query<{ version: number; name: string }>("select version, name from schema_migrations");
  return new Map(rows.map((r) => [Number(r.version), r.name]));
}

/**
 * Applies the migrations not yet recorded in `schema_migrations`, in version order, each in its
 * own transaction under an advisory lock (safe when several processes migrate at once; works on
 * PGlite too). Resolves with the versions this call applied (empty when up to date); rejects with
 * the first failing migration, whose transaction is rolled back (earlier ones stay applied).
 */
export async function migrate(storage: Storage, migrations: readonly Migration[], log: Logger): Promise<{ applied: number[] }> {
  const ordered = validate(migrations);
  const known = new Set(ordered.map((m) => m.version));
  const before = await storage.transaction(lockAndList);
  const unknown = [...before.keys()].filter((v) => !known.has(v));
  if (unknown.length > 0) {
    log.warn({ versions: unknown }, "database has migrations this build does not know (newer build ran here?)");
  }
  const applied: number[] = [];
  for (const m of ordered) {
    if (before.has(m.version)) continue;
    const did = await storage.transaction(async (tx) => {
      // Re-read under the lock: another process may have applied it since.
      const done = await lockAndList(tx);
      if (done.has(m.version)) return false;
      const started = Date.now();
      try {
        // A schema change on a big table may run long: the pool's statement_timeout is for queries.
        await tx.query("set local statement_timeout = 0");
        await tx.query(m.sql);
      } catch (err) {
        throw new Error(`migrate: migration ${m.version} (${m.name}) failed: ${(err as Error).message}`, { cause: err });
      }
      await tx.query("insert into schema_migrations (version, name) values ($1, $2)", [m.version, m.name]);
      log.info({ version: m.version, name: m.name, ms: Date.now() - started }, "applied migration");
      return true;
    });
    if (did) applied.push(m.version);
  }
  if (applied.length === 0) log.debug({ versions: ordered.length }, "schema up to date");
  return { applied };
}
