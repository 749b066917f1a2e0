import { EventEmitter } from "node:events";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { WebSocket } from "ws";
import { PushMessageSchema, WsPacketSchema, type WsPacket } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { Metrics } from "../observability/metrics.js";
import type { ChatDispatcher } from "./chat-dispatcher.js";
import { ConnectionHub, type HubOptions } from "./connections.js";
import type { PresenceReporter } from "./presence.js";

/**
 * A socket whose writes complete only when the test says so (`drain()`), or at once when `auto`.
 * It records the frames it was given and the close it was asked for.
 */
class FakeSocket extends EventEmitter {
  readonly OPEN = 1;
  readonly CLOSED = 3;
  readyState = 1;
  readonly frames: Uint8Array[] = [];
  readonly #pending: Array<() => void> = [];
  closedWith: [number, string] | undefined;
  constructor(readonly auto = false) {
    super();
  }
  send(data: Uint8Array, _opts: unknown, cb?: () => void): void {
    this.frames.push(data);
    if (this.auto) queueMicrotask(() => cb?.());
    else if (cb) this.#pending.push(cb);
  }
  /** Completes every write handed over so far. */
  drain(): void {
    for (const cb of this.#pending.splice(0)) cb();
  }
  get bytes(): number {
    return this.frames.reduce((n, f) => n + f.byteLength, 0);
  }
  packets(): WsPacket[] {
    return this.frames.map((f) => fromBinary(WsPacketSchema, f));
  }
  acks() {
    return this.packets().flatMap((p) => (p.payload.case === "ack" ? [p.payload.value] : []));
  }
  /** The client sends a chat. */
  chat(seq: string): void {
    this.emit("message", Buffer.from(toBinary(WsPacketSchema, create(WsPacketSchema, { seq, payload: { case: "chat", value: { sessionId: "s", content: "hi" } } }))), true);
  }
  close(code: number, reason: string): void {
    this.closedWith ??= [code, reason];
  }
  terminate(): void {}
  ping(): void {}
}

/** A dispatcher whose chats wait until the test answers them (`answer()`), counting them. */
function fakeLogic() {
  const waiting: Array<() => void> = [];
  let calls = 0;
  let msgId = 0n;
  const logic = {
    submit: () => {
      calls++;
      return new Promise((resolve) => waiting.push(() => resolve({ msgId: ++msgId, seqId: msgId })));
    },
  } as unknown as ChatDispatcher;
  return {
    logic,
    get calls() {
      return calls;
    },
    /** Answers every call waiting so far. */
    answer: async () => {
      for (const w of waiting.splice(0)) w();
      await new Promise((r) => setImmediate(r));
    },
  };
}

function hub(opts: Partial<HubOptions> = {}, chats = {} as ChatDispatcher) {
  const presence = { online: () => {}, offline: () => {} } as unknown as PresenceReporter;
  const metrics = new Metrics();
  const h = new ConnectionHub(
    { sendBufferBytes: 1024 * 1024, idleTimeoutMs: 60_000, pingIntervalMs: 25_000, chatRatePerSec: 10, chatBurst: 10, chatWindow: 64, ...opts },
    chats,
    presence,
    metrics,
    pino({ level: "silent" }),
  );
  return { h, metrics };
}

const add = (h: ConnectionHub, ws: FakeSocket, username: string, token = `t-${Math.random()}`) =>
  h.add(ws as unknown as WebSocket, { username, token, expiresAt: 0 }, "127.0.0.1");
const tick = () => new Promise((r) => setImmediate(r));

async function limited(metrics: Metrics, limit: string): Promise<number> {
  return (await metrics.wsLimited.get()).values.find((v) => v.labels.limit === limit)?.value ?? 0;
}

describe("gateway connection hub", () => {
  it("hub - a reader that falls a send buffer of bytes behind is closed at once with 1013 and counted; at most the write window went to its socket; others keep receiving", async () => {
    const { h, metrics } = hub({ sendBufferBytes: 256 * 1024 });
    const slow = new FakeSocket();
    const fine = new FakeSocket(true);
    add(h, slow, "slow");
    add(h, fine, "fine");
    const msg = create(PushMessageSchema, { msgId: 1n, seqId: 1n, sessionId: "0", content: "x".repeat(8_000) });
    let pushed = 0;
    while (h.push(["slow", "fine"], msg).length === 0) {
      pushed++;
      expect(pushed).toBeLessThan(100);
      await tick(); // the reader that keeps up gets its writes completed
    }
    // 256 KiB of 8 KB frames: about 32 of them fit, the next one closes the connection.
    expect(pushed).toBeGreaterThanOrEqual(30);
    expect(pushed).toBeLessThanOrEqual(33);
    expect(slow.closedWith).toEqual([1013, "slow consumer"]);
    expect(h.counts.slowConsumers).toBe(1);
    expect(await limited(metrics, "send-buffer")).toBe(1);
    // What the socket itself holds stays near the write window; the rest waited in the queue (and is dropped now).
    expect(slow.bytes).toBeLessThanOrEqual(64 * 1024 + 8_100);
    // Once closing, nothing more goes to it; the other user got every frame.
    expect(h.push(["slow", "fine"], msg)).toEqual(["slow"]);
    expect(fine.frames.length).toBe(pushed + 2);
    slow.emit("close", 1013);
    expect(h.size).toBe(1);
    expect(await metrics.registry.getSingleMetricAsString("resonance_ws_closed_total")).toContain('code="1013"');
  });

  it("hub - a reader that keeps up is never closed, however much goes through; queued frames go out in order as writes complete", async () => {
    const { h } = hub({ sendBufferBytes: 128 * 1024 });
    const ws = new FakeSocket();
    add(h, ws, "reader");
    for (let i = 1; i <= 2_000; i++) {
      expect(h.push(["reader"], create(PushMessageSchema, { msgId: BigInt(i), seqId: 1n, sessionId: "0", content: "y".repeat(1_000) }))).toEqual([]);
      if (i % 50 === 0) ws.drain();
    }
    for (let i = 0; i < 10; i++) ws.drain();
    expect(ws.closedWith).toBeUndefined();
    const ids = ws.packets().map((p) => (p.payload.case === "push" ? Number(p.payload.value.msgId) : -1));
    expect(ids).toEqual(Array.from({ length: 2_000 }, (_, i) => i + 1));
  });

  it("hub - pushes go to every connection of every named user and report the users with none", () => {
    const { h } = hub();
    const a1 = new FakeSocket();
    const a2 = new FakeSocket();
    add(h, a1, "alice");
    add(h, a2, "alice");
    const msg = create(PushMessageSchema, { msgId: 7n, seqId: 1n, sessionId: "0", content: "hi" });
    expect(h.push(["alice", "nobody"], msg)).toEqual(["nobody"]);
    expect([a1.frames.length, a2.frames.length]).toEqual([1, 1]);
  });

  it("hub - the chat rate is per user across connections and survives a reconnect; a flood ends in 4429 only after the accepted chats' acks; frames after that cost nothing", async () => {
    const l = fakeLogic();
    const { h, metrics } = hub({ chatRatePerSec: 1, chatBurst: 4 }, l.logic);
    const a = new FakeSocket(true);
    const b = new FakeSocket(true);
    const other = new FakeSocket(true);
    add(h, a, "flooder");
    add(h, b, "flooder");
    add(h, other, "calm");
    // The burst is shared: two chats on each of the user's connections use it up.
    a.chat("a1");
    b.chat("b1");
    a.chat("a2");
    b.chat("b2");
    b.chat("b3");
    await tick();
    expect(l.calls).toBe(4);
    expect(b.acks().map((x) => [x.refSeq, x.errorCode])).toEqual([["b3", "resource_exhausted"]]);
    // Another user is not affected.
    other.chat("o1");
    await tick();
    expect(l.calls).toBe(5);
    // Flooding on: refusals sink the bucket a burst below zero, then the next chat closes — but
    // only after the four chats logic still holds are acked.
    for (let i = 0; i < 4; i++) a.chat(`a-flood-${i}`);
    await tick();
    expect(a.closedWith).toBeUndefined();
    a.chat("a-over");
    a.chat("a-after-close");
    await tick();
    expect(a.closedWith).toBeUndefined();
    expect(l.calls).toBe(5); // nothing after the decision reached logic
    await l.answer();
    expect(a.closedWith).toEqual([4429, "rate limited"]);
    const okOnA = a.acks().filter((x) => x.error === "").map((x) => x.refSeq);
    expect(okOnA).toEqual(["a1", "a2"]);
    // The close comes after the acks: every frame the socket got before it (acks and refusals) is there, none for the dropped frames.
    expect(a.acks().some((x) => x.refSeq === "a-over" || x.refSeq === "a-after-close")).toBe(false);
    expect(b.acks().filter((x) => x.error === "").map((x) => x.refSeq)).toEqual(["b1", "b2"]);
    expect(await limited(metrics, "chat-rate")).toBe(1);
    // A reconnect brings no fresh burst: still a burst below zero, its first chat closes it.
    a.emit("close", 4429);
    const again = new FakeSocket(true);
    add(h, again, "flooder");
    again.chat("r1");
    await tick();
    expect(again.acks()).toEqual([]);
    expect(again.closedWith).toEqual([4429, "rate limited"]);
    expect(l.calls).toBe(5);
  });
});
