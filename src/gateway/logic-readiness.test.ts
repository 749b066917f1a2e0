import { Code, ConnectError } from "@connectrpc/connect";
import { pino } from "pino";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { LogicReadiness } from "./logic-readiness.js";

function recordingLog(): { log: pino.Logger; lines: () => Array<{ level: number; msg: string }> } {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string });
      cb();
    },
  });
  return { log: pino({ level: "info" }, stream), lines: () => lines };
}

describe("logic-readiness", () => {
  it("logic-readiness - ready while one instance answers; each cause logged once when it starts and once when it ends", async () => {
    const answers = new Map<string, () => Promise<void>>();
    const { log, lines } = recordingLog();
    const r = new LogicReadiness({ probe: (a) => answers.get(a)!(), log, intervalMs: 60_000 });
    try {
      await r.start();
      expect(r.ready).toBe(false);
      expect(r.trouble?.cause).toBe("no-logic");

      answers.set("a:1", () => Promise.reject(new ConnectError("internal call without the shared secret", Code.Unauthenticated)));
      r.setAddresses(["a:1"]);
      await r.check();
      await r.check(); // Probed again: the same cause is not logged again.
      expect(r.trouble).toMatchObject({ cause: "secret-mismatch", detail: "logic at a:1 refuses this gateway's RESONANCE_INTERNAL_SECRET" });

      answers.set("b:2", () => Promise.reject(new ConnectError("connect ECONNREFUSED", Code.Unavailable)));
      r.setAddresses(["b:2"]);
      await r.check();
      expect(r.trouble?.cause).toBe("unreachable");

      answers.set("c:3", () => Promise.resolve());
      r.setAddresses(["b:2", "c:3"]);
      await r.check();
      expect(r.ready).toBe(true);
      expect(lines().map((l) => l.msg)).toEqual([
        "gateway not ready: no logic instance is registered (is logic running, with the same RESONANCE_NAMESPACE and etcd?)",
        "gateway not ready: logic at a:1 refuses this gateway's RESONANCE_INTERNAL_SECRET",
        "gateway not ready: cannot call logic at b:2: connect ECONNREFUSED",
        "gateway ready again: logic answers",
      ]);
    } finally {
      r.stop();
    }
  });
});
