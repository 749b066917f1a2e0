import { describe, expect, it } from "vitest";
import { readFile } from "node:fs/promises";
import { ConfigError, SETTING_NAMES, checkRole, isLoopbackHost, isWildcardHost, parseConfig } from "./config.js";

describe("config", () => {
  it("config - the README's settings table names exactly the settings there are", async () => {
    const readme = await readFile(new URL("../../README.md", import.meta.url), "utf8");
    const table = readme.slice(readme.indexOf("## Settings"), readme.indexOf("## What happens on SIGTERM"));
    const documented = new Set([...table.matchAll(/^\| `(RESONANCE_[A-Z_]+)`(?: \/ `(RESONANCE_[A-Z_]+)`)?/gm)].flatMap((m) => [m[1], m[2]]).filter(Boolean));
    expect([...documented].sort()).toEqual([...SETTING_NAMES].sort());
  });

  it("config - defaults select the embedded implementations and the documented ports", () => {
    const c = parseConfig({});
    expect(c.databaseUrl).toBeUndefined();
    expect(c.etcdEndpoints).toEqual([]);
    expect(c.listen).toMatchObject({ httpPort: 8080, pushPort: 15091, logicPort: 15090, host: "127.0.0.1" });
    expect(c.shutdown).toEqual({ timeoutMs: 30_000, drainDelayMs: 0, wsDrainWindowMs: 5_000 });
    expect(c.limits.maxFrameBytes).toBe(64 * 1024);
    expect(c.limits).toMatchObject({ wsSendBufferBytes: 1024 * 1024, wsPerUser: 16, wsPerAddress: 512 });
    expect(c.dataDir).toBe("./data");
    expect(Object.isFrozen(c)).toBe(true);
  });

  it("config - durations accept units and lists are split", () => {
    const c = parseConfig({ RESONANCE_SHUTDOWN_TIMEOUT: "2s", RESONANCE_DRAIN_DELAY: "150ms", RESONANCE_ETCD_ENDPOINTS: "http://a:2379, http://b:2379" });
    expect(c.shutdown.timeoutMs).toBe(2000);
    expect(c.shutdown.drainDelayMs).toBe(150);
    expect(c.etcdEndpoints).toEqual(["http://a:2379", "http://b:2379"]);
  });

  it("config - a bad value is refused with the variable's name", () => {
    expect(() => parseConfig({ RESONANCE_HTTP_PORT: "eighty" })).toThrow(/RESONANCE_HTTP_PORT/);
    expect(() => parseConfig({ RESONANCE_SHUTDOWN_TIMEOUT: "soon" })).toThrow(/RESONANCE_SHUTDOWN_TIMEOUT/);
    expect(() => parseConfig({ RESONANCE_DATABASE_URL: "not a url" })).toThrow(/RESONANCE_DATABASE_URL/);
    expect(() => parseConfig({ RESONANCE_TOKEN_SECRET: "short" })).toThrow(/RESONANCE_TOKEN_SECRET/);
    expect(() => parseConfig({ RESONANCE_LOG_LEVEL: "loud" })).toThrow(ConfigError);
  });

  it("config - empty and zero values that would spin or pick a random port are refused", () => {
    expect(() => parseConfig({ RESONANCE_HTTP_PORT: "" })).toThrow(/RESONANCE_HTTP_PORT/);
    expect(() => parseConfig({ RESONANCE_WS_PING_INTERVAL: "0" })).toThrow(/RESONANCE_WS_PING_INTERVAL/);
    expect(() => parseConfig({ RESONANCE_ROUTE_TTL: "0" })).toThrow(/RESONANCE_ROUTE_TTL/);
    expect(() => parseConfig({ RESONANCE_TASK_CONCURRENCY: "0" })).toThrow(/RESONANCE_TASK_CONCURRENCY/);
    expect(() => parseConfig({ RESONANCE_WS_PER_USER: "0" })).toThrow(/RESONANCE_WS_PER_USER/);
    // A send buffer smaller than the write window would close every busy reader.
    expect(() => parseConfig({ RESONANCE_WS_SEND_BUFFER: "4096" })).toThrow(/RESONANCE_WS_SEND_BUFFER/);
  });

  it("config - role checks: logic needs a shared token secret with PostgreSQL; a wildcard host needs an internal secret and, with etcd, an advertised host", () => {
    const pg = parseConfig({ RESONANCE_DATABASE_URL: "postgres://x@127.0.0.1/db" });
    expect(() => checkRole(pg, "logic")).toThrow(/RESONANCE_TOKEN_SECRET/);
    expect(() => checkRole(pg, "task")).not.toThrow();
    const secret = "s".repeat(32);
    expect(() => checkRole(parseConfig({ RESONANCE_HOST: "0.0.0.0" }), "gateway")).toThrow(/RESONANCE_INTERNAL_SECRET/);
    // Every non-loopback listen address needs the secret, not only the literal wildcards.
    for (const host of ["", "0", "::", "::0", "10.1.2.3", "192.168.0.7", "pod-1.internal"]) {
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host }), "logic"), host).toThrow(/RESONANCE_INTERNAL_SECRET/);
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host }), "gateway"), host).toThrow(/RESONANCE_INTERNAL_SECRET/);
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host, RESONANCE_INTERNAL_SECRET: secret }), "logic"), host).not.toThrow();
      // Task opens no internal port; `all` without etcd makes its own secret.
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host }), "task"), host).not.toThrow();
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host }), "all"), host).not.toThrow();
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host, RESONANCE_ETCD_ENDPOINTS: "http://e:2379", RESONANCE_ADVERTISE_HOST: "10.0.0.5" }), "all"), host).toThrow(
        /RESONANCE_INTERNAL_SECRET/,
      );
    }
    for (const host of ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"]) {
      expect(() => checkRole(parseConfig({ RESONANCE_HOST: host }), "logic"), host).not.toThrow();
    }
    const wild = parseConfig({ RESONANCE_HOST: "0.0.0.0", RESONANCE_ETCD_ENDPOINTS: "http://127.0.0.1:2379", RESONANCE_INTERNAL_SECRET: secret });
    expect(() => checkRole(wild, "gateway")).toThrow(/RESONANCE_ADVERTISE_HOST/);
    const ok = parseConfig({
      RESONANCE_HOST: "0.0.0.0",
      RESONANCE_ETCD_ENDPOINTS: "http://e:2379",
      RESONANCE_ADVERTISE_HOST: "10.0.0.5",
      RESONANCE_INTERNAL_SECRET: secret,
    });
    expect(() => checkRole(ok, "gateway")).not.toThrow();
  });

  it("config - loopback and wildcard hosts are recognised in every spelling listen() accepts", () => {
    for (const h of ["127.0.0.1", "127.1", "127.9.9.9", "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1", "localhost", "LOCALHOST", "2130706433"]) {
      expect(isLoopbackHost(h), h).toBe(true);
    }
    for (const h of ["", "0", "0.0.0.0", "::", "::0", "[::]", "10.0.0.1", "128.0.0.1", "::2", "example.com", "localhost.example.com"]) {
      expect(isLoopbackHost(h), h).toBe(false);
    }
    for (const h of ["", "0", "0.0.0.0", "::", "::0", "[::]", "0:0:0:0:0:0:0:0"]) expect(isWildcardHost(h), h).toBe(true);
    for (const h of ["127.0.0.1", "10.0.0.1", "::1", "localhost"]) expect(isWildcardHost(h), h).toBe(false);
    // A wildcard is never advertised as such: others reach this host on loopback by default.
    expect(parseConfig({ RESONANCE_HOST: "::0", RESONANCE_INTERNAL_SECRET: "s".repeat(32) }).listen.advertiseHost).toBe("127.0.0.1");
  });

  it("config - fault injection is parsed and off by default", () => {
    expect(parseConfig({}).faults.size).toBe(0);
    const c = parseConfig({ RESONANCE_FAULTS: "logic.SendMessage=1500,phase.release=hang" });
    expect(c.faults.get("logic.SendMessage")).toBe(1500);
    expect(c.faults.get("phase.release")).toBe("hang");
    expect(() => parseConfig({ RESONANCE_FAULTS: "x=later" })).toThrow(/RESONANCE_FAULTS/);
  });
});
