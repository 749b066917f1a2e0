/**
 * Something that runs SQL: the pool itself, or one transaction. Parameters are `$1, $2, ...`.
 * Both adapters return int8 (bigint, bigserial, `count(*)`) and numeric columns as JS strings
 * (`BigInt(row.x)` to use them), timestamptz as `Date`, bytea as `Uint8Array`.
 */
export interface Queryable {
  query<R = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<{ rows: R[]; rowCount: number }>;
}

/**
 * The storage a service talks to: PostgreSQL (`pg` pool) or PGlite (embedded), same SQL.
 * `start()` connects (and fails there, never in the factory); `close()` is idempotent.
 */
export interface Storage extends Queryable {
  readonly kind: "postgres" | "pglite";
  start(): Promise<void>;
  /** Runs `fn` in one transaction: commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}
