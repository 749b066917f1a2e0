import { backoffMs, type BackoffRule, type LimitStore, type RateRule, type Take } from "./types.js";

export interface MemoryLimitStoreOptions {
  /** Clock (ms since epoch); tests may inject one. Defaults to `Date.now`. */
  readonly now?: () => number;
  /** Most keys kept; the oldest are dropped beyond it (default 100,000), so memory stays bounded. */
  readonly maxKeys?: number;
}

interface Bucket {
  tokens: number;
  at: number;
  /** When a full bucket would be back: the entry can go after this. */
  expires: number;
}

interface Failures {
  n: number;
  until: number;
  expires: number;
}

/**
 * The limit store in process memory (standalone mode: one process serves every user). Same
 * semantics as the Redis store. Entries expire like Redis keys; at most `maxKeys` of each kind
 * are kept (the least recently written go first), so a flood of distinct keys cannot grow memory.
 */
export class MemoryLimitStore implements LimitStore {
  readonly kind = "memory" as const;
  readonly #now: () => number;
  readonly #maxKeys: number;
  readonly #buckets = new Map<string, Bucket>();
  readonly #failures = new Map<string, Failures>();
  #closed = false;

  constructor(opts: MemoryLimitStoreOptions = {}) {
    this.#now = opts.now ?? Date.now;
    this.#maxKeys = opts.maxKeys ?? 100_000;
  }

  async start(): Promise<void> {
    this.#open();
  }

  async take(key: string, rule: RateRule): Promise<Take> {
    this.#open();
    const now = this.#now();
    const old = this.#live(this.#buckets, key, now);
    const tokens = old ? Math.min(rule.burst, old.tokens + (Math.max(0, now - old.at) / 1000) * rule.perSec) : rule.burst;
    const allowed = tokens >= 1;
    const left = allowed ? tokens - 1 : tokens;
    this.#put(this.#buckets, key, { tokens: left, at: now, expires: now + Math.ceil(((rule.burst - left) / rule.perSec) * 1000) + 1000 });
    return { allowed, retryAfterMs: allowed ? 0 : Math.ceil(((1 - left) / rule.perSec) * 1000) };
  }

  async fail(key: string, rule: BackoffRule): Promise<number> {
    this.#open();
    const now = this.#now();
    const n = (this.#live(this.#failures, key, now)?.n ?? 0) + 1;
    const block = backoffMs(n, rule);
    this.#put(this.#failures, key, { n, until: now + block, expires: now + Math.max(rule.forgetMs, block) });
    return block;
  }

  async blockedFor(key: string): Promise<number> {
    this.#open();
    const now = this.#now();
    const f = this.#live(this.#failures, key, now);
    return f ? Math.max(0, f.until - now) : 0;
  }

  async clear(key: string): Promise<void> {
    this.#open();
    this.#failures.delete(key);
  }

  /** Drops everything. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#buckets.clear();
    this.#failures.clear();
  }

  #live<T extends { expires: number }>(map: Map<string, T>, key: string, now: number): T | undefined {
    const v = map.get(key);
    if (v && v.expires <= now) {
      map.delete(key);
      return undefined;
    }
    return v;
  }

  /** Writes an entry as the newest; evicts the oldest beyond the bound. */
  #put<T>(map: Map<string, T>, key: string, value: T): void {
    map.delete(key);
    map.set(key, value);
    if (map.size > this.#maxKeys) map.delete(map.keys().next().value!);
  }

  #open(): void {
    if (this.#closed) throw new Error("limits: the limit store is closed");
  }
}
