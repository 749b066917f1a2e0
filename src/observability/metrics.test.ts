import { describe, expect, it } from "vitest";
import { Metrics, closeCodeLabel } from "./metrics.js";

describe("metrics", () => {
  it("metrics - WebSocket close codes a client makes up share one label value", async () => {
    expect([1000, 1001, 1006, 1008, 1009, 1013, 4429].map(closeCodeLabel)).toEqual(["1000", "1001", "1006", "1008", "1009", "1013", "4429"]);
    expect([3000, 4000, 4999, 4430, 1004, 2999].map(closeCodeLabel)).toEqual(["other", "other", "other", "other", "other", "other"]);
    const m = new Metrics();
    for (let code = 3000; code < 5000; code++) m.wsClosed.inc({ code: closeCodeLabel(code), reason: "client" });
    const series = (await m.registry.getSingleMetric("resonance_ws_closed_total")!.get()).values;
    expect(series.length).toBeLessThanOrEqual(2);
  });
});
