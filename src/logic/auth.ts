import { randomBytes, scrypt as scryptCb, timingSafeEqual } from "node:crypto";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { SignJWT, jwtVerify, errors as joseErrors } from "jose";
import { isUsername } from "./validate.js";

const scrypt = promisify(scryptCb) as (pw: string, salt: Buffer, len: number, opts: { N: number; r: number; p: number; maxmem: number }) => Promise<Buffer>;

// scrypt N=2^14, r=8, p=1: ~50 ms per hash on this class of machine, 16 MiB of memory.
const PARAMS = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const KEY_LEN = 32;

/** Hashes a password with scrypt: `scrypt$N$r$p$salt$hash` (base64). */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(password, salt, KEY_LEN, PARAMS);
  return ["scrypt", PARAMS.N, PARAMS.r, PARAMS.p, salt.toString("base64"), hash.toString("base64")].join("$");
}

/** True when `password` matches `stored`; constant-time comparison; false for a malformed hash. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split("$");
  if (kind !== "scrypt" || !salt || !hash) return false;
  const expected = Buffer.from(hash, "base64");
  const actual = await scrypt(password, Buffer.from(salt, "base64"), expected.length, {
    N: Number(n),
    r: Number(r),
    p: Number(p),
    maxmem: PARAMS.maxmem,
  });
  return timingSafeEqual(actual, expected);
}

/**
 * Runs password hashing (scrypt: CPU and 16 MiB each, on libuv's small thread pool, which file
 * and DNS work share) a few at a time, with a bounded queue. A call that finds the queue full is
 * refused at once with `resource_exhausted` (retryable) instead of waiting behind an attack.
 */
export class KdfQueue {
  readonly #concurrency: number;
  readonly #maxQueued: number;
  readonly #waiting: Array<() => void> = [];
  #running = 0;

  constructor(opts: { concurrency: number; maxQueued: number }) {
    this.#concurrency = opts.concurrency;
    this.#maxQueued = opts.maxQueued;
  }

  /** Calls waiting for their turn. */
  get queued(): number {
    return this.#waiting.length;
  }

  /** Runs `fn` when a slot is free; rejects with `resource_exhausted` when the queue is full. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#running >= this.#concurrency) {
      if (this.#waiting.length >= this.#maxQueued) {
        throw new ConnectError("the server is busy checking passwords; try again shortly", Code.ResourceExhausted);
      }
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    } else {
      this.#running++;
    }
    try {
      return await fn();
    } finally {
      // The slot passes straight to the next waiter (the count stays), or is freed.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}

/** What a valid token says. */
export interface Claims {
  readonly username: string;
  /** Token id (revocation of this one token). */
  readonly jti: string;
  /** Expiry, unix seconds. */
  readonly expiresAt: number;
  /** Issue time, ms since epoch (revocation of every token issued before a moment). */
  readonly issuedAtMs: number;
}

/** Signs and checks access tokens (HS256 JWT: subject = username, with expiry). */
export class Tokens {
  readonly #key: Uint8Array;
  readonly #ttlSec: number;

  constructor(secret: string, ttlMs: number) {
    this.#key = new TextEncoder().encode(secret);
    this.#ttlSec = Math.max(1, Math.round(ttlMs / 1000));
  }

  async issue(username: string): Promise<string> {
    const nowMs = Date.now();
    const now = Math.floor(nowMs / 1000);
    // `iat` has whole seconds; "log out everywhere" needs to order a token and a logout finer.
    return new SignJWT({ iat_ms: nowMs })
      .setProtectedHeader({ alg: "HS256" })
      .setJti(randomBytes(12).toString("base64url"))
      .setSubject(username)
      .setIssuedAt(now)
      .setExpirationTime(now + this.#ttlSec)
      .setIssuer("resonance")
      .sign(this.#key);
  }

  /** Resolves with the token's claims, or undefined for a bad, forged or expired token; never rejects. */
  async verify(token: string): Promise<Claims | undefined> {
    if (!token || token.length > 4096) return undefined;
    try {
      const { payload } = await jwtVerify(token, this.#key, { issuer: "resonance", algorithms: ["HS256"] });
      if (typeof payload.sub !== "string" || typeof payload.exp !== "number" || typeof payload.jti !== "string") return undefined;
      // A subject that is no username (only a token signed with our key could carry one) is refused here, before any query.
      if (!isUsername(payload.sub) || payload.jti.length > 64) return undefined;
      const issuedAtMs = typeof payload.iat_ms === "number" ? payload.iat_ms : (payload.iat ?? 0) * 1000;
      return { username: payload.sub, jti: payload.jti, expiresAt: payload.exp, issuedAtMs };
    } catch (err) {
      if (err instanceof joseErrors.JOSEError || err instanceof TypeError) return undefined;
      throw err;
    }
  }
}
