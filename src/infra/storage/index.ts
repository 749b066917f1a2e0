import { join } from "node:path";
import type { Logger } from "../../observability/log.js";
import { PgliteStorage } from "./pglite.js";
import { PostgresStorage } from "./postgres.js";
import type { Storage } from "./types.js";

export type { Queryable, Storage } from "./types.js";
export { migrate, type Migration } from "./migrate.js";
export { PgliteStorage } from "./pglite.js";
export { PostgresStorage, describeDatabaseUrl } from "./postgres.js";

export interface StorageOptions {
  /** PostgreSQL URL; unset selects embedded PGlite in `${dataDir}/pglite`. */
  readonly databaseUrl?: string | undefined;
  /** The service's data directory (only PGlite uses it). */
  readonly dataDir: string;
  /** `application_name` of every PostgreSQL connection, e.g. `resonance-logic-<instance>`. */
  readonly applicationName: string;
  readonly log: Logger;
  /** PostgreSQL pool size (default 4: the writers batch, a few connections carry them). */
  readonly poolSize?: number | undefined;
  /** PostgreSQL `statement_timeout` in ms (default 10 s, 0 = none). PGlite has no timer to enforce one. */
  readonly statementTimeoutMs?: number | undefined;
}

/**
 * Picks the storage: PostgreSQL when `databaseUrl` is set, else PGlite persisted in
 * `${dataDir}/pglite`. Does no I/O; call `start()` (which fails if the database cannot be reached
 * or opened) and `close()` (idempotent) on the result.
 */
export function createStorage(opts: StorageOptions): Storage {
  if (opts.databaseUrl) {
    return new PostgresStorage({
      databaseUrl: opts.databaseUrl,
      applicationName: opts.applicationName,
      log: opts.log,
      ...(opts.poolSize !== undefined ? { poolSize: opts.poolSize } : {}),
      ...(opts.statementTimeoutMs !== undefined ? { statementTimeoutMs: opts.statementTimeoutMs } : {}),
    });
  }
  return new PgliteStorage({ dir: join(opts.dataDir, "pglite"), log: opts.log });
}
