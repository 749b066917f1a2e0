/**
 * Per-user limits a gateway enforces by itself, in memory: the chat rate of a user across all of
 * their connections here, and how many connections a user or a client address may hold. Kept in
 * the gateway process (no round trip per chat): a user spread over N gateways gets at most N
 * times the rate, which the per-connection-count limit keeps small.
 */

export interface ChatRule {
  readonly perSec: number;
  readonly burst: number;
}

/** `ok`: go on. `limited`: refuse this chat. `exceeded`: the user kept flooding past a whole burst of refusals; close. */
export type ChatVerdict = "ok" | "limited" | "exceeded";

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * A token bucket per user. A bucket outlives the user's sockets until it is full again, so a
 * reconnect does not bring a fresh burst. Each refused chat costs a token too: a user who keeps
 * flooding sinks below minus one burst, and from there each chat is `exceeded`.
 */
export class ChatRate {
  readonly #rule: ChatRule;
  readonly #now: () => number;
  readonly #buckets = new Map<string, Bucket>();

  constructor(rule: ChatRule, now: () => number = Date.now) {
    this.#rule = rule;
    this.#now = now;
  }

  /** Users with a bucket that is not full. */
  get size(): number {
    return this.#buckets.size;
  }

  /** Takes a token for one chat of `username`. */
  take(username: string): ChatVerdict {
    const { perSec, burst } = this.#rule;
    const now = this.#now();
    const b = this.#buckets.get(username) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + (Math.max(0, now - b.at) / 1000) * perSec);
    b.at = now;
    this.#buckets.set(username, b);
    if (b.tokens >= 1) {
      b.tokens--;
      return "ok";
    }
    if (b.tokens < -burst) return "exceeded";
    b.tokens--;
    return "limited";
  }

  /** Forgets the buckets that have refilled (their users would start full anyway). Call now and then. */
  sweep(): void {
    const { perSec, burst } = this.#rule;
    const now = this.#now();
    for (const [user, b] of this.#buckets) if (b.tokens + ((now - b.at) / 1000) * perSec >= burst) this.#buckets.delete(user);
  }
}

export type SlotRefusal = "connections-per-user" | "connections-per-address";

/**
 * Connection slots per user and per client address. A slot is taken when an upgrade starts (so
 * upgrades still under way count) and given back through the returned release function, which
 * may be called more than once.
 */
export class ConnectionSlots {
  readonly #perUser: number;
  readonly #perAddress: number;
  readonly #users = new Map<string, number>();
  readonly #addresses = new Map<string, number>();

  constructor(limits: { readonly perUser: number; readonly perAddress: number }) {
    this.#perUser = limits.perUser;
    this.#perAddress = limits.perAddress;
  }

  /** A slot for one more connection from `address`, or undefined when it has all it may have. */
  address(address: string): (() => void) | undefined {
    return take(this.#addresses, address, this.#perAddress);
  }

  /** A slot for one more connection of `username`, or undefined when they have all they may have. */
  user(username: string): (() => void) | undefined {
    return take(this.#users, username, this.#perUser);
  }

  /** Slots held (for tests and metrics). */
  held(): { users: number; addresses: number } {
    let users = 0;
    let addresses = 0;
    for (const n of this.#users.values()) users += n;
    for (const n of this.#addresses.values()) addresses += n;
    return { users, addresses };
  }
}

function take(counts: Map<string, number>, key: string, max: number): (() => void) | undefined {
  const n = counts.get(key) ?? 0;
  if (n >= max) return undefined;
  counts.set(key, n + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    const left = (counts.get(key) ?? 1) - 1;
    if (left > 0) counts.set(key, left);
    else counts.delete(key);
  };
}
