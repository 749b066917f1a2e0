import { describe, expect, it } from "vitest";
import { dayKey, dayLabel, hueOf, initials, shortWhen } from "./format.js";

const at = (y: number, mo: number, d: number, h = 12, mi = 0): number => Math.floor(new Date(y, mo - 1, d, h, mi).getTime() / 1000);

describe("format", () => {
  const now = new Date(2026, 10, 29, 15, 0).getTime(); // Sunday 29 November 2026, 15:00 local

  it("format - day separators say Today, Yesterday, else the date", () => {
    expect(dayLabel(at(2026, 11, 29, 0, 1), now)).toBe("Today");
    expect(dayLabel(at(2026, 11, 28, 23, 59), now)).toBe("Yesterday");
    const older = dayLabel(at(2026, 11, 20), now);
    expect(older).not.toMatch(/Today|Yesterday/);
    expect(older).toContain("2026");
    expect(dayKey(at(2026, 11, 28, 23, 59))).not.toBe(dayKey(at(2026, 11, 29, 0, 0)));
  });

  it("format - the list shows a time today, a weekday this week, a date before", () => {
    expect(shortWhen(at(2026, 11, 29, 9, 5), now)).toMatch(/9|09/);
    expect(shortWhen(at(2026, 11, 27), now)).toMatch(/^\p{L}+\.?$/u);
    expect(shortWhen(at(2026, 10, 1), now)).toMatch(/\d/);
    expect(shortWhen(0, now)).toBe("");
  });

  it("format - initials and a stable colour per name", () => {
    expect(initials("Resonance Room")).toBe("RR");
    expect(initials("bob")).toBe("BO");
    expect(hueOf("alice")).toBe(hueOf("alice"));
    expect(hueOf("alice")).not.toBe(hueOf("bob"));
  });
});
