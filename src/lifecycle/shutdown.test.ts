import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { runShutdown, type Phase } from "./shutdown.js";

const log = pino({ level: "silent" });
const phase = (name: string, ms: number, result?: Record<string, number>, fail = false): Phase => ({
  name,
  run: () =>
    new Promise((resolve, reject) =>
      setTimeout(() => (fail ? reject(new Error(`${name} broke`)) : resolve(result)), ms),
    ),
});

describe("lifecycle", () => {
  it("lifecycle - phases run one at a time, in order, each after the previous one finished; counts add up, exit code 0", async () => {
    const events: string[] = [];
    // Phases that finish in a different order than they would if started together.
    const timed = (name: string, ms: number, result?: Record<string, number>): Phase => ({
      name,
      run: async () => {
        events.push(`${name} start`);
        await new Promise((r) => setTimeout(r, ms));
        events.push(`${name} end`);
        return result;
      },
    });
    const sync = (name: string): Phase => ({ name, run: async () => void events.push(`${name} start`, `${name} end`) });
    const r = await runShutdown("test", [timed("a", 30), sync("b"), timed("c", 5, { x: 1 }), timed("d", 1, { x: 2, y: 1 }), sync("e")], { timeoutMs: 1000, log });
    expect(events).toEqual(["a start", "a end", "b start", "b end", "c start", "c end", "d start", "d end", "e start", "e end"]);
    expect(r.phases.map((x) => [x.name, x.outcome])).toEqual([["a", "ok"], ["b", "ok"], ["c", "ok"], ["d", "ok"], ["e", "ok"]]);
    expect(r.phases[0]!.durationMs).toBeGreaterThanOrEqual(29);
    expect(r.counts).toEqual({ x: 3, y: 1 });
    expect(r.exitCode).toBe(0);
  });

  it("lifecycle - a failing phase is reported, the next phases still run, exit code 1", async () => {
    const r = await runShutdown("test", [phase("a", 1, undefined, true), phase("b", 1)], { timeoutMs: 1000, log });
    expect(r.phases[0]).toMatchObject({ outcome: "failed", error: "a broke" });
    expect(r.phases[1]!.outcome).toBe("ok");
    expect(r.exitCode).toBe(1);
  });

  it("lifecycle - a phase over its allowance times out and the rest go on", async () => {
    const slow: Phase = { name: "slow", allowanceMs: 30, run: () => new Promise(() => {}) };
    const r = await runShutdown("test", [slow, phase("after", 1)], { timeoutMs: 2000, log });
    expect(r.phases.map((x) => x.outcome)).toEqual(["timeout", "ok"]);
    expect(r.exitCode).toBe(1);
  });

  it("lifecycle - the overall deadline names the hanging phase and stops there", async () => {
    const started = Date.now();
    const hang: Phase = { name: "hang", run: () => new Promise(() => {}) };
    const r = await runShutdown("test", [phase("first", 1), hang, phase("never", 1)], { timeoutMs: 200, log });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(r.deadlineExceeded).toBe(true);
    expect(r.phases.map((x) => [x.name, x.outcome])).toEqual([["first", "ok"], ["hang", "running"], ["never", "skipped"]]);
    expect(r.exitCode).toBe(1);
  });

  it("lifecycle - a crash shutdown exits 1 even when every phase is ok", async () => {
    const r = await runShutdown("crash", [phase("a", 1)], { timeoutMs: 100, log, baseExitCode: 1 });
    expect(r.exitCode).toBe(1);
  });
});
