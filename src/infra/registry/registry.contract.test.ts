import { randomBytes } from "node:crypto";
import { Etcd3 } from "etcd3";
import { pino } from "pino";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { requireServices, TEST_ETCD_ENDPOINTS } from "../../../test/support/services.js";
import { createRegistry, MemoryRegistryHub } from "./index.js";
import type { Registry, RegistryEntry } from "./types.js";

const log = pino({ level: "silent" });
const etcdCheck = await requireServices(["etcd"]);
if (!etcdCheck.ok) console.warn(`registry contract: etcd skipped: ${etcdCheck.reason}`);

const ENDPOINTS = TEST_ETCD_ENDPOINTS.split(",").map((e) => e.trim());
/** Unique per run, so parallel or aborted runs never see each other's keys. */
const PREFIX = `/resonance-test/${process.pid}-${randomBytes(4).toString("hex")}/services/`;
/** How long a change may take to reach another instance's watch (generous: the machine may be busy). */
const PROPAGATION_MS = 10_000;
/**
 * Lease TTL of the etcd registrations in the contract tests: far above PROPAGATION_MS, so an entry
 * that disappears within PROPAGATION_MS was removed on purpose, never by its lease running out.
 */
const LEASE_TTL_SEC = 60;

interface Impl {
  readonly name: "memory" | "etcd";
  readonly available: boolean;
  readonly make: () => Registry;
}

const hub = new MemoryRegistryHub();
const impls: Impl[] = [
  { name: "memory", available: true, make: () => createRegistry({ endpoints: [], name: "registry-test", log, prefix: PREFIX, hub }) },
  {
    name: "etcd",
    available: etcdCheck.ok,
    make: () => createRegistry({ endpoints: ENDPOINTS, name: "registry-test", log, prefix: PREFIX, leaseTtlSec: LEASE_TTL_SEC }),
  },
];

/** Polls `probe` until it returns true; fails after `timeoutMs`. */
async function eventually(probe: () => boolean | Promise<boolean>, timeoutMs = PROPAGATION_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

afterAll(async () => {
  if (!etcdCheck.ok) return;
  const admin = new Etcd3({ hosts: ENDPOINTS });
  try {
    await admin.delete().prefix(PREFIX);
  } finally {
    admin.close();
  }
});

for (const impl of impls) describe(`registry (${impl.name}) - contract`, () => {
  const open: Registry[] = [];
  let seq = 0;

  async function registry(): Promise<Registry> {
    const r = impl.make();
    open.push(r);
    await r.start();
    return r;
  }
  const entry = (service: RegistryEntry["service"], address = "127.0.0.1:1"): RegistryEntry => ({
    service,
    id: `${service}-${++seq}`,
    address,
    state: "serving",
  });
  const ids = (entries: readonly RegistryEntry[]): string[] => entries.map((e) => e.id);

  afterEach(async () => {
    await Promise.all(open.splice(0).map((r) => r.close()));
  });

  it.skipIf(!impl.available)("registry - a registration is seen by another instance's watch", async () => {
    const [a, b] = [await registry(), await registry()];
    const seen: RegistryEntry[][] = [];
    const watch = await b.watch("logic", (list) => seen.push(list));
    expect(watch.entries()).toEqual([]);
    const logic = entry("logic", "127.0.0.1:15090");
    await a.register(logic);
    await eventually(() => ids(watch.entries()).includes(logic.id));
    expect(watch.entries()).toEqual([logic]);
    await eventually(() => seen.some((list) => ids(list).includes(logic.id)));
    // A watch opened later starts from the current list.
    const late = await b.watch("logic");
    expect(late.entries()).toEqual([logic]);
    await watch.close();
    await late.close();
  });

  it.skipIf(!impl.available)("registry - watches see only their own service kind", async () => {
    const [a, b] = [await registry(), await registry()];
    const gateways = await b.watch("gateway");
    const logic = await b.watch("logic");
    const gw = entry("gateway");
    const lg = entry("logic");
    await a.register(gw);
    await a.register(lg);
    await eventually(() => gateways.entries().length === 1 && logic.entries().length === 1);
    expect(ids(gateways.entries())).toEqual([gw.id]);
    expect(ids(logic.entries())).toEqual([lg.id]);
  });

  it.skipIf(!impl.available)("registry - setDraining is visible to watchers", async () => {
    const [a, b] = [await registry(), await registry()];
    const watch = await b.watch("gateway");
    const gw = entry("gateway");
    const reg = await a.register(gw);
    await eventually(() => watch.entries()[0]?.state === "serving");
    await reg.setDraining();
    await eventually(() => watch.entries()[0]?.state === "draining");
    expect(watch.entries()).toEqual([{ ...gw, state: "draining" }]);
  });

  it.skipIf(!impl.available)("registry - deregister removes the entry at once; twice is fine", async () => {
    const [a, b] = [await registry(), await registry()];
    const seen: string[][] = [];
    const watch = await b.watch("logic", (list) => seen.push(ids(list)));
    const lg = entry("logic");
    const reg = await a.register(lg);
    await eventually(() => watch.entries().length === 1);
    await Promise.all([reg.deregister(), reg.deregister()]);
    await reg.deregister();
    // Within PROPAGATION_MS, far below the lease TTL: removed, not expired.
    await eventually(() => watch.entries().length === 0);
    expect(seen.at(-1)).toEqual([]);
    await reg.setDraining(); // after deregister: a no-op, the entry stays gone
    expect(watch.entries()).toEqual([]);
  });

  it.skipIf(!impl.available)("registry - close revokes the remaining registrations", async () => {
    const [a, b] = [await registry(), await registry()];
    const watch = await b.watch("task");
    await a.register(entry("task", ""));
    await a.register(entry("task", ""));
    await eventually(() => watch.entries().length === 2);
    await a.close();
    await eventually(() => watch.entries().length === 0);
  });

  it.skipIf(!impl.available)("registry - start and close are idempotent; use after close rejects", async () => {
    const r = impl.make();
    await expect(r.register(entry("logic"))).rejects.toThrow(/not started/);
    await Promise.all([r.start(), r.start()]);
    const w = await r.watch("logic");
    await Promise.all([r.close(), r.close()]);
    await r.close();
    await w.close();
    await expect(r.register(entry("logic"))).rejects.toThrow(/closed/);
    await expect(r.watch("logic")).rejects.toThrow(/closed/);
    const never = impl.make();
    await never.close(); // never started
    await never.close();
  });

  it.skipIf(!impl.available)("registry - lost stays pending while the registry is healthy", async () => {
    const r = await registry();
    await r.register(entry("logic"));
    const winner = await Promise.race([r.lost.then(() => "lost"), new Promise((res) => setTimeout(() => res("pending"), 50))]);
    expect(winner).toBe("pending");
  });
});

describe.skipIf(!etcdCheck.ok)("registry (etcd) - specifics", () => {
  const admin = (): Etcd3 => new Etcd3({ hosts: ENDPOINTS });

  it("registry - the entry is JSON at prefix/service/id, attached to a lease", async () => {
    const r = createRegistry({ endpoints: ENDPOINTS, name: "registry-test", log, prefix: PREFIX, leaseTtlSec: 5 });
    const client = admin();
    try {
      await r.start();
      const lg: RegistryEntry = { service: "logic", id: `layout-${randomBytes(3).toString("hex")}`, address: "10.0.0.1:15090", state: "serving" };
      await r.register(lg);
      const res = await client.get(`${PREFIX}logic/${lg.id}`).exec();
      expect(res.kvs).toHaveLength(1);
      expect(JSON.parse(res.kvs[0]!.value.toString())).toEqual(lg);
      expect(res.kvs[0]!.lease).not.toBe("0");
    } finally {
      await r.close();
      client.close();
    }
  });

  it("registry - a lease revoked behind its back is re-granted once and the entry comes back", async () => {
    const r = createRegistry({ endpoints: ENDPOINTS, name: "registry-test", log, prefix: PREFIX, leaseTtlSec: 2 });
    const client = admin();
    try {
      await r.start();
      const lg: RegistryEntry = { service: "logic", id: `regrant-${randomBytes(3).toString("hex")}`, address: "10.0.0.2:15090", state: "serving" };
      await r.register(lg);
      const key = `${PREFIX}logic/${lg.id}`;
      const before = (await client.get(key).exec()).kvs[0]!.lease;
      await client.leaseClient.leaseRevoke({ ID: before });
      // The next keepalive (every ttl/3) learns the lease is gone; the registration re-puts on a new one.
      await eventually(async () => {
        const kv = (await client.get(key).exec()).kvs[0];
        return kv !== undefined && kv.lease !== before;
      }, 5_000);
      const winner = await Promise.race([r.lost.then(() => "lost"), new Promise((res) => setTimeout(() => res("pending"), 50))]);
      expect(winner).toBe("pending");
    } finally {
      await r.close();
      client.close();
    }
  });

  it("registry - start fails clearly when etcd is unreachable", async () => {
    const r = createRegistry({ endpoints: ["http://127.0.0.1:1"], name: "registry-test", log, prefix: PREFIX });
    const t0 = Date.now();
    await expect(r.start()).rejects.toThrow(/cannot reach etcd at http:\/\/127\.0\.0\.1:1/);
    expect(Date.now() - t0).toBeLessThan(10_000);
    await r.close();
  });
});
