import type { Logger } from "../../observability/log.js";
import { MemoryRouteTable } from "./memory.js";
import { RedisRouteTable } from "./redis.js";
import type { RouteTable } from "./types.js";

export type { RouteTable } from "./types.js";
export { MemoryRouteTable, type MemoryRouteTableOptions } from "./memory.js";
export { RedisRouteTable, type RedisRouteTableOptions } from "./redis.js";

/** Default Redis key prefix: the hash of user `alice` is `resonance:route:alice`. */
export const DEFAULT_ROUTE_PREFIX = "resonance:route:";

export interface RouteTableOptions {
  /** Redis URL; unset selects the in-memory table (standalone mode). */
  readonly redisUrl?: string | undefined;
  /** Redis connection name (`CLIENT SETNAME`), e.g. `resonance-logic-<instance>`. */
  readonly name: string;
  /** Routes not refreshed by `online()` for this long are ignored by `lookup()` and expire. */
  readonly ttlMs: number;
  readonly log: Logger;
  /** Redis key prefix (default {@link DEFAULT_ROUTE_PREFIX}); tests use a unique one per run. */
  readonly prefix?: string | undefined;
}

/**
 * Picks the route table: Redis when `redisUrl` is set, else in memory. Does no I/O: `start()`
 * connects (and rejects clearly if Redis is unreachable), `close()` is idempotent.
 */
export function createRouteTable(opts: RouteTableOptions): RouteTable {
  if (!Number.isFinite(opts.ttlMs) || opts.ttlMs <= 0) throw new RangeError(`routes: ttlMs must be > 0, got ${opts.ttlMs}`);
  if (!opts.redisUrl) return new MemoryRouteTable({ ttlMs: opts.ttlMs, log: opts.log });
  return new RedisRouteTable({
    redisUrl: opts.redisUrl,
    name: opts.name,
    ttlMs: opts.ttlMs,
    log: opts.log,
    prefix: opts.prefix ?? DEFAULT_ROUTE_PREFIX,
  });
}
