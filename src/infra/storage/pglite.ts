import { mkdir, open, readFile, unlink } from "node:fs/promises";
import { randomUUID } from "node:crypto";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { PGlite, types } from "@electric-sql/pglite";
import type { Logger } from "../../observability/log.js";
import type { Queryable, Storage } from "./types.js";

export interface PgliteStorageOptions {
  /** Directory of the database files; created if missing. */
  readonly dir: string;
  readonly log: Logger;
  /**
   * How long `start()` waits for another instance (this process or another) to release the
   * directory before failing (default 15 s). PGlite must never be opened twice on one directory.
   */
  readonly lockTimeoutMs?: number;
}

type QueryResult<R> = { rows: R[]; rowCount: number };
type PgliteResult = { rows: unknown[]; rowCount?: number; affectedRows?: number };

const asText = (value: string): string => value;

/** Same shapes as `pg`: int8 (bigint, bigserial, count(*)) and numeric as strings; arrays follow. */
const PARSERS = { [types.INT8]: asText, [types.NUMERIC]: asText };

function normalize<R>(res: PgliteResult | undefined): QueryResult<R> {
  if (!res) return { rows: [], rowCount: 0 };
  return { rows: res.rows as R[], rowCount: res.rowCount ?? res.affectedRows ?? res.rows.length };
}

/** Runs on PGlite or on one of its transactions: no parameters → simple protocol (several statements allowed). */
async function run<R>(
  db: { query(sql: string, params?: unknown[]): Promise<PgliteResult>; exec(sql: string): Promise<PgliteResult[]> },
  sql: string,
  params: readonly unknown[] | undefined,
): Promise<QueryResult<R>> {
  if (!params || params.length === 0) return normalize<R>((await db.exec(sql)).at(-1));
  return normalize<R>(await db.query(sql, [...params]));
}

/** Tells this process from an earlier one that had the same pid (containers restart as pid 1). */
const PROCESS_TOKEN = randomUUID();

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Embedded PostgreSQL (PGlite, WebAssembly) persisted in a directory, with the same SQL and the
 * same result shapes as {@link PostgresStorage}. PGlite is one connection: statements and
 * transactions run one at a time, so inside `transaction(fn)` use only `tx` — a query on the
 * storage itself would wait for the transaction and deadlock. A lock file (`resonance.lock`,
 * holding the owner's pid) keeps two instances off one directory.
 */
export class PgliteStorage implements Storage {
  readonly kind = "pglite" as const;
  readonly #opts: PgliteStorageOptions;
  readonly #log: Logger;
  readonly #lockPath: string;
  readonly #inflight = new Set<Promise<unknown>>();
  #db: PGlite | undefined;
  #lockHeld = false;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the directory is created and opened by `start()`. */
  constructor(opts: PgliteStorageOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: "storage", kind: "pglite" });
    this.#lockPath = join(opts.dir, "resonance.lock");
  }

  /** Creates the directory, takes the lock, opens PGlite and awaits ready (~4 s for a new directory). Memoized. */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("storage: start() after close()");
    const started = Date.now();
    await mkdir(this.#opts.dir, { recursive: true });
    await this.#lock();
    try {
      const db = new PGlite({ dataDir: this.#opts.dir, parsers: PARSERS });
      await db.waitReady;
      this.#db = db;
    } catch (err) {
      await this.#unlock();
      throw new Error(`storage: cannot open PGlite in ${this.#opts.dir}: ${(err as Error).message}`, { cause: err });
    }
    this.#log.info({ dir: this.#opts.dir, ms: Date.now() - started }, "opened embedded PGlite database");
  }

  async #lock(): Promise<void> {
    const deadline = Date.now() + (this.#opts.lockTimeoutMs ?? 15_000);
    let unreadableSince: number | undefined;
    for (;;) {
      try {
        const file = await open(this.#lockPath, "wx");
        await file.writeFile(`${process.pid} ${PROCESS_TOKEN}`);
        await file.close();
        this.#lockHeld = true;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const [pid = "", token = ""] = (await readFile(this.#lockPath, "utf8").catch(() => "")).split(" ");
      const owner = Number.parseInt(pid, 10);
      // An unreadable lock is one whose writer died between creating and writing it.
      let stale: boolean;
      if (Number.isInteger(owner) && owner > 0) {
        unreadableSince = undefined;
        stale = owner === process.pid ? token !== PROCESS_TOKEN : !isAlive(owner);
      } else {
        unreadableSince ??= Date.now();
        stale = Date.now() - unreadableSince > 1_000;
      }
      if (stale) {
        this.#log.warn({ pid: owner }, "removing a stale PGlite lock left by a dead process");
        await unlink(this.#lockPath).catch(() => undefined);
        continue;
      }
      if (Date.now() >= deadline) {
        throw new Error(`storage: PGlite directory ${this.#opts.dir} is in use by pid ${owner || "?"} (${this.#lockPath})`);
      }
      await sleep(100);
    }
  }

  async #unlock(): Promise<void> {
    if (!this.#lockHeld) return;
    this.#lockHeld = false;
    await unlink(this.#lockPath).catch(() => undefined);
  }

  #ready(): PGlite {
    if (this.#closing) throw new Error("storage: closed");
    if (!this.#db) throw new Error("storage: not started");
    return this.#db;
  }

  /** Counts a call in flight so `close()` lets it finish first. */
  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const done = (): void => void this.#inflight.delete(p);
    p.then(done, done);
    return p;
  }

  async query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
    const db = this.#ready();
    return this.#track(run<R>(db, sql, params));
  }

  /** PGlite's own transaction: commits when `fn` resolves, rolls back and rethrows when it throws. */
  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const db = this.#ready();
    return this.#track(
      db.transaction(async (raw) => {
        let finished = false;
        const tx: Queryable = {
          query: <R>(sql: string, params?: readonly unknown[]) => {
            if (finished) return Promise.reject(new Error("storage: query on a finished transaction"));
            return run<R>(raw, sql, params);
          },
        };
        try {
          return await fn(tx);
        } finally {
          finished = true;
        }
      }),
    );
  }

  /** Refuses new work, lets calls in flight finish, closes PGlite once, releases the lock. Never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    await Promise.allSettled([...this.#inflight]);
    const db = this.#db;
    this.#db = undefined;
    try {
      if (db && !db.closed) await db.close();
      if (db) this.#log.info("embedded PGlite database closed");
    } catch (err) {
      this.#log.warn({ err }, "closing PGlite failed");
    } finally {
      await this.#unlock();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
