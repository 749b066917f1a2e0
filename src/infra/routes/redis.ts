import { Redis } from "ioredis";
import type { Logger } from "../../observability/log.js";
import type { RouteTable } from "./types.js";

export interface RedisRouteTableOptions {
  readonly redisUrl: string;
  /** Connection name (`CLIENT SETNAME`), e.g. `resonance-logic-<instance>`. */
  readonly name: string;
  /** A route not refreshed by `online()` for this long is ignored, and its key expires. */
  readonly ttlMs: number;
  readonly log: Logger;
  /** Key prefix; one hash per user at `${prefix}${username}`. */
  readonly prefix: string;
}

/** Connect attempts give up after this long, so `start()` fails instead of hanging. */
const CONNECT_TIMEOUT_MS = 5_000;
/** `quit()` waits this long for Redis to answer before the socket is simply dropped. */
const QUIT_TIMEOUT_MS = 2_000;

/**
 * Deletes a hash field only if it still holds the value seen by the caller, so a stale route
 * being cleaned up cannot erase a refresh that landed meanwhile (a refresh changes the value).
 */
const DELETE_IF_UNCHANGED = `
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0`;

/**
 * Every given key's hash in one command: one reply however many users a lookup names, instead
 * of one command (and its client-side object, encoding and promise) per user.
 */
const HGETALL_MANY = `
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out`;

type RouteRedis = Redis & {
  resonanceHdelIfEqual(key: string, field: string, value: string): Promise<number>;
  resonanceHgetallMany(numberOfKeys: number, ...keys: string[]): Promise<unknown[]>;
};

/**
 * The route table in Redis: one hash per user, field = gateway id, value = the time (ms since
 * epoch, the writer's clock) of the gateway's last `online()` for that user. Every `online()`
 * also sets the key's expiry to `ttlMs`, so a user nobody refreshes disappears by itself, and
 * `lookup()` ignores fields older than `ttlMs` (a gateway that died while other gateways keep the
 * key alive). Such stale fields are removed lazily by the lookup that sees them.
 *
 * Every operation is one pipelined round trip however many users it names. Clocks of the logic
 * instances are assumed to agree within a small fraction of `ttlMs`.
 */
export class RedisRouteTable implements RouteTable {
  readonly kind = "redis" as const;
  readonly #opts: RedisRouteTableOptions;
  readonly #log: Logger;
  readonly #redis: RouteRedis;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: the connection opens in `start()`. */
  constructor(opts: RedisRouteTableOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const redis = new Redis(opts.redisUrl, {
      lazyConnect: true,
      connectionName: opts.name,
      connectTimeout: CONNECT_TIMEOUT_MS,
    });
    redis.defineCommand("resonanceHdelIfEqual", { numberOfKeys: 1, lua: DELETE_IF_UNCHANGED });
    redis.defineCommand("resonanceHgetallMany", { lua: HGETALL_MANY });
    this.#redis = redis as RouteRedis;
    // Without a listener ioredis prints every reconnect error; route them through our logger.
    this.#redis.on("error", (err: Error) => {
      if (!this.#closing) this.#log.warn({ err: err.message }, "redis connection error");
    });
  }

  /**
   * Connects. Resolves when Redis answers; rejects with a clear error (and stops reconnecting)
   * if it cannot be reached. Idempotent.
   */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("routes: start() after close()");
    try {
      await this.#redis.connect();
      await this.#redis.ping();
    } catch (err) {
      this.#redis.disconnect();
      throw new Error(`routes: cannot connect to Redis at ${redactUrl(this.#opts.redisUrl)}: ${errorMessage(err)}`, {
        cause: err,
      });
    }
    this.#log.info({ url: redactUrl(this.#opts.redisUrl), name: this.#opts.name }, "route table connected to redis");
  }

  /** Sets `gatewayId` as a route of each user and refreshes the users' expiry. One round trip. */
  async online(gatewayId: string, usernames: readonly string[]): Promise<void> {
    if (usernames.length === 0) return;
    const now = String(Date.now());
    const pipeline = this.#redis.pipeline();
    for (const user of new Set(usernames)) {
      const key = this.#key(user);
      pipeline.hset(key, gatewayId, now);
      pipeline.pexpire(key, this.#opts.ttlMs);
    }
    checkPipeline(await pipeline.exec(), "online");
  }

  /** Removes `gatewayId` from each user's routes (other gateways stay). One round trip. */
  async offline(gatewayId: string, usernames: readonly string[]): Promise<void> {
    if (usernames.length === 0) return;
    const pipeline = this.#redis.pipeline();
    for (const user of new Set(usernames)) pipeline.hdel(this.#key(user), gatewayId);
    checkPipeline(await pipeline.exec(), "offline");
  }

  /**
   * Each user's live gateways, from one round trip: one script that reads every user's hash.
   * Users with no live route are absent from the map. Rejects if Redis fails.
   */
  async lookup(usernames: readonly string[]): Promise<Map<string, string[]>> {
    const routes = new Map<string, string[]>();
    if (usernames.length === 0) return routes;
    const users = [...new Set(usernames)];
    let replies: unknown[];
    try {
      replies = await this.#redis.resonanceHgetallMany(users.length, ...users.map((u) => this.#key(u)));
    } catch (err) {
      throw new Error(`routes: lookup failed: ${errorMessage(err)}`, { cause: err });
    }
    const oldest = Date.now() - this.#opts.ttlMs;
    const stale: Array<{ key: string; field: string; value: string }> = [];
    users.forEach((user, i) => {
      const fields = toRecord(replies[i]);
      const gateways: string[] = [];
      for (const [gatewayId, value] of Object.entries(fields)) {
        if (Number(value) >= oldest) gateways.push(gatewayId);
        else stale.push({ key: this.#key(user), field: gatewayId, value });
      }
      if (gateways.length > 0) routes.set(user, gateways);
    });
    if (stale.length > 0) this.#removeStale(stale);
    return routes;
  }

  /** Fire and forget: the lookup has its answer; cleanup failing only delays it to a later lookup. */
  #removeStale(stale: ReadonlyArray<{ key: string; field: string; value: string }>): void {
    const pipeline = this.#redis.pipeline() as ReturnType<Redis["pipeline"]> & {
      resonanceHdelIfEqual(key: string, field: string, value: string): unknown;
    };
    for (const s of stale) pipeline.resonanceHdelIfEqual(s.key, s.field, s.value);
    pipeline.exec().catch((err: unknown) => this.#log.debug({ err: errorMessage(err) }, "stale route cleanup failed"));
  }

  /** Sends QUIT (bounded wait) and closes the connection. Idempotent; never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const redis = this.#redis;
    if (redis.status !== "ready") {
      redis.disconnect();
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        redis.quit(),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, QUIT_TIMEOUT_MS);
        }),
      ]);
    } catch {
      // the connection is going away either way
    } finally {
      clearTimeout(timer);
      redis.disconnect();
    }
  }

  #key(username: string): string {
    return `${this.#opts.prefix}${username}`;
  }
}

type PipelineResult = Array<[Error | null, unknown]> | null;

/** Throws the first command error of a pipeline; returns the replies. */
function checkPipeline(results: PipelineResult, op: string): unknown[] {
  if (!results) throw new Error(`routes: ${op} pipeline was discarded`);
  return results.map(([err, reply]) => {
    if (err) throw new Error(`routes: ${op} failed: ${err.message}`, { cause: err });
    return reply;
  });
}

/** HGETALL reply as a record, whichever shape the client hands back (object or flat array). */
function toRecord(reply: unknown): Record<string, string> {
  if (Array.isArray(reply)) {
    const out: Record<string, string> = {};
    for (let i = 0; i + 1 < reply.length; i += 2) out[String(reply[i])] = String(reply[i + 1]);
    return out;
  }
  if (reply && typeof reply === "object") return reply as Record<string, string>;
  return {};
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(invalid url)";
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
