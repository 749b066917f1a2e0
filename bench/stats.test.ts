import { describe, expect, it } from "vitest";
import { percentile, Samples, summarize } from "./stats.js";

describe("bench stats - percentiles", () => {
  const oneToHundred = Float64Array.from({ length: 100 }, (_, i) => i + 1);

  it("takes the nearest rank: the smallest sample with at least p% at or below it", () => {
    expect(percentile(oneToHundred, 50)).toBe(50);
    expect(percentile(oneToHundred, 99)).toBe(99);
    expect(percentile(oneToHundred, 99.9)).toBe(100);
    expect(percentile(oneToHundred, 100)).toBe(100);
    expect(percentile(oneToHundred, 0.5)).toBe(1);
    expect(percentile([7], 50)).toBe(7);
    expect(percentile([1, 2, 3], 50)).toBe(2);
  });

  it("is NaN for no samples and refuses a p outside (0, 100]", () => {
    expect(percentile([], 50)).toBeNaN();
    expect(() => percentile([1], 0)).toThrow(RangeError);
    expect(() => percentile([1], 101)).toThrow(RangeError);
  });

  it("summarizes unsorted samples numerically, growing past the initial capacity", () => {
    const s = new Samples(16);
    // 1000 samples in a scrambled order; 10 and 9 would sort wrongly as strings.
    for (let i = 0; i < 1000; i++) s.push(((i * 7919) % 1000) + 1);
    expect(s.length).toBe(1000);
    expect(summarize(s)).toEqual({ count: 1000, p50: 500, p99: 990, p999: 999, max: 1000 });
  });

  it("gives nulls, not NaN, when there is nothing to summarize (so JSON stays valid)", () => {
    expect(summarize(new Samples())).toEqual({ count: 0, p50: null, p99: null, p999: null, max: null });
  });

  it("rounds to the microsecond", () => {
    const s = new Samples();
    s.push(1.23456789);
    expect(summarize(s).p50).toBe(1.235);
  });
});
