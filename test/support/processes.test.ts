import { describe, expect, it } from "vitest";
import { eventually } from "./processes.js";

describe("test support", () => {
  it("eventually - 0, 0n, empty string, NaN, null, undefined and false mean not yet", async () => {
    for (const notYet of [0, 0n, "", Number.NaN, null, undefined, false]) {
      await expect(eventually(() => notYet, 60, "a truthy value")).rejects.toThrow(/timed out waiting for a truthy value/);
    }
  });

  it("eventually - resolves with the first truthy value; errors are retried and named on timeout", async () => {
    let n = 0;
    expect(await eventually(() => (++n < 3 ? 0 : n), 2_000)).toBe(3);
    let calls = 0;
    expect(
      await eventually(() => {
        if (++calls < 2) throw new Error("flaky");
        return "ok";
      }, 2_000),
    ).toBe("ok");
    await expect(
      eventually(() => {
        throw new Error("still broken");
      }, 60, "repair"),
    ).rejects.toThrow(/timed out waiting for repair: Error: still broken/);
  });
});
