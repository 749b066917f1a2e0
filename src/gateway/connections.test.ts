import { EventEmitter } from "node:events";
import { create } from "@bufbuild/protobuf";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { WebSocket } from "ws";
import { PushMessageSchema } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { Metrics } from "../observability/metrics.js";
import type { ChatDispatcher } from "./chat-dispatcher.js";
import { ConnectionHub } from "./connections.js";
import type { PresenceReporter } from "./presence.js";

/** A socket whose peer reads nothing: sends are never reported written. */
class StuckSocket extends EventEmitter {
  readonly OPEN = 1;
  readonly CLOSED = 3;
  readyState = 1;
  sent = 0;
  closedWith: [number, string] | undefined;
  send(_data: Uint8Array, _opts: unknown, _cb?: () => void): void {
    this.sent++;
  }
  close(code: number, reason: string): void {
    this.closedWith = [code, reason];
  }
  terminate(): void {}
  ping(): void {}
}

function hub(sendQueue: number) {
  const presence = { online: () => {}, offline: () => {} } as unknown as PresenceReporter;
  const metrics = new Metrics();
  const h = new ConnectionHub(
    { sendQueue, idleTimeoutMs: 60_000, pingIntervalMs: 25_000, chatRatePerSec: 10, chatBurst: 10, chatWindow: 64 },
    {} as ChatDispatcher,
    presence,
    metrics,
    pino({ level: "silent" }),
  );
  return { h, metrics };
}

describe("gateway connection hub", () => {
  it("hub - a consumer whose send queue is full is closed with 1013 and counted; others keep receiving", async () => {
    const { h, metrics } = hub(4);
    const slow = new StuckSocket();
    const fine = new StuckSocket();
    h.add(slow as unknown as WebSocket, { username: "slow", token: "t1", expiresAt: 0 }, "127.0.0.1");
    h.add(fine as unknown as WebSocket, { username: "fine", token: "t2", expiresAt: 0 }, "127.0.0.1");
    const msg = create(PushMessageSchema, { msgId: 1n, seqId: 1n, sessionId: "0", content: "x" });
    for (let i = 0; i < 4; i++) expect(h.push(["slow"], msg)).toEqual([]);
    // The fifth frame does not fit: the socket is closed, the user reported as not delivered.
    expect(h.push(["slow", "fine"], msg)).toEqual(["slow"]);
    expect(slow.closedWith).toEqual([1013, "slow consumer"]);
    expect(h.counts.slowConsumers).toBe(1);
    expect(fine.sent).toBe(1);
    // Once closing, nothing more is queued on it.
    expect(h.push(["slow"], msg)).toEqual(["slow"]);
    expect(slow.sent).toBe(4);
    slow.emit("close", 1013);
    expect(h.size).toBe(1);
    expect(await metrics.registry.getSingleMetricAsString("resonance_ws_closed_total")).toContain('code="1013"');
  });

  it("hub - pushes go to every connection of every named user and report the users with none", () => {
    const { h } = hub(100);
    const a1 = new StuckSocket();
    const a2 = new StuckSocket();
    h.add(a1 as unknown as WebSocket, { username: "alice", token: "t1", expiresAt: 0 }, "");
    h.add(a2 as unknown as WebSocket, { username: "alice", token: "t2", expiresAt: 0 }, "");
    const msg = create(PushMessageSchema, { msgId: 7n, seqId: 1n, sessionId: "0", content: "hi" });
    expect(h.push(["alice", "nobody"], msg)).toEqual(["nobody"]);
    expect([a1.sent, a2.sent]).toEqual([1, 1]);
  });
});
