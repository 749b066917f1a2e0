import { spawn } from "node:child_process";
import { createHash, randomUUID } from "node:crypto";
import { constants, copyFile, mkdir, open, readdir, readFile, rename, rm, stat, unlink } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { pathToFileURL } from "node:url";
import { PGlite, parse as pgParse, protocol, types } from "@electric-sql/pglite";
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
  /**
   * Where the template of a new database is kept (see {@link ensureTemplate}); default
   * {@link defaultTemplateCache}. Null: no template, a new directory is initialized in place.
   */
  readonly templateCache?: string | null;
  /** How often dead rows are looked for and vacuumed (see {@link PgliteStorage.vacuumDead}); default 5 s, 0 = never. */
  readonly vacuumEveryMs?: number;
}

/**
 * Postgres settings of the embedded database. PGlite's own default gives shared_buffers 128 MB,
 * which the WebAssembly memory touches at start (an idle process then holds ~300 MiB); 16 MB
 * holds this service's hot pages, and the operating system's file cache holds the rest.
 */
const START_PARAMS = [...PGlite.defaultStartParams, "-c", "shared_buffers=16MB"];

/**
 * A new database is initialized with 1 MB WAL segments (16 MB by default: most of a new
 * directory's size) so that copying the template is quick.
 */
const INITDB_PARAMS = ["--wal-segsize=1"];

/** The installed PGlite package: .../node_modules/@electric-sql/pglite. */
function pgliteDir(): string {
  return dirname(dirname(createRequire(import.meta.url).resolve("@electric-sql/pglite")));
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

type BackendMessage = Parameters<typeof pgParse.parseResults>[0][number];

/** A named prepared statement of the PGlite session. */
interface Prepared {
  readonly name: string;
  /** The type of each parameter, as the server inferred it. */
  readonly paramTypes: readonly number[];
  /** Its row description (empty for a statement that returns no rows), replayed before each result. */
  readonly head: readonly BackendMessage[];
}

/**
 * A table is vacuumed when it has more dead rows than this plus {@link VACUUM_DEAD_SHARE} of its
 * live rows (autovacuum's rule, with a higher floor: one vacuum blocks the event loop a few ms).
 */
const VACUUM_DEAD_ROWS = 1_000;
const VACUUM_DEAD_SHARE = 0.2;

/** Statements kept prepared at most (the application's SQL is a fixed set, far below this). */
const MAX_PREPARED = 256;
/** SQLSTATE of "cached plan must not change result type": a table changed under a prepared statement. */
const PLAN_CHANGED = "0A000";

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Parameterized statements as named prepared statements of the (single) PGlite session: the SQL
 * is parsed and analysed once, and each call is one Bind/Execute/Sync exchange with the
 * WebAssembly module instead of PGlite's six (parse, describe, bind, describe, execute, sync),
 * which re-parse and re-plan the statement every time. Values are serialized and rows parsed
 * exactly as PGlite's `query` does (same serializers and parsers), so results have the same shapes.
 * The caller holds PGlite's query mutex.
 */
class PreparedStatements {
  readonly #byText = new Map<string, Prepared>();
  #next = 0;

  async run(db: PGlite, sql: string, params: readonly unknown[], inTransaction: boolean): Promise<PgliteResult> {
    const st = this.#byText.get(sql) ?? (await this.#prepare(db, sql));
    const values = params.map((v, i) => {
      if (v === null || v === undefined) return null;
      const serialize = db.serializers[st.paramTypes[i]!];
      return serialize ? serialize(v) : String(v);
    });
    const message = concat([protocol.serialize.bind({ statement: st.name, values }), protocol.serialize.execute({}), protocol.serialize.sync()]);
    try {
      const { messages } = await db.execProtocol(message, { syncToFs: !inTransaction });
      return pgParse.parseResults([...st.head, ...messages], db.parsers)[0]!;
    } catch (err) {
      // A migration changed a table under it: prepare it afresh next time.
      if ((err as { code?: unknown }).code === PLAN_CHANGED && st.name) await this.#forget(db, sql, st);
      throw err;
    }
  }

  /** Parses `sql` once; beyond {@link MAX_PREPARED} statements, as the unnamed statement (not kept). */
  async #prepare(db: PGlite, sql: string): Promise<Prepared> {
    const keep = this.#byText.size < MAX_PREPARED;
    const name = keep ? `resonance_${this.#next++}` : "";
    const message = concat([protocol.serialize.parse({ name, text: sql }), protocol.serialize.describe({ type: "S", name }), protocol.serialize.sync()]);
    const { messages } = await db.execProtocol(message, { syncToFs: false });
    const st: Prepared = { name, paramTypes: pgParse.parseDescribeStatementResults(messages), head: messages.filter((m) => m.name === "rowDescription") };
    if (keep) this.#byText.set(sql, st);
    return st;
  }

  async #forget(db: PGlite, sql: string, st: Prepared): Promise<void> {
    this.#byText.delete(sql);
    await db.execProtocol(concat([protocol.serialize.close({ type: "S", name: st.name }), protocol.serialize.sync()]), { syncToFs: false }).catch(() => undefined);
  }
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
  readonly #prepared = new PreparedStatements();
  #db: PGlite | undefined;
  #lockHeld = false;
  #vacuumTimer: NodeJS.Timeout | undefined;
  /** Parameterized statements run so far, and when the last look for dead rows was. */
  #statements = 0;
  #statementsAtVacuum = 0;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the directory is created and opened by `start()`. */
  constructor(opts: PgliteStorageOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: "storage", kind: "pglite" });
    this.#lockPath = join(opts.dir, "resonance.lock");
  }

  /**
   * Creates the directory, takes the lock, opens PGlite and awaits ready. A new directory starts
   * as a copy of the template (made once per machine, in a child process, ~5-20 s; a progress
   * line is logged meanwhile). Memoized.
   */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("storage: start() after close()");
    const started = Date.now();
    await mkdir(this.#opts.dir, { recursive: true });
    await this.#lock();
    let created = false;
    try {
      if (!(await exists(join(this.#opts.dir, "PG_VERSION")))) created = await this.#fromTemplate();
      const db = new PGlite({ dataDir: this.#opts.dir, parsers: PARSERS, startParams: START_PARAMS, initDbStartParams: INITDB_PARAMS });
      await db.waitReady;
      this.#db = db;
    } catch (err) {
      await this.#unlock();
      throw new Error(`storage: cannot open PGlite in ${this.#opts.dir}: ${(err as Error).message}`, { cause: err });
    }
    this.#log.info({ dir: this.#opts.dir, ms: Date.now() - started, created }, created ? "created embedded PGlite database" : "opened embedded PGlite database");
    const every = this.#opts.vacuumEveryMs ?? 5_000;
    if (every > 0) {
      this.#vacuumTimer = setInterval(() => {
        this.vacuumDead().catch((err: unknown) => this.#log.warn({ err }, "vacuuming the embedded database failed"));
      }, every);
      this.#vacuumTimer.unref();
    }
  }

  /**
   * PGlite runs no autovacuum: rows deleted or updated (the outbox above all: every message adds
   * a row, the relay updates then deletes it) would pile up and slow every scan. This vacuums
   * (and analyzes) each table with many dead rows; called every `vacuumEveryMs`. Resolves with
   * the tables vacuumed.
   */
  async vacuumDead(): Promise<string[]> {
    // Nothing written since the last look: nothing to do (an idle process does no work).
    if (this.#closing || !this.#db || this.#statements === this.#statementsAtVacuum) return [];
    this.#statementsAtVacuum = this.#statements;
    // pg_class and the stats functions, prepared: a few times cheaper than the pg_stat_user_tables view.
    const { rows } = await this.query<{ name: string }>(
      `select c.oid::regclass::text as name from pg_class c
        where c.relkind = 'r' and c.relnamespace = $1::regnamespace
          and pg_stat_get_dead_tuples(c.oid) > $2::float8 + $3::float8 * pg_stat_get_live_tuples(c.oid)
        order by pg_stat_get_dead_tuples(c.oid) desc`,
      ["public", VACUUM_DEAD_ROWS, VACUUM_DEAD_SHARE],
    );
    for (const { name } of rows) {
      if (this.#closing) break;
      const started = performance.now();
      await this.query(`vacuum (analyze) ${name}`);
      this.#log.debug({ table: name, ms: Math.round(performance.now() - started) }, "vacuumed");
    }
    return rows.map((r) => r.name);
  }

  /**
   * Fills the (empty) directory with a copy of the template. False when there is no template to
   * copy (no cache configured, or it could not be made): PGlite then initializes the directory
   * itself, in this process.
   */
  async #fromTemplate(): Promise<boolean> {
    const cache = this.#opts.templateCache === undefined ? defaultTemplateCache() : this.#opts.templateCache;
    if (cache === null) return false;
    let template: string;
    try {
      template = await ensureTemplate(cache, this.#log);
    } catch (err) {
      this.#log.warn({ err, cache }, "no PGlite template (initializing the database in this process instead)");
      return false;
    }
    // A directory left half-copied by a crash holds no PG_VERSION yet: it is simply copied over.
    await copyTree(template, this.#opts.dir);
    return true;
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
    if (!params || params.length === 0) return this.#track(run<R>(db, sql, params));
    // As PGlite's own `query`: not while a transaction runs, one statement at a time.
    return this.#track(db._runExclusiveTransaction(() => this.#runPrepared<R>(db, sql, params, false)));
  }

  /** A parameterized statement as a prepared statement (see {@link PreparedStatements}). */
  async #runPrepared<R>(db: PGlite, sql: string, params: readonly unknown[], inTransaction: boolean): Promise<QueryResult<R>> {
    await db._checkReady();
    this.#statements++;
    return normalize<R>(await db._runExclusiveQuery(() => this.#prepared.run(db, sql, params, inTransaction)));
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
            if (!params || params.length === 0) return run<R>(raw, sql, params);
            // The transaction holds PGlite's transaction lock: only the query lock is taken.
            return this.#runPrepared<R>(db, sql, params, true);
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
    clearInterval(this.#vacuumTimer);
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

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Copies a directory tree (files and directories only), many files at a time. */
async function copyTree(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  const entries = await readdir(from, { withFileTypes: true, recursive: true });
  const files: string[] = [];
  for (const e of entries) {
    const rel = join(e.parentPath ?? e.path, e.name).slice(from.length + 1);
    if (e.isDirectory()) await mkdir(join(to, rel), { recursive: true });
    else if (e.isFile()) files.push(rel);
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < files.length) {
      const rel = files[next++]!;
      await copyFile(join(from, rel), join(to, rel), constants.COPYFILE_FICLONE);
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
}

/** `node_modules/.cache/resonance` of the installation that holds PGlite. */
export function defaultTemplateCache(): string {
  return join(dirname(dirname(pgliteDir())), ".cache", "resonance");
}

/** Everything a template depends on (a change makes a new one): PGlite's version and initdb's settings. */
async function templateKey(): Promise<string> {
  const { version } = JSON.parse(await readFile(join(pgliteDir(), "package.json"), "utf8")) as { version: string };
  return createHash("sha256").update(JSON.stringify({ v: 1, version, initdb: INITDB_PARAMS })).digest("hex").slice(0, 12);
}

/**
 * Made in a child process, so the ~500 MiB that PGlite's initdb takes is given back to the system
 * when it ends rather than staying in this one. Dropping template0/template1 halves the copy;
 * an embedded database never runs CREATE DATABASE.
 */
const MAKE_TEMPLATE = `
const [url, dir, initdb, start] = process.argv.slice(1);
const { PGlite } = await import(url);
const db = new PGlite({ dataDir: dir, initDbStartParams: JSON.parse(initdb), startParams: JSON.parse(start) });
await db.waitReady;
for (const d of ["template0", "template1"]) {
  await db.exec("alter database " + d + " is_template false");
  await db.exec("drop database " + d);
}
await db.exec("checkpoint");
await db.close();
`;

/**
 * Resolves with the directory of a closed, freshly initialized PGlite database for this PGlite
 * version, making it first if the cache has none (once per machine; a concurrent maker is waited
 * for). Logs a progress line while it is being made. Rejects if it cannot be made.
 */
export async function ensureTemplate(cache: string, log: Logger): Promise<string> {
  const dir = join(cache, `pglite-template-${await templateKey()}`);
  if (await exists(join(dir, "PG_VERSION"))) return dir;
  await mkdir(cache, { recursive: true });
  const lock = `${dir}.lock`;
  const started = Date.now();
  log.info("first start on this machine: creating the embedded database (PGlite initdb, once; about 10 s)");
  const progress = setInterval(() => log.info({ seconds: Math.round((Date.now() - started) / 1000) }, "still creating the embedded database"), 5_000);
  try {
    for (;;) {
      if (await exists(join(dir, "PG_VERSION"))) return dir;
      try {
        const file = await open(lock, "wx");
        await file.writeFile(String(process.pid));
        await file.close();
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      // Another process is making it, unless it died (or never wrote its pid, long ago).
      const owner = Number.parseInt(await readFile(lock, "utf8").catch(() => ""), 10);
      const age = Date.now() - (await stat(lock).then((s) => s.mtimeMs, () => Date.now()));
      if (owner > 0 ? !isAlive(owner) : age > 5_000) await unlink(lock).catch(() => undefined);
      else await sleep(200);
    }
    try {
      const tmp = `${dir}.tmp-${process.pid}`;
      await rm(tmp, { recursive: true, force: true });
      try {
        await runChild(pathToFileURL(createRequire(import.meta.url).resolve("@electric-sql/pglite")).href, tmp);
        await rename(tmp, dir);
      } finally {
        await rm(tmp, { recursive: true, force: true });
      }
    } finally {
      await unlink(lock).catch(() => undefined);
    }
    log.info({ ms: Date.now() - started }, "embedded database template ready");
    return dir;
  } finally {
    clearInterval(progress);
  }
}

function runChild(pgliteUrl: string, dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--input-type=module", "-e", MAKE_TEMPLATE, pgliteUrl, dir, JSON.stringify(INITDB_PARAMS), JSON.stringify(START_PARAMS)],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr = (stderr + c).slice(-2_000)));
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`PGlite initdb exited with ${code ?? signal}: ${/^.*error.*$/im.exec(stderr)?.[0] ?? stderr.trim()}`));
    });
  });
}
