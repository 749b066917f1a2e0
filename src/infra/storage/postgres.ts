import type pg from "pg";
import type { Logger } from "../../observability/log.js";
import type { Queryable, Storage } from "./types.js";

export interface PostgresStorageOptions {
  /** `postgres://user:password@host:port/db`; the password never appears in logs or errors. */
  readonly databaseUrl: string;
  /** Sent as `application_name` on every connection (visible in `pg_stat_activity`). */
  readonly applicationName: string;
  readonly log: Logger;
  /** Maximum connections in the pool (default 4: the writers batch, a few connections carry them). */
  readonly poolSize?: number;
  /** How long acquiring a new connection may take before it fails (default 10 s). */
  readonly connectTimeoutMs?: number;
  /**
   * Longest a statement may run (lock waits included) before PostgreSQL cancels it (SQLSTATE
   * 57014; nothing of it is committed). Default {@link DEFAULT_STATEMENT_TIMEOUT_MS}; 0 = none.
   * Migrations lift it for their own transaction.
   */
  readonly statementTimeoutMs?: number;
}

/**
 * A statement still running after this long is a runaway (a lock held by a stuck client, a plan
 * gone wrong): cancelling it frees its connection for everyone else. Every caller waits at most
 * 10 s for an answer anyway.
 */
export const DEFAULT_STATEMENT_TIMEOUT_MS = 10_000;
/** Connections per process (RESONANCE_PG_POOL): group commit and the batched consumers need few. */
export const DEFAULT_POOL_SIZE = 4;
/** A transaction left open and idle this long (a bug) is ended by the server, releasing its locks. */
const IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000;

type QueryResult<R> = { rows: R[]; rowCount: number };

/** `host:port/db` of a URL, for messages: never the user's password. */
export function describeDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || "5432"}${u.pathname}`;
  } catch {
    return "(unparsable database URL)";
  }
}

/** Takes the last result of a simple-protocol query that had several statements (pg returns an array). */
function normalize<R>(res: pg.QueryResult | pg.QueryResult[]): QueryResult<R> {
  const last = Array.isArray(res) ? res[res.length - 1] : res;
  if (!last) return { rows: [], rowCount: 0 };
  return { rows: last.rows as R[], rowCount: last.rowCount ?? 0 };
}

/**
 * PostgreSQL through a `pg` pool. int8 and numeric columns come back as strings (pg's default, kept
 * on purpose: callers do `BigInt(row.x)`). A query without parameters uses the simple protocol, so
 * it may hold several statements (migrations); its result is the last statement's.
 */
export class PostgresStorage implements Storage {
  readonly kind = "postgres" as const;
  readonly #opts: PostgresStorageOptions;
  readonly #log: Logger;
  readonly #where: string;
  #pool: pg.Pool | undefined;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the pool is created and checked by `start()`. */
  constructor(opts: PostgresStorageOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: "storage", kind: "postgres" });
    this.#where = describeDatabaseUrl(opts.databaseUrl);
  }

  /**
   * Creates the pool and runs `select 1`, so an unreachable or misconfigured database fails here
   * with an error naming the server. Idempotent (memoized).
   */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("storage: start() after close()");
    // Loaded here, not at import: a process on PGlite never pays for the driver.
    const { default: driver } = await import("pg");
    const pool = new driver.Pool({
      connectionString: this.#opts.databaseUrl,
      application_name: this.#opts.applicationName,
      max: this.#opts.poolSize ?? DEFAULT_POOL_SIZE,
      connectionTimeoutMillis: this.#opts.connectTimeoutMs ?? 10_000,
      idleTimeoutMillis: 30_000,
      statement_timeout: this.#opts.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS,
      idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_TIMEOUT_MS,
    });
    // An idle client that loses its server emits here; without a listener the process would crash.
    pool.on("error", (err) => this.#log.warn({ err }, "idle PostgreSQL connection failed"));
    this.#pool = pool;
    try {
      await pool.query("select 1");
    } catch (err) {
      this.#pool = undefined;
      await pool.end().catch(() => undefined);
      throw new Error(`storage: cannot connect to PostgreSQL at ${this.#where}: ${(err as Error).message}`, { cause: err });
    }
    this.#log.info({ database: this.#where, poolSize: this.#opts.poolSize ?? DEFAULT_POOL_SIZE }, "connected to PostgreSQL");
  }

  #ready(): pg.Pool {
    if (this.#closing) throw new Error("storage: closed");
    if (!this.#pool) throw new Error("storage: not started");
    return this.#pool;
  }

  async query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    const pool = this.#ready();
    const res = (await pool.query(sql, params as unknown[] | undefined)) as pg.QueryResult | pg.QueryResult[];
    return normalize<R>(res);
  }

  /**
   * BEGIN / COMMIT on one pooled connection; ROLLBACK and rethrow when `fn` throws (or COMMIT
   * fails). The `tx` object refuses queries once the transaction is over. A connection whose
   * ROLLBACK failed is destroyed rather than returned to the pool.
   */
  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.#ready().connect();
    let finished = false;
    const tx: Queryable = {
      query: async <R>(sql: string, params?: readonly unknown[]) => {
        if (finished) throw new Error("storage: query on a finished transaction");
        const res = (await client.query(sql, params as unknown[] | undefined)) as pg.QueryResult | pg.QueryResult[];
        return normalize<R>(res);
      },
    };
    let releaseError: Error | undefined;
    try {
      await client.query("begin");
      const result = await fn(tx);
      finished = true;
      await client.query("commit");
      return result;
    } catch (err) {
      finished = true;
      try {
        await client.query("rollback");
      } catch (rollbackErr) {
        releaseError = rollbackErr as Error;
      }
      throw err;
    } finally {
      finished = true;
      client.release(releaseError);
    }
  }

  /** Ends the pool once every checked-out connection is released. Idempotent, never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    const pool = this.#pool;
    if (!pool) return;
    try {
      await pool.end();
      this.#log.info("PostgreSQL pool closed");
    } catch (err) {
      this.#log.warn({ err }, "closing the PostgreSQL pool failed");
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
