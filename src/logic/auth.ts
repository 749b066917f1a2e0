import { randomBytes, scrypt as scryptCb, timingSafeEqual } from "node:crypto";
import { promisify } from "node:util";
import { SignJWT, jwtVerify, errors as joseErrors } from "jose";

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

/** Signs and checks access tokens (HS256 JWT: subject = username, with expiry). */
export class Tokens {
  readonly #key: Uint8Array;
  readonly #ttlSec: number;

  constructor(secret: string, ttlMs: number) {
    this.#key = new TextEncoder().encode(secret);
    this.#ttlSec = Math.max(1, Math.round(ttlMs / 1000));
  }

  async issue(username: string): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: "HS256" })
      .setJti(randomBytes(12).toString("base64url"))
      .setSubject(username)
      .setIssuedAt(now)
      .setExpirationTime(now + this.#ttlSec)
      .setIssuer("resonance")
      .sign(this.#key);
  }

  /** Resolves with the username, token id and expiry, or undefined for a bad, forged or expired token; never rejects. */
  async verify(token: string): Promise<{ username: string; jti: string; expiresAt: number } | undefined> {
    if (!token || token.length > 4096) return undefined;
    try {
      const { payload } = await jwtVerify(token, this.#key, { issuer: "resonance", algorithms: ["HS256"] });
      if (typeof payload.sub !== "string" || typeof payload.exp !== "number" || typeof payload.jti !== "string") return undefined;
      return { username: payload.sub, jti: payload.jti, expiresAt: payload.exp };
    } catch (err) {
      if (err instanceof joseErrors.JOSEError || err instanceof TypeError) return undefined;
      throw err;
    }
  }
}
