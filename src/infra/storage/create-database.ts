import type { Logger } from "../../observability/log.js";
import { describeDatabaseUrl } from "./postgres.js";

/**
 * Creates the database named in `databaseUrl` when it does not exist, connecting to the server's
 * `postgres` database to do so. Resolves with true when it created it. Rejects with a message
 * naming the server (never the password) when the server cannot be reached or refuses.
 */
export async function ensureDatabase(databaseUrl: string, log: Logger): Promise<boolean> {
  const url = new URL(databaseUrl);
  const name = decodeURIComponent(url.pathname.replace(/^\//, "")) || "postgres";
  if (name === "postgres") return false;
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const { default: pg } = await import("pg");
  const client = new pg.Client({ connectionString: admin.toString(), application_name: "resonance-migrate", connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
    const { rowCount } = await client.query("select 1 from pg_database where datname = $1", [name]);
    if (rowCount) return false;
    // An identifier cannot be a parameter: quoted, with quotes doubled.
    await client.query(`create database "${name.replace(/"/g, '""')}"`);
    log.info({ database: name }, "database created");
    return true;
  } catch (err) {
    // Two migrates at once: the other one created it.
    if ((err as { code?: string }).code === "42P04") return false;
    throw new Error(`cannot create database ${name} on ${describeDatabaseUrl(databaseUrl)}: ${(err as Error).message}`, { cause: err });
  } finally {
    await client.end().catch(() => undefined);
  }
}
