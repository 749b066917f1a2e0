import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { SendMessageRequestSchema, SendMessageResultSchema, type SendMessageRequest, type SendMessageResult } from "../gen/resonance/logic/v1/logic_pb.js";
import { Metrics } from "../observability/metrics.js";
import { ChatDispatcher, type ChatOutcome, type DispatcherLimits } from "./chat-dispatcher.js";

interface Call {
  readonly address: string;
  readonly seqs: string[];
  readonly answer: (results?: SendMessageResult[]) => void;
  readonly fail: (err: Error) => void;
}

/** A fake logic: every SendMessages call waits until the test answers or fails it. */
class FakeLogic {
  readonly calls: Call[] = [];
  #waiters: Array<{ n: number; resolve: () => void }> = [];
  #seq = 0n;

  readonly send = (address: string, items: SendMessageRequest[]): Promise<SendMessageResult[]> =>
    new Promise((resolve, reject) => {
      this.calls.push({
        address,
        seqs: items.map((i) => i.clientMsgId),
        answer: (results) => resolve(results ?? items.map(() => create(SendMessageResultSchema, { msgId: ++this.#seq, seqId: this.#seq }))),
        fail: reject,
      });
      for (const w of this.#waiters.filter((w) => this.calls.length >= w.n)) {
        this.#waiters.splice(this.#waiters.indexOf(w), 1);
        w.resolve();
      }
    });

  /** Resolves once `n` calls have been made in all. */
  callsMade(n: number): Promise<void> {
    if (this.calls.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ n, resolve }));
  }
}

const chat = (seq: string, content = "hi") => create(SendMessageRequestSchema, { fromUsername: "alice", toUsername: "bob", content, clientMsgId: seq });

function setup(addresses: string[], limits: Partial<DispatcherLimits> = {}) {
  const logic = new FakeLogic();
  const metrics = new Metrics();
  const pool = { addresses };
  const clock = { now: 0 };
  const d = new ChatDispatcher(logic.send, () => pool.addresses, { backoffMs: 1, ...limits }, metrics, undefined, () => clock.now);
  return { logic, d, metrics, pool, clock };
}

const ok = (o: ChatOutcome) => "msgId" in o;

describe("chat dispatcher", () => {
  it("dispatcher - an idle chat goes at once, in a call of its own", () => {
    const { logic, d } = setup(["l1:1"]);
    void d.submit(chat("a"));
    // Synchronously: no timer, no wait for company.
    expect(logic.calls.map((c) => c.seqs)).toEqual([["a"]]);
  });

  it("dispatcher - chats arriving while the calls are in flight wait and go together in the next call, capped in count", async () => {
    const { logic, d } = setup(["l1:1"], { maxInFlight: 1, maxBatch: 3 });
    const outcomes = ["a", "b", "c", "d", "e"].map((s) => d.submit(chat(s)));
    expect(logic.calls.map((c) => c.seqs)).toEqual([["a"]]);
    expect(d.queued).toBe(4);
    logic.calls[0]!.answer();
    await logic.callsMade(2);
    expect(logic.calls[1]!.seqs).toEqual(["b", "c", "d"]);
    logic.calls[1]!.answer();
    await logic.callsMade(3);
    expect(logic.calls[2]!.seqs).toEqual(["e"]);
    logic.calls[2]!.answer();
    const done = await Promise.all(outcomes);
    expect(done.every(ok)).toBe(true);
    expect(new Set(done.map((o) => ("msgId" in o ? o.msgId : -1n))).size).toBe(5);
  });

  it("dispatcher - a batch is also capped in bytes; one chat larger than the cap still goes, alone", async () => {
    const { logic, d } = setup(["l1:1"], { maxInFlight: 1, maxBatchBytes: 1_000 });
    void d.submit(chat("a"));
    for (const s of ["b", "c"]) void d.submit(chat(s, "x".repeat(400)));
    void d.submit(chat("big", "x".repeat(5_000)));
    logic.calls[0]!.answer();
    await logic.callsMade(2);
    expect(logic.calls[1]!.seqs).toEqual(["b", "c"]);
    logic.calls[1]!.answer();
    await logic.callsMade(3);
    expect(logic.calls[2]!.seqs).toEqual(["big"]);
  });

  it("dispatcher - a call goes to the instance with the fewest calls in flight, at most maxInFlight each", async () => {
    const { logic, d } = setup(["l1:1", "l2:1"], { maxInFlight: 2 });
    for (const s of ["a", "b", "c", "d", "e"]) void d.submit(chat(s));
    // Four calls, two per instance; the fifth chat waits.
    expect(logic.calls.map((c) => c.address).sort()).toEqual(["l1:1", "l1:1", "l2:1", "l2:1"]);
    expect(d.queued).toBe(1);
    // l2 answers one: it now has the fewest in flight, and takes the waiting chat.
    logic.calls.find((c) => c.address === "l2:1")!.answer();
    await logic.callsMade(5);
    expect(logic.calls[4]).toMatchObject({ address: "l2:1", seqs: ["e"] });
  });

  it("dispatcher - a batch refused with unavailable moves whole to another instance, ahead of newer chats", async () => {
    const { logic, d, metrics } = setup(["l1:1", "l2:1"], { maxInFlight: 1 });
    const first = d.submit(chat("a"));
    const second = d.submit(chat("b"));
    const byAddress = (a: string) => logic.calls.filter((c) => c.address === a);
    const refusing = logic.calls[0]!;
    const other = logic.calls[1]!;
    expect(refusing.address).not.toBe(other.address);
    const waiting = ["c", "d", "e"].map((s) => d.submit(chat(s)));
    // The refusing instance's batch [a] must go to the other one once it has room, whole.
    refusing.fail(new ConnectError("logic is shutting down", Code.Unavailable));
    other.answer();
    await logic.callsMade(3);
    expect(logic.calls[2]).toMatchObject({ address: other.address, seqs: ["a"] });
    logic.calls[2]!.answer();
    await logic.callsMade(4);
    expect(logic.calls[3]!.seqs).toEqual(["c", "d", "e"]);
    logic.calls[3]!.answer();
    expect((await Promise.all([first, second, ...waiting])).every(ok)).toBe(true);
    expect(byAddress(refusing.address)).toHaveLength(1);
    expect(await metrics.registry.getSingleMetricAsString("resonance_chat_batches_total")).toMatch(/outcome="moved"} 1/);
  });

  it("dispatcher - a batch refused by every instance, attempt after attempt, is answered unavailable (retryable)", async () => {
    const { logic, d } = setup(["l1:1", "l2:1"], { attempts: 3 });
    const outcome = d.submit(chat("a"));
    for (let i = 1; i <= 3; i++) {
      await logic.callsMade(i);
      expect(logic.calls[i - 1]!.seqs).toEqual(["a"]);
      logic.calls[i - 1]!.fail(new ConnectError("connect ECONNREFUSED", Code.Unavailable));
    }
    expect(await outcome).toEqual({ errorCode: "unavailable", error: expect.stringMatching(/resend/) });
    expect(logic.calls).toHaveLength(3);
  });

  it("dispatcher - any other failure of a whole call answers each chat unavailable, never internal", async () => {
    const { logic, d } = setup(["l1:1"]);
    const outcomes = [d.submit(chat("a")), d.submit(chat("b"))];
    for (const c of logic.calls) c.fail(new ConnectError("internal error", Code.Internal));
    for (const o of await Promise.all(outcomes)) expect(o).toMatchObject({ errorCode: "unavailable" });
  });

  it("dispatcher - per-chat errors go to that chat alone, with their code name and a short message", async () => {
    const { logic, d } = setup(["l1:1"], { maxInFlight: 1 });
    void d.submit(chat("first"));
    const outcomes = ["a", "b", "c"].map((s) => d.submit(chat(s)));
    logic.calls[0]!.answer();
    await logic.callsMade(2);
    logic.calls[1]!.answer([
      create(SendMessageResultSchema, { msgId: 7n, seqId: 3n }),
      create(SendMessageResultSchema, { errorCode: Code.PermissionDenied, errorMessage: "not a member of this session" }),
      create(SendMessageResultSchema, { errorCode: Code.InvalidArgument, errorMessage: "x".repeat(1_000) }),
    ]);
    const [a, b, c] = await Promise.all(outcomes);
    expect(a).toEqual({ msgId: 7n, seqId: 3n });
    expect(b).toEqual({ errorCode: "permission_denied", error: "not a member of this session" });
    expect(c).toMatchObject({ errorCode: "invalid_argument" });
    expect("error" in c! && c.error.length).toBeLessThanOrEqual(200);
  });

  it("dispatcher - the queue is bounded: beyond it a chat is answered resource_exhausted at once, and nothing accepted is lost", async () => {
    const { logic, d, metrics } = setup(["l1:1"], { maxInFlight: 1, maxQueued: 3 });
    const accepted = ["a", "b", "c", "d"].map((s) => d.submit(chat(s)));
    expect(d.queued).toBe(3);
    // The call in flight has not answered, yet the excess is answered now.
    const shed = await d.submit(chat("e"));
    expect(shed).toEqual({ errorCode: "resource_exhausted", error: expect.any(String) });
    expect(logic.calls).toHaveLength(1);
    expect(await metrics.registry.getSingleMetricAsString("resonance_chats_shed_total")).toMatch(/reason="queue"} 1/);
    logic.calls[0]!.answer();
    await logic.callsMade(2);
    logic.calls[1]!.answer();
    expect((await Promise.all(accepted)).every(ok)).toBe(true);
    expect(logic.calls.flatMap((c) => c.seqs)).toEqual(["a", "b", "c", "d"]);
  });

  it("dispatcher - a standing queue: while the oldest waiting chat has waited too long, a new chat is answered resource_exhausted at once", async () => {
    const { logic, d, clock } = setup(["l1:1"], { maxInFlight: 1, maxQueueWaitMs: 500 });
    void d.submit(chat("a"));
    const waiting = d.submit(chat("b"));
    clock.now = 400;
    const stillTaken = d.submit(chat("c"));
    clock.now = 501;
    expect(await d.submit(chat("d"))).toMatchObject({ errorCode: "resource_exhausted" });
    // Once the queue moves on, chats are taken again.
    logic.calls[0]!.answer();
    await logic.callsMade(2);
    expect(logic.calls[1]!.seqs).toEqual(["b", "c"]);
    const next = d.submit(chat("e"));
    logic.calls[1]!.answer();
    await logic.callsMade(3);
    logic.calls[2]!.answer();
    expect([await waiting, await stillTaken, await next].every(ok)).toBe(true);
  });

  it("dispatcher - with no logic instance known, chats wait a little for one, then get unavailable", async () => {
    const { logic, d, pool } = setup([], { attempts: 2 });
    const first = d.submit(chat("a"));
    expect(await first).toMatchObject({ errorCode: "unavailable" });
    expect(logic.calls).toHaveLength(0);
    // An instance appears: the next chat goes at once.
    pool.addresses = ["l1:1"];
    void d.submit(chat("b"));
    expect(logic.calls.map((c) => c.seqs)).toEqual([["b"]]);
  });

  it("dispatcher - close answers the waiting chats unavailable; the calls in flight still answer theirs", async () => {
    const { logic, d } = setup(["l1:1"], { maxInFlight: 1 });
    const inFlight = d.submit(chat("a"));
    const waiting = d.submit(chat("b"));
    d.close();
    expect(await waiting).toMatchObject({ errorCode: "unavailable" });
    logic.calls[0]!.answer();
    expect(ok(await inFlight)).toBe(true);
  });
});
