/** A token bucket: `burst` tokens at most, refilled at `perSec` per second. */
export interface RateRule {
  readonly perSec: number;
  readonly burst: number;
}

/**
 * Backoff after failures in a row: the first `free` cost nothing; each one after that blocks the
 * key for `baseMs`, doubling with every further failure, at most `maxMs`. The count is forgotten
 * `forgetMs` after the last failure.
 */
export interface BackoffRule {
  readonly free: number;
  readonly baseMs: number;
  readonly maxMs: number;
  readonly forgetMs: number;
}

export interface Take {
  readonly allowed: boolean;
  /** When not allowed: ms until a token is back. 0 when allowed. */
  readonly retryAfterMs: number;
}

/**
 * Limits shared by every instance of a service: Redis in a cluster (every logic instance sees the
 * same counts), memory in standalone. Keys are the caller's (e.g. `login:alice`); the rate and
 * backoff state of one key are kept apart. Operations after `close()` reject.
 */
export interface LimitStore {
  start(): Promise<void>;
  /** Takes one token from the key's bucket. Resolves whether it was there; never blocks. */
  take(key: string, rule: RateRule): Promise<Take>;
  /** Records a failure; resolves how long the key is now blocked (0 while failures are free). */
  fail(key: string, rule: BackoffRule): Promise<number>;
  /** How long the key is still blocked by earlier failures (0: it may try now). */
  blockedFor(key: string): Promise<number>;
  /** Forgets the key's failures (after a success). */
  clear(key: string): Promise<void>;
  close(): Promise<void>;
}

/** The block that the `n`-th failure in a row sets (0 while `n` is within the free ones). */
export function backoffMs(n: number, rule: BackoffRule): number {
  if (n <= rule.free) return 0;
  return Math.min(rule.maxMs, rule.baseMs * 2 ** Math.min(n - rule.free - 1, 40));
}
