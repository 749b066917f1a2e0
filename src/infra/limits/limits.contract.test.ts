import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { pino } from "pino";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { eventually } from "../../../test/support/processes.js";
import { requireServices, TEST_REDIS_URL } from "../../../test/support/services.js";
import { createLimitStore } from "./index.js";
import { backoffMs, type LimitStore } from "./types.js";

const log = pino({ level: "silent" });
const redisCheck = await requireServices(["redis"]);
if (!redisCheck.ok) console.warn(`limits contract: redis skipped: ${redisCheck.reason}`);

/** Unique per run, so parallel or aborted runs never see each other's keys. */
const PREFIX = `resonance-test:${process.pid}-${randomBytes(4).toString("hex")}:limit:`;

const impls = [
  { name: "memory", available: true, make: () => createLimitStore({ name: "limits-test", log }) },
  { name: "redis", available: redisCheck.ok, make: () => createLimitStore({ redisUrl: TEST_REDIS_URL, name: "resonance-limits-test", log, prefix: PREFIX }) },
] as const;

afterAll(async () => {
  if (!redisCheck.ok) return;
  const redis = new Redis(TEST_REDIS_URL);
  try {
    const keys = await redis.keys(`${PREFIX}*`);
    if (keys.length > 0) await redis.del(...keys);
  } finally {
    redis.disconnect();
  }
});

describe("limits - backoff schedule", () => {
  it("limits - free failures cost nothing, then the block doubles up to the cap", () => {
    const rule = { free: 2, baseMs: 100, maxMs: 1_000, forgetMs: 60_000 };
    expect([1, 2, 3, 4, 5, 6, 7, 50].map((n) => backoffMs(n, rule))).toEqual([0, 0, 100, 200, 400, 800, 1_000, 1_000]);
  });
});

for (const impl of impls) describe.skipIf(!impl.available)(`limits (${impl.name}) - contract`, () => {
  const open: LimitStore[] = [];
  let seq = 0;
  const key = (what: string) => `${what}-${++seq}`;
  const store = async () => {
    const s = impl.make();
    open.push(s);
    await s.start();
    return s;
  };
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });

  it("limits - take allows the burst, then refuses with the time until the next token", async () => {
    const s = await store();
    const k = key("burst");
    const rule = { perSec: 1, burst: 3 };
    const results = [];
    for (let i = 0; i < 4; i++) results.push(await s.take(k, rule));
    expect(results.slice(0, 3).every((r) => r.allowed && r.retryAfterMs === 0)).toBe(true);
    expect(results[3]!.allowed).toBe(false);
    expect(results[3]!.retryAfterMs).toBeGreaterThan(0);
    expect(results[3]!.retryAfterMs).toBeLessThanOrEqual(1_000);
    // Another key has its own bucket.
    expect((await s.take(key("other"), rule)).allowed).toBe(true);
  });

  it("limits - tokens come back at the configured rate", async () => {
    const s = await store();
    const k = key("refill");
    const rule = { perSec: 20, burst: 1 };
    expect((await s.take(k, rule)).allowed).toBe(true);
    expect((await s.take(k, rule)).allowed).toBe(false);
    // One token per 50 ms: it is back soon.
    await eventually(async () => (await s.take(k, rule)).allowed, 2_000, "a refilled token");
  });

  it("limits - failures block only after the free ones, the block runs out, and clear forgets them", async () => {
    const s = await store();
    const k = key("login");
    const rule = { free: 2, baseMs: 300, maxMs: 10_000, forgetMs: 60_000 };
    expect(await s.blockedFor(k)).toBe(0);
    expect(await s.fail(k, rule)).toBe(0);
    expect(await s.fail(k, rule)).toBe(0);
    expect(await s.blockedFor(k)).toBe(0);
    expect(await s.fail(k, rule)).toBe(300);
    const left = await s.blockedFor(k);
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(300);
    await eventually(async () => (await s.blockedFor(k)) === 0, 5_000, "the block to run out");
    // The count is kept: the next failure doubles the block.
    expect(await s.fail(k, rule)).toBe(600);
    await s.clear(k);
    expect(await s.blockedFor(k)).toBe(0);
    expect(await s.fail(k, rule)).toBe(0);
    // The rate state of the same key is separate.
    expect((await s.take(k, { perSec: 1, burst: 1 })).allowed).toBe(true);
  });

  it("limits - failures are forgotten after forgetMs", async () => {
    const s = await store();
    const k = key("forget");
    const rule = { free: 1, baseMs: 1_000, maxMs: 1_000, forgetMs: 200 };
    expect(await s.fail(k, rule)).toBe(0);
    // Past forgetMs (a lower bound: a slower machine only waits longer), the next failure is a
    // first one again (free), not a second one (blocked).
    await new Promise((r) => setTimeout(r, rule.forgetMs + 300));
    expect(await s.fail(k, rule)).toBe(0);
    expect(await s.fail(k, rule)).toBe(1_000);
  });

  it("limits - two stores on the same backend share the counts; a closed store rejects", async () => {
    const a = await store();
    const b = impl.name === "redis" ? await store() : a;
    const k = key("shared");
    const rule = { perSec: 0.001, burst: 2 };
    expect((await a.take(k, rule)).allowed).toBe(true);
    expect((await b.take(k, rule)).allowed).toBe(true);
    expect((await a.take(k, rule)).allowed).toBe(false);
    await a.close();
    await expect(a.take(k, rule)).rejects.toThrow(/closed/);
  });
});
