import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { createLogger, formatReport, prettyDestination } from "./log.js";

function sink(): { stream: Writable; text: () => string } {
  let text = "";
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { stream, text: () => text };
}

describe("log", () => {
  it("log - errors carry no stack trace unless the level is debug; secrets are redacted", () => {
    const info = sink();
    createLogger("t", "i", "info", { destination: info.stream }).error({ err: new Error("boom"), password: "hunter2" }, "failed");
    const line = JSON.parse(info.text()) as { err: Record<string, unknown>; password: string };
    expect(line.err).toMatchObject({ type: "Error", message: "boom" });
    expect(line.err.stack).toBeUndefined();
    expect(line.password).toBe("[redacted]");
    const debug = sink();
    createLogger("t", "i", "debug", { destination: debug.stream }).error({ err: new Error("boom") }, "failed");
    expect((JSON.parse(debug.text()) as { err: { stack: string } }).err.stack).toMatch(/^Error: boom\n\s+at /);
  });

  it("log - pretty lines are short: time, level, message, the other fields on the same line", async () => {
    const out = sink();
    const pretty = await prettyDestination(false, out.stream);
    createLogger("all", "abc", "info", { destination: pretty }).info({ port: 8080 }, "listening");
    await new Promise((r) => setImmediate(r));
    expect(out.text()).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: listening \{"port":8080\}\n$/);
  });

  it("log - the shutdown report as a table: a row per phase, then the counts that are not zero", () => {
    const text = formatReport({
      reason: "signal SIGINT",
      durationMs: 412,
      exitCode: 1,
      deadlineExceeded: true,
      phases: [
        { name: "unready", durationMs: 0, outcome: "ok" },
        { name: "gateway.close-websockets", durationMs: 400, outcome: "timeout", error: "2 sockets left" },
      ],
      counts: { wsClosedCleanly: 3, httpAborted: 0 },
    });
    expect(text.split("\n")).toEqual([
      "shutdown (signal SIGINT): exit 1 after 412 ms — deadline exceeded",
      "  phase                         ms  outcome",
      "  unready                        0  ok",
      "  gateway.close-websockets     400  timeout: 2 sockets left",
      "  counts: wsClosedCleanly 3",
    ]);
  });
});
