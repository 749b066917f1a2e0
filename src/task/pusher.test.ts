import { create } from "@bufbuild/protobuf";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { PushMessageSchema } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { Metrics } from "../observability/metrics.js";
import type { Channels } from "../rpc/channels.js";
import { GatewayPusher } from "./pusher.js";

/** A gateway whose calls complete when the test says so. */
function fakeGateway() {
  const calls: Array<{ kind: "push" | "batch"; ids: bigint[]; done: () => void }> = [];
  const client = {
    push: (req: { message?: { msgId: bigint } }) =>
      new Promise<void>((done) => calls.push({ kind: "push", ids: [req.message!.msgId], done })),
    pushBatch: (req: { pushes: Array<{ message?: { msgId: bigint } }> }) =>
      new Promise<void>((done) => calls.push({ kind: "batch", ids: req.pushes.map((p) => p.message!.msgId), done })),
  };
  const channels = { client: () => client } as unknown as Channels;
  return { calls, channels };
}

const msg = (id: bigint) => create(PushMessageSchema, { msgId: id, seqId: id, sessionId: "0" });
const tick = () => new Promise((r) => setImmediate(r));

describe("task pusher", () => {
  it("pusher - an idle gateway gets a push at once; pushes queued meanwhile go together in one batch", async () => {
    const { calls, channels } = fakeGateway();
    const p = new GatewayPusher("gw:1", channels, new Metrics(), pino({ level: "silent" }));
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
});
