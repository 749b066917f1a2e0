import { AuthService } from "../gen/resonance/logic/v1/logic_pb.js";
import type { LogicClient } from "./logic-client.js";

export interface Principal {
  readonly username: string;
  /** The token it was validated from. */
  readonly token: string;
  /** Token expiry, unix seconds. */
  readonly expiresAt: number;
  /** When logic said the token was valid (ms since epoch): a revocation after it wins. */
  readonly validatedAt: number;
}

const TTL_MS = 30_000;
const MAX_ENTRIES = 50_000;
/**
 * Revocations are remembered this long: longer than any validation in flight (whose answer,
 * given before the revocation, must then not be believed).
 */
const REVOKED_MEMORY_MS = 60_000;
const MAX_REVOKED = 50_000;

/**
 * Validates tokens through logic and remembers valid ones for a short while, so a busy client
 * does not cost a logic round trip per request. Rejects (retryable) only if logic is unreachable.
 */
export class TokenValidator {
  readonly #logic: LogicClient;
  readonly #cache = new Map<string, { p: Principal; until: number }>();
  /** Revoked tokens, and users whose every token was revoked, with the time of the revocation. */
  readonly #revokedTokens = new Map<string, number>();
  readonly #revokedUsers = new Map<string, number>();

  constructor(logic: LogicClient) {
    this.#logic = logic;
  }

  /** Forgets a token at once and refuses it from now on (it was logged out). */
  forget(token: string): void {
    this.#cache.delete(token);
    remember(this.#revokedTokens, token);
  }

  /** Forgets every token of a user at once and refuses those validated until now (log out everywhere). */
  forgetUser(username: string): void {
    for (const [token, e] of this.#cache) if (e.p.username === username) this.#cache.delete(token);
    remember(this.#revokedUsers, username);
  }

  /** True when the principal's token was revoked after it was validated (a socket being opened must then not be kept). */
  revoked(p: Principal): boolean {
    const now = Date.now();
    const t = this.#revokedTokens.get(p.token);
    const u = this.#revokedUsers.get(p.username);
    return (t !== undefined && t > now - REVOKED_MEMORY_MS) || (u !== undefined && u >= p.validatedAt && u > now - REVOKED_MEMORY_MS);
  }

  /** Resolves the principal, or undefined for a bad, expired or revoked token. */
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
    const p: Principal = { username: r.username, token, expiresAt: Number(r.expiresAt), validatedAt: now };
    // Revoked while logic was answering: its "valid" came before the revocation.
    if (this.revoked(p)) return undefined;
    if (this.#cache.size >= MAX_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(token, { p, until: now + TTL_MS });
    return p;
  }
}

/** Records a revocation now; drops the oldest beyond the bound (they are past their memory by then). */
function remember(map: Map<string, number>, key: string): void {
  map.delete(key);
  map.set(key, Date.now());
  if (map.size > MAX_REVOKED) map.delete(map.keys().next().value!);
}

/** The token of an API request: `Authorization: Bearer <t>` only (a token in a URL ends up in proxy logs). */
export function bearerOf(headers: { get(name: string): string | null }): string {
  const auth = headers.get("authorization");
  return auth?.toLowerCase().startsWith("bearer ") ? auth.slice(7).trim() : "";
}

/**
 * The token of a WebSocket upgrade: `Authorization: Bearer <t>`, or `?token=` (browsers cannot
 * set headers on a WebSocket). Only `/ws` accepts the query form.
 */
export function tokenOf(headers: { get(name: string): string | null }, url: string | undefined): string {
  const bearer = bearerOf(headers);
  if (bearer || !url) return bearer;
  const q = url.indexOf("?");
  return q >= 0 ? (new URLSearchParams(url.slice(q + 1)).get("token") ?? "") : "";
}
