import { describe, expect, it } from "vitest";
import { ChatRate, ConnectionSlots } from "./user-limits.js";

describe("gateway user limits", () => {
  it("user limits - a user's chat bucket: the burst, then refusals, then exceeded a burst below zero; it refills at the rate and is forgotten once full", () => {
    let now = 1_000_000;
    const rate = new ChatRate({ perSec: 2, burst: 3 }, () => now);
    expect([1, 2, 3].map(() => rate.take("u"))).toEqual(["ok", "ok", "ok"]);
    expect(rate.take("u")).toBe("limited");
    expect(rate.take("other")).toBe("ok");
    // Refusals cost a token too: from 0 down past -3.
    expect([1, 2, 3].map(() => rate.take("u"))).toEqual(["limited", "limited", "limited"]);
    expect(rate.take("u")).toBe("exceeded");
    expect(rate.take("u")).toBe("exceeded"); // exceeded costs nothing more
    // 2 tokens a second: from -4 to 1 takes 2.5 s.
    now += 2_000;
    expect(rate.take("u")).toBe("limited");
    now += 1_000;
    expect(rate.take("u")).toBe("ok");
    rate.sweep();
    expect(rate.size).toBe(1); // "other" is full again
    now += 10_000;
    rate.sweep();
    expect(rate.size).toBe(0);
    expect(rate.take("u")).toBe("ok");
  });

  it("user limits - connection slots per user and per address; a release gives one back once, however often it is called", () => {
    const slots = new ConnectionSlots({ perUser: 2, perAddress: 3 });
    const u1 = slots.user("alice")!;
    const u2 = slots.user("alice")!;
    expect(slots.user("alice")).toBeUndefined();
    expect(slots.user("bob")).toBeDefined();
    u1();
    u1();
    expect(slots.user("alice")).toBeDefined();
    expect(slots.user("alice")).toBeUndefined();
    u2();
    const a = [slots.address("10.0.0.1"), slots.address("10.0.0.1"), slots.address("10.0.0.1")];
    expect(a.every(Boolean)).toBe(true);
    expect(slots.address("10.0.0.1")).toBeUndefined();
    expect(slots.address("10.0.0.2")).toBeDefined();
    for (const r of a) r!();
    expect(slots.held().addresses).toBe(1);
  });
});
