import { create, toBinary } from "@bufbuild/protobuf";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { PushBatchRequestSchema, PushMessageSchema, PushRequestSchema } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { Metrics } from "../observability/metrics.js";
import { encodedSizeBound, GatewayPusher, type PushClient } from "./pusher.js";

/** A gateway whose calls complete (or fail) when the test says so. */
function fakeGateway(auto = false) {
  const calls: Array<{ kind: "push" | "batch"; ids: bigint[]; bytes: number; done: () => void; fail: (err: Error) => void }> = [];
  const client = {
    push: (req: Parameters<PushClient["push"]>[0]) =>
      new Promise((done, fail) =>
      {
        calls.push({ kind: "push", ids: [req.message!.msgId!], bytes: toBinary(PushRequestSchema, create(PushRequestSchema, req)).length, done: () => done({}), fail });
        if (auto) done({});
      }),
    pushBatch: (req: Parameters<PushClient["pushBatch"]>[0]) =>
      new Promise((done, fail) =>
      {
        calls.push({
          kind: "batch",
          ids: req.pushes!.map((p) => p.message!.msgId!),
          bytes: toBinary(PushBatchRequestSchema, create(PushBatchRequestSchema, req)).length,
          done: () => done({ results: [] }),
          fail,
        });
        if (auto) done({ results: [] });
      }),
  } as unknown as PushClient;
  return { calls, client: () => client };
}

const msg = (id: bigint, content = "") => create(PushMessageSchema, { msgId: id, seqId: id, sessionId: "0", content });
const tick = () => new Promise((r) => setImmediate(r));
const silent = pino({ level: "silent" });

/** A logger that keeps its lines. */
function recordingLog() {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: "debug" }, { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { lines, log };
}

async function counter(metrics: Metrics, outcome: string): Promise<number> {
  const m = await metrics.pushes.get();
  return m.values.find((v) => v.labels.outcome === outcome)?.value ?? 0;
}

describe("task pusher", () => {
  it("pusher - an idle gateway gets a push at once; pushes queued meanwhile go together in one batch", async () => {
    const { calls, client } = fakeGateway();
    const p = new GatewayPusher("gw:1", client, new Metrics(), silent);
    p.push(["a"], msg(1n));
    await tick();
    expect(calls.map((c) => [c.kind, c.ids])).toEqual([["push", [1n]]]);
    p.push(["a"], msg(2n));
    p.push(["b"], msg(3n));
    p.push(["c"], msg(4n));
    await tick();
    expect(calls).toHaveLength(1); // still waiting for the first call
    calls[0]!.done();
    await tick();
    expect(calls.map((c) => [c.kind, c.ids])).toEqual([
      ["push", [1n]],
      ["batch", [2n, 3n, 4n]],
    ]);
    const flushed = p.flush();
    calls[1]!.done();
    await flushed;
  });

  it("pusher - a batch is capped by encoded bytes as well as by count; a push larger than the cap goes alone", async () => {
    const { calls, client } = fakeGateway(true);
    const limits = { maxBatch: 100, maxBatchBytes: 10_000, highWater: 1_000, maxQueued: 1_000 };
    const p = new GatewayPusher("gw:1", client, new Metrics(), silent, limits);
    p.push(["a"], msg(1n)); // goes at once; the rest queue behind it
    const big = "x".repeat(3_000);
    for (let i = 2n; i <= 8n; i++) p.push(["a"], msg(i, big));
    p.push(["a"], msg(9n, "y".repeat(20_000)));
    p.push(["a"], msg(10n));
    await p.flush();
    // About 3.1 kB each: three fit in 10 kB; the 20 kB push goes alone.
    expect(calls.map((c) => c.ids)).toEqual([[1n], [2n, 3n, 4n], [5n, 6n, 7n], [8n], [9n], [10n]]);
    // What was sent stays under the cap unless it is one push alone.
    for (const c of calls) if (c.ids.length > 1) expect(c.bytes).toBeLessThanOrEqual(limits.maxBatchBytes);
  });

  it("pusher - the size bound is never below the encoded size", () => {
    const m = create(PushMessageSchema, { msgId: 2n ** 62n, seqId: 2n ** 40n, sessionId: "group:123", fromUsername: "ünïcode", toUsername: "b", content: "héllo ✓".repeat(50), type: "text", timestamp: 2n ** 50n });
    const to = ["alice", "bob", "名前"];
    expect(encodedSizeBound(to, m)).toBeGreaterThanOrEqual(toBinary(PushRequestSchema, create(PushRequestSchema, { toUsernames: to, message: m })).length);
  });

  it("pusher - the queue is bounded: beyond it the oldest pushes are dropped and counted", async () => {
    const { calls, client } = fakeGateway();
    const metrics = new Metrics();
    const { lines, log } = recordingLog();
    const p = new GatewayPusher("gw:1", client, metrics, log, { maxBatch: 100, maxBatchBytes: 1 << 20, highWater: 5, maxQueued: 5 });
    p.push(["a"], msg(1n)); // in flight
    for (let i = 2n; i <= 9n; i++) p.push(["a"], msg(i));
    expect(p.queued).toBe(5);
    expect(await counter(metrics, "dropped")).toBe(3);
    expect(lines.some((l) => l.level === 40 && l.dropped === 1)).toBe(true);
    await tick();
    calls[0]!.done();
    await tick();
    expect(calls[1]!.ids).toEqual([5n, 6n, 7n, 8n, 9n]); // the newest stayed
    calls[1]!.done();
    await p.flush();
  });

  it("pusher - the queue is bounded in bytes too: big pushes beyond it drop the oldest, and the newest always stays", async () => {
    const { calls, client } = fakeGateway();
    const metrics = new Metrics();
    const big = "x".repeat(10_000);
    const p = new GatewayPusher("gw:1", client, metrics, silent, { maxBatch: 100, maxBatchBytes: 1 << 20, highWater: 1_000, maxQueued: 1_000, maxQueuedBytes: 35_000 });
    p.push(["a"], msg(1n, big)); // in flight
    for (let i = 2n; i <= 9n; i++) p.push(["a"], msg(i, big));
    // Three of about 10 KB fit in 35,000 bytes.
    expect(p.queued).toBe(3);
    expect(await counter(metrics, "dropped")).toBe(5);
    p.push(["a"], msg(10n, "y".repeat(50_000)));
    expect(p.queued).toBe(1);
    await tick();
    calls[0]!.done();
    await tick();
    expect(calls[1]!.ids).toEqual([10n]);
    calls[1]!.done();
    await p.flush();
  });

  it("pusher - room() waits while more than the high-water mark is queued, and resolves as the gateway catches up", async () => {
    const { calls, client } = fakeGateway();
    const p = new GatewayPusher("gw:1", client, new Metrics(), silent, { maxBatch: 2, maxBatchBytes: 1 << 20, highWater: 3, maxQueued: 100 });
    p.push(["a"], msg(1n)); // in flight
    for (let i = 2n; i <= 7n; i++) p.push(["a"], msg(i)); // six queued
    let roomy = false;
    void p.room().then(() => (roomy = true));
    await tick();
    expect(roomy).toBe(false);
    calls[0]!.done(); // then [2, 3] goes: four queued, still above three
    await tick();
    expect([p.queued, roomy]).toEqual([4, false]);
    calls[1]!.done(); // then [4, 5] goes: two queued
    await tick();
    expect([p.queued, roomy]).toEqual([2, true]);
    await p.room(); // at once now
    calls[2]!.done();
    await tick();
    calls[3]!.done();
    await p.flush();
    expect(calls.map((c) => c.ids)).toEqual([[1n], [2n, 3n], [4n, 5n], [6n, 7n]]);
  });

  it("pusher - a gateway whose last call failed holds nobody back", async () => {
    const { calls, client } = fakeGateway();
    const p = new GatewayPusher("gw:1", client, new Metrics(), silent, { maxBatch: 2, maxBatchBytes: 1 << 20, highWater: 1, maxQueued: 100 });
    p.push(["a"], msg(1n));
    for (let i = 2n; i <= 8n; i++) p.push(["a"], msg(i));
    let roomy = false;
    void p.room().then(() => (roomy = true));
    await tick();
    expect(roomy).toBe(false);
    calls[0]!.fail(new Error("unreachable"));
    await tick();
    expect(roomy).toBe(true);
    await p.room(); // at once while it fails, whatever is queued
    calls[1]!.done(); // a success: back-pressure again
    await tick();
    expect(p.queued).toBe(3);
    let again = false;
    void p.room().then(() => (again = true));
    await tick();
    expect(again).toBe(false);
    calls[2]!.done();
    await tick();
    expect(again).toBe(true);
    calls[3]!.done();
    await tick();
    calls[4]!.done();
    await p.flush();
    expect(calls.map((c) => c.ids)).toEqual([[1n], [2n, 3n], [4n, 5n], [6n, 7n], [8n]]);
  });

  it("pusher - a failed call is counted and logged at warn, and the next pushes still go", async () => {
    const { calls, client } = fakeGateway();
    const metrics = new Metrics();
    const { lines, log } = recordingLog();
    const p = new GatewayPusher("gw:1", client, metrics, log);
    p.push(["a"], msg(1n));
    p.push(["a"], msg(2n));
    p.push(["a"], msg(3n));
    await tick();
    calls[0]!.fail(new Error("gateway gone"));
    await tick();
    calls[1]!.done();
    await p.flush();
    expect(await counter(metrics, "failed")).toBe(1);
    expect(await counter(metrics, "ok")).toBe(2);
    const warn = lines.find((l) => l.level === 40);
    expect(warn).toMatchObject({ address: "gw:1", failed: 1 });
  });
});
