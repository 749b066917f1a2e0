import { describe, expect, it } from "vitest";
import { SeenMessages } from "./dedup.js";

const m = (seqId: number, sessionId = "0", msgId = seqId + 1000) => ({ seqId: BigInt(seqId), sessionId, msgId: BigInt(msgId) });

describe("dedup", () => {
  it("dedup - a message is new once, then a duplicate", () => {
    const seen = new SeenMessages();
    expect(seen.add(m(1))).toBe(true);
    expect(seen.add(m(1))).toBe(false);
    expect(seen.add(m(1, "other"))).toBe(true);
  });

  it("dedup - out-of-order arrivals merge into one range", () => {
    const seen = new SeenMessages();
    for (const s of [5, 7, 6, 3, 4]) expect(seen.add(m(s))).toBe(true);
    expect(seen.rangeCount("0")).toBe(1);
    for (const s of [3, 4, 5, 6, 7]) expect(seen.add(m(s))).toBe(false);
    expect(seen.has(m(2))).toBe(false);
    expect(seen.add(m(2))).toBe(true);
  });

  it("dedup - memory stays bounded by merging the lowest ranges", () => {
    const seen = new SeenMessages({ maxRangesPerSession: 3 });
    for (const s of [10, 20, 30, 40]) seen.add(m(s));
    expect(seen.rangeCount("0")).toBe(3);
    expect(seen.has(m(15))).toBe(true); // the price of the bound: the gap 11–19 is taken as seen
    expect(seen.has(m(25))).toBe(false);
  });

  it("dedup - messages without seq_id fall back to a bounded msg_id LRU", () => {
    const seen = new SeenMessages({ maxIds: 2 });
    expect(seen.add(m(0, "0", 1))).toBe(true);
    expect(seen.add(m(0, "0", 1))).toBe(false);
    seen.add(m(0, "0", 2));
    seen.add(m(0, "0", 3));
    expect(seen.add(m(0, "0", 1))).toBe(true); // evicted
    expect(seen.add(m(0, "0", 0))).toBe(true); // nothing to recognise: always delivered
    expect(seen.add(m(0, "0", 0))).toBe(true);
  });
});
