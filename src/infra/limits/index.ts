import type { Logger } from "../../observability/log.js";
import { MemoryLimitStore } from "./memory.js";
import { RedisLimitStore } from "./redis.js";
import type { LimitStore } from "./types.js";

export type { BackoffRule, LimitStore, RateRule, Take } from "./types.js";
export { MemoryLimitStore } from "./memory.js";
export { RedisLimitStore } from "./redis.js";

/** Default Redis key prefix: the login failures of `alice` are at `resonance:limit:fail:login:alice`. */
export const DEFAULT_LIMIT_PREFIX = "resonance:limit:";

export interface LimitStoreOptions {
  /** Redis URL; unset selects the in-memory store (standalone mode). */
  readonly redisUrl?: string | undefined;
  /** Redis connection name, e.g. `resonance-logic-<instance>`. */
  readonly name: string;
  readonly log: Logger;
  /** Redis key prefix (default {@link DEFAULT_LIMIT_PREFIX}); tests use a unique one per run. */
  readonly prefix?: string | undefined;
}

/** Picks the store: Redis when `redisUrl` is set, else memory. Does no I/O (`start()` connects). */
export function createLimitStore(opts: LimitStoreOptions): LimitStore {
  if (!opts.redisUrl) return new MemoryLimitStore();
  return new RedisLimitStore({ redisUrl: opts.redisUrl, name: opts.name, log: opts.log, prefix: opts.prefix ?? DEFAULT_LIMIT_PREFIX });
}
