import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { pino } from "pino";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { requireServices, TEST_REDIS_URL } from "../../../test/support/services.js";
import { createRouteTable } from "./index.js";
import type { RouteTable } from "./types.js";

const log = pino({ level: "silent" });
const redisCheck = await requireServices(["redis"]);
if (!redisCheck.ok) console.warn(`routes contract: redis skipped: ${redisCheck.reason}`);

/** Unique per run, so parallel or aborted runs never see each other's keys. */
const PREFIX = `resonance-test:${process.pid}-${randomBytes(4).toString("hex")}:route:`;
const LONG_TTL_MS = 60_000;

interface Impl {
  readonly name: "memory" | "redis";
  readonly available: boolean;
  readonly make: (ttlMs: number) => RouteTable;
}

const impls: Impl[] = [
  { name: "memory", available: true, make: (ttlMs) => createRouteTable({ name: "routes-test", ttlMs, log }) },
  {
    name: "redis",
    available: redisCheck.ok,
    make: (ttlMs) => createRouteTable({ redisUrl: TEST_REDIS_URL, name: "resonance-routes-test", ttlMs, log, prefix: PREFIX }),
  },
];

/** Polls `probe` until it returns true; fails after `timeoutMs`. */
async function eventually(probe: () => Promise<boolean>, timeoutMs = 5_000, stepMs = 25): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

const sorted = (xs: readonly string[] | undefined): string[] => [...(xs ?? [])].sort();

afterAll(async () => {
  if (!redisCheck.ok) return;
  const redis = new Redis(TEST_REDIS_URL);
  try {
    let cursor = "0";
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${PREFIX}*`, "COUNT", 1000);
      if (keys.length > 0) await redis.del(...keys);
      cursor = next;
    } while (cursor !== "0");
  } finally {
    redis.disconnect();
  }
});

for (const impl of impls) describe(`routes (${impl.name}) - contract`, () => {
  const open: RouteTable[] = [];
  let seq = 0;

  /** A started table; closed after the test. */
  async function table(ttlMs = LONG_TTL_MS): Promise<RouteTable> {
    const t = impl.make(ttlMs);
    open.push(t);
    await t.start();
    return t;
  }
  /** Usernames unique to this test. */
  const user = (name: string): string => `${name}-${++seq}`;

  afterEach(async () => {
    await Promise.all(open.splice(0).map((t) => t.close()));
  });

  it.skipIf(!impl.available)("routes - online users are found by lookup, others are absent", async () => {
    const t = await table();
    const [alice, bob, carol] = [user("alice"), user("bob"), user("carol")];
    await t.online("gw-1", [alice, bob]);
    const routes = await t.lookup([alice, bob, carol]);
    expect(sorted([...routes.keys()])).toEqual(sorted([alice, bob]));
    expect(routes.get(alice)).toEqual(["gw-1"]);
    expect(routes.get(bob)).toEqual(["gw-1"]);
    expect(routes.has(carol)).toBe(false);
    expect((await t.lookup([])).size).toBe(0);
  });

  it.skipIf(!impl.available)("routes - a user may be online on several gateways", async () => {
    const t = await table();
    const alice = user("alice");
    await t.online("gw-1", [alice]);
    await t.online("gw-2", [alice]);
    await t.online("gw-2", [alice]); // a refresh does not duplicate
    expect(sorted((await t.lookup([alice])).get(alice))).toEqual(["gw-1", "gw-2"]);
  });

  it.skipIf(!impl.available)("routes - offline removes one gateway only", async () => {
    const t = await table();
    const [alice, bob] = [user("alice"), user("bob")];
    await t.online("gw-1", [alice, bob]);
    await t.online("gw-2", [alice]);
    await t.offline("gw-1", [alice, bob]);
    const routes = await t.lookup([alice, bob]);
    expect(routes.get(alice)).toEqual(["gw-2"]);
    expect(routes.has(bob)).toBe(false);
    await t.offline("gw-9", [alice]); // unknown gateway: no effect
    expect((await t.lookup([alice])).get(alice)).toEqual(["gw-2"]);
  });

  it.skipIf(!impl.available)("routes - a route not refreshed within the ttl expires", async () => {
    const t = await table(200);
    const alice = user("alice");
    await t.online("gw-1", [alice]);
    expect((await t.lookup([alice])).get(alice)).toEqual(["gw-1"]);
    await eventually(async () => !(await t.lookup([alice])).has(alice));
  });

  it.skipIf(!impl.available)("routes - a stale gateway is ignored while another keeps the user alive", async () => {
    const t = await table(200);
    const alice = user("alice");
    await t.online("gw-dead", [alice]);
    await eventually(async () => {
      await t.online("gw-live", [alice]);
      const gateways = (await t.lookup([alice])).get(alice);
      return gateways?.length === 1 && gateways[0] === "gw-live";
    });
  });

  it.skipIf(!impl.available)("routes - lookup of 1000 users in one call", async () => {
    const t = await table();
    const users = Array.from({ length: 1000 }, (_, i) => user(`u${i}`));
    await t.online("gw-1", users.slice(0, 500));
    await t.online("gw-2", users.slice(250, 1000));
    const routes = await t.lookup([...users, user("nobody")]);
    expect(routes.size).toBe(1000);
    expect(routes.get(users[0]!)).toEqual(["gw-1"]);
    expect(sorted(routes.get(users[300]!))).toEqual(["gw-1", "gw-2"]);
    expect(routes.get(users[999]!)).toEqual(["gw-2"]);
  });

  it.skipIf(!impl.available)("routes - start and close are idempotent; closing twice is fine", async () => {
    const t = impl.make(LONG_TTL_MS);
    await t.start();
    await t.start();
    await t.online("gw-1", [user("alice")]);
    await Promise.all([t.close(), t.close()]);
    await t.close();
    const never = impl.make(LONG_TTL_MS);
    await never.close(); // closing a table that never started is fine too
    await never.close();
  });
});

describe.skipIf(!redisCheck.ok)("routes (redis) - connection", () => {
  it("routes - sets the connection name on the Redis connection", async () => {
    const name = `resonance-routes-test-${randomBytes(3).toString("hex")}`;
    const t = createRouteTable({ redisUrl: TEST_REDIS_URL, name, ttlMs: LONG_TTL_MS, log, prefix: PREFIX });
    const admin = new Redis(TEST_REDIS_URL);
    try {
      await t.start();
      const clients = String(await admin.client("LIST"));
      expect(clients).toContain(`name=${name} `);
    } finally {
      await t.close();
      admin.disconnect();
    }
  });

  it("routes - start fails clearly when Redis is unreachable", async () => {
    const t = createRouteTable({ redisUrl: "redis://127.0.0.1:1", name: "unreachable", ttlMs: LONG_TTL_MS, log });
    await expect(t.start()).rejects.toThrow(/cannot connect to Redis at redis:\/\/127\.0\.0\.1:1/);
    await t.close();
  });
});
