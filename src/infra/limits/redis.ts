import { Redis } from "ioredis";
import type { Logger } from "../../observability/log.js";
import type { BackoffRule, LimitStore, RateRule, Take } from "./types.js";

export interface RedisLimitStoreOptions {
  readonly redisUrl: string;
  /** Connection name (`CLIENT SETNAME`), e.g. `resonance-logic-<instance>`. */
  readonly name: string;
  readonly log: Logger;
  /** Key prefix: a key `k` lives at `${prefix}rate:k` and `${prefix}fail:k`. */
  readonly prefix: string;
}

/** Connect attempts give up after this long, so `start()` fails instead of hanging. */
const CONNECT_TIMEOUT_MS = 5_000;
/** `quit()` waits this long for Redis to answer before the socket is simply dropped. */
const QUIT_TIMEOUT_MS = 2_000;

// Every script reads the time from Redis itself, so instances with skewed clocks agree.
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/** Token bucket: ARGV = perSec, burst. Returns {allowed (0/1), retryAfterMs}. */
const TAKE = `${NOW}
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - at) / 1000 * rate)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, wait}`;

/** One more failure: ARGV = free, baseMs, maxMs, forgetMs. Returns the block in ms. */
const FAIL = `${NOW}
local free = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local forget = tonumber(ARGV[4])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local block = 0
if n > free then
  block = math.min(max, base * 2 ^ math.min(n - free - 1, 40))
end
redis.call('HSET', KEYS[1], 'until', tostring(now + block))
redis.call('PEXPIRE', KEYS[1], math.max(forget, block))
return block`;

/** ARGV none. Returns the ms left of the key's block. */
const BLOCKED = `${NOW}
local u = tonumber(redis.call('HGET', KEYS[1], 'until'))
if u == nil or u <= now then return 0 end
return u - now`;

type LimitRedis = Redis & {
  resonanceTake(key: string, perSec: number, burst: number): Promise<[number, number]>;
  resonanceFail(key: string, free: number, baseMs: number, maxMs: number, forgetMs: number): Promise<number>;
  resonanceBlocked(key: string): Promise<number>;
};

/**
 * The limit store in Redis: one hash per key and kind, changed only by Lua scripts (each one
 * atomic, one round trip) that read Redis's own clock. Every hash expires once it would be back
 * to its resting state, so idle keys cost nothing.
 */
export class RedisLimitStore implements LimitStore {
  readonly kind = "redis" as const;
  readonly #opts: RedisLimitStoreOptions;
  readonly #redis: LimitRedis;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the connection opens in `start()`. */
  constructor(opts: RedisLimitStoreOptions) {
    this.#opts = opts;
    const redis = new Redis(opts.redisUrl, { lazyConnect: true, connectionName: opts.name, connectTimeout: CONNECT_TIMEOUT_MS });
    redis.defineCommand("resonanceTake", { numberOfKeys: 1, lua: TAKE });
    redis.defineCommand("resonanceFail", { numberOfKeys: 1, lua: FAIL });
    redis.defineCommand("resonanceBlocked", { numberOfKeys: 1, lua: BLOCKED });
    this.#redis = redis as LimitRedis;
    this.#redis.on("error", (err: Error) => {
      if (!this.#closing) opts.log.warn({ err: err.message }, "redis connection error (limits)");
    });
  }

  /** Connects; rejects clearly (and stops reconnecting) if Redis cannot be reached. Idempotent. */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("limits: start() after close()");
    try {
      await this.#redis.connect();
      await this.#redis.ping();
    } catch (err) {
      this.#redis.disconnect();
      throw new Error(`limits: cannot connect to Redis: ${(err as Error).message}`, { cause: err });
    }
  }

  async take(key: string, rule: RateRule): Promise<Take> {
    const [allowed, wait] = await this.#ready().resonanceTake(`${this.#opts.prefix}rate:${key}`, rule.perSec, rule.burst);
    return { allowed: allowed === 1, retryAfterMs: Number(wait) };
  }

  async fail(key: string, rule: BackoffRule): Promise<number> {
    return Number(await this.#ready().resonanceFail(`${this.#opts.prefix}fail:${key}`, rule.free, rule.baseMs, rule.maxMs, rule.forgetMs));
  }

  async blockedFor(key: string): Promise<number> {
    return Number(await this.#ready().resonanceBlocked(`${this.#opts.prefix}fail:${key}`));
  }

  async clear(key: string): Promise<void> {
    await this.#ready().del(`${this.#opts.prefix}fail:${key}`);
  }

  /** Closes the connection (QUIT, then drop after a short wait). Idempotent; never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([this.#redis.quit(), new Promise((r) => (timer = setTimeout(r, QUIT_TIMEOUT_MS)))]);
    } catch {
      // Already closed.
    } finally {
      clearTimeout(timer);
      this.#redis.disconnect();
    }
  }

  #ready(): LimitRedis {
    if (this.#closing) throw new Error("limits: the limit store is closed");
    return this.#redis;
  }
}
