import { AuthService } from "../gen/resonance/logic/v1/logic_pb.js";
import type { LogicClient } from "./logic-client.js";

export interface Principal {
  readonly username: string;
  /** The token it was validated from. */
  readonly token: string;
  /** Token expiry, unix seconds. */
  readonly expiresAt: number;
}

const TTL_MS = 30_000;
const MAX_ENTRIES = 50_000;

/**
 * Validates tokens through logic and remembers valid ones for a short while, so a busy client
 * does not cost a logic round trip per request. Rejects (retryable) only if logic is unreachable.
 */
export class TokenValidator {
  readonly #logic: LogicClient;
  readonly #cache = new Map<string, { p: Principal; until: number }>();

  constructor(logic: LogicClient) {
    this.#logic = logic;
  }

  /** Forgets a token at once (it was logged out through this gateway). */
  forget(token: string): void {
    this.#cache.delete(token);
  }

  /** Resolves the principal, or undefined for a bad or expired token. */
  async validate(token: string): Promise<Principal | undefined> {
    if (!token || token.length > 4096) return undefined;
    const now = Date.now();
    const hit = this.#cache.get(token);
    if (hit && hit.until > now && hit.p.expiresAt * 1000 > now) return hit.p;
    const r = await this.#logic.call(AuthService, (c) => c.validateToken({ accessToken: token }));
    if (!r.valid) {
      this.#cache.delete(token);
      return undefined;
    }
    const p = { username: r.username, token, expiresAt: Number(r.expiresAt) };
    if (this.#cache.size >= MAX_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(token, { p, until: now + TTL_MS });
    return p;
  }
}

/** The token of a request: `Authorization: Bearer <t>` or `?token=`. */
export function tokenOf(headers: { get(name: string): string | null }, url: string | undefined): string {
  const auth = headers.get("authorization");
  if (auth?.toLowerCase().startsWith("bearer ")) return auth.slice(7).trim();
  if (!url) return "";
  const q = url.indexOf("?");
  return q >= 0 ? (new URLSearchParams(url.slice(q + 1)).get("token") ?? "") : "";
}
