import { ConnectError } from "@connectrpc/connect";
import { codeName } from "../rpc/code-names.js";

export { codeName };

/**
 * Conditions a client resolves by itself (resend the same `seq`, reconnect, back off):
 * they are never surfaced to the application. `cancelled` is included because the gateway
 * reports a logic call cut short by a shutdown that way, and idempotent resends make it safe.
 */
const RETRYABLE = new Set(["unavailable", "resource_exhausted", "deadline_exceeded", "aborted", "internal", "unknown", "cancelled"]);

/**
 * Whether an ack or RPC error with this code may be retried with the same idempotency key.
 * An empty code is retryable: an old server sends `error` without `error_code`.
 */
export function isRetryableCode(code: string): boolean {
  return code === "" || RETRYABLE.has(code);
}

/**
 * The one error type the client surfaces. `code` is a Connect code name ("permission_denied",
 * "invalid_argument", "unauthenticated", ...) or "cancelled" for sends cut off by `close()`.
 */
export class ResonanceError extends Error {
  override readonly name = "ResonanceError";
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  /** Wraps anything thrown by a Connect call (or the network below it). */
  static from(err: unknown): ResonanceError {
    if (err instanceof ResonanceError) return err;
    const ce = ConnectError.from(err);
    return new ResonanceError(codeName(ce.code), ce.rawMessage, { cause: err });
  }
}

/** True for errors the client retries on its own (network failures, 503 upgrades, retryable codes). */
export function isRetryable(err: unknown): boolean {
  return isRetryableCode(ResonanceError.from(err).code);
}

/** Exponential backoff with full jitter: a random delay in [0, min(capMs, baseMs · 2^attempt)]. */
export function fullJitter(attempt: number, baseMs: number, capMs: number): number {
  return Math.random() * Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
}

/** Exponential backoff with equal jitter: at least half of min(capMs, baseMs · 2^attempt). */
export function equalJitter(attempt: number, baseMs: number, capMs: number): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}
