import type { Logger } from "../../observability/log.js";
import type { RouteTable } from "./types.js";

export interface MemoryRouteTableOptions {
  /** A route not refreshed by `online()` for this long is ignored and eventually dropped. */
  readonly ttlMs: number;
  readonly log: Logger;
  /** Clock (ms since epoch); tests may inject one. Defaults to `Date.now`. */
  readonly now?: () => number;
}

/**
 * The route table in process memory, for standalone mode (gateway, logic and task in one
 * process): the same semantics as the Redis table. Each user maps to gateway id → time of the
 * last `online()`; `lookup()` ignores routes older than `ttlMs`. Expired routes are swept at most
 * once per `ttlMs`, from `online()` and `lookup()`, so memory does not grow with users who left.
 *
 * Operations after `close()` reject, like a closed Redis connection.
 */
export class MemoryRouteTable implements RouteTable {
  readonly kind = "memory" as const;
  readonly #ttlMs: number;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #routes = new Map<string, Map<string, number>>();
  #lastSweep = 0;
  #closed = false;

  constructor(opts: MemoryRouteTableOptions) {
    this.#ttlMs = opts.ttlMs;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
  }

  /** Nothing to connect; resolves at once. */
  async start(): Promise<void> {
    this.#ensureOpen();
    this.#log.debug("in-memory route table ready");
  }

  /** Sets `gatewayId` as a route of each user, refreshing its time. */
  async online(gatewayId: string, usernames: readonly string[]): Promise<void> {
    this.#ensureOpen();
    const now = this.#now();
    for (const user of usernames) {
      let gateways = this.#routes.get(user);
      if (!gateways) {
        gateways = new Map();
        this.#routes.set(user, gateways);
      }
      gateways.set(gatewayId, now);
    }
    this.#maybeSweep(now);
  }

  /** Removes `gatewayId` from each user's routes (other gateways stay). */
  async offline(gatewayId: string, usernames: readonly string[]): Promise<void> {
    this.#ensureOpen();
    for (const user of usernames) {
      const gateways = this.#routes.get(user);
      if (!gateways) continue;
      gateways.delete(gatewayId);
      if (gateways.size === 0) this.#routes.delete(user);
    }
  }

  /** Each user's live gateways; users with none are absent from the map. */
  async lookup(usernames: readonly string[]): Promise<Map<string, string[]>> {
    this.#ensureOpen();
    const now = this.#now();
    const oldest = now - this.#ttlMs;
    const out = new Map<string, string[]>();
    for (const user of usernames) {
      const gateways = this.#routes.get(user);
      if (!gateways || out.has(user)) continue;
      const live: string[] = [];
      for (const [gatewayId, at] of gateways) if (at >= oldest) live.push(gatewayId);
      if (live.length > 0) out.set(user, live);
    }
    this.#maybeSweep(now);
    return out;
  }

  /** Drops every route. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#routes.clear();
  }

  #maybeSweep(now: number): void {
    if (now - this.#lastSweep < this.#ttlMs) return;
    this.#lastSweep = now;
    const oldest = now - this.#ttlMs;
    for (const [user, gateways] of this.#routes) {
      for (const [gatewayId, at] of gateways) if (at < oldest) gateways.delete(gatewayId);
      if (gateways.size === 0) this.#routes.delete(user);
    }
  }

  #ensureOpen(): void {
    if (this.#closed) throw new Error("routes: the route table is closed");
  }
}
