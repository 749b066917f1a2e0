import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createLogger } from "../../observability/log.js";
import { EmbeddedQueue } from "./embedded.js";
import { createQueue } from "./index.js";
import { DEAD_LETTER_REASON_HEADER, JetStreamQueue } from "./jetstream.js";
import type { BatchHandler, DeliveredEvent, OutgoingEvent, Queue } from "./types.js";
import { eventually } from "../../../test/support/processes.js";
import { requireReachable } from "../../../test/support/services.js";

const log = createLogger("test", "queue-contract", process.env.RESONANCE_TEST_LOG_LEVEL ?? "silent");
const NATS_URL = process.env.RESONANCE_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
const ACK_WAIT_MS = 10_000;


const natsAvailable = await requireReachable("NATS JetStream", async () => {
  const nc = await connect({ servers: NATS_URL, timeout: 3_000, maxReconnectAttempts: 0 });
  try {
    await (await jetstreamManager(nc)).getAccountInfo();
  } finally {
    await nc.close();
  }
});

/** Waits until `check` is true (test/support's `eventually`), failing with `what` after `timeoutMs`. */
const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> => {
  await eventually(check, timeoutMs, what);
};

const encoder = new TextEncoder();
const event = (id: string): OutgoingEvent => ({ id, data: encoder.encode(`payload-${id}`) });
const ids = (prefix: string, n: number): OutgoingEvent[] => Array.from({ length: n }, (_, i) => event(`${prefix}-${i}`));

/** What the outbox relay does: republish the whole batch until it is accepted (dedup by id). */
async function relay(queue: Queue, events: readonly OutgoingEvent[], timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await queue.publisher.publish(events);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(20);
    }
  }
}

interface Delivery {
  id: string;
  deliveryCount: number;
  data: string;
}

/** Records deliveries, then lets `decide` settle each (default: ack). */
function recorder(decide: (e: DeliveredEvent) => Promise<void> = (e) => e.ack()) {
  const seen: Delivery[] = [];
  const handler = async (e: DeliveredEvent): Promise<void> => {
    seen.push({ id: e.id, deliveryCount: e.deliveryCount, data: new TextDecoder().decode(e.data) });
    await decide(e);
  };
  const count = (id: string): number => seen.filter((d) => d.id === id).length;
  return { seen, handler, count };
}

/** Records each batch (ids and delivery counts), then lets `decide` settle it (default: ackAll). */
function batchRecorder(queue: Queue, decide?: BatchHandler) {
  const batches: Delivery[][] = [];
  const handler: BatchHandler = async (events) => {
    batches.push(events.map((e) => ({ id: e.id, deliveryCount: e.deliveryCount, data: new TextDecoder().decode(e.data) })));
    await (decide ?? ((evs) => queue.consumer.ackAll(evs)))(events);
  };
  const seen = (): Delivery[] => batches.flat();
  const count = (id: string): number => seen().filter((d) => d.id === id).length;
  return { batches, handler, seen, count };
}

interface Fixture {
  open(): Promise<Queue>;
  /** The reason recorded for a dead-lettered event. */
  deadLetterReason(queue: Queue, id: string): Promise<string | undefined>;
  /** Events handed to this consumer's side and not settled yet: running, or fetched and waiting to start. */
  fetched(queue: Queue): Promise<number>;
  cleanup(): Promise<void>;
}

const implementations: Array<{ kind: Queue["kind"]; available: boolean; fixture(): Fixture }> = [
  {
    kind: "jetstream",
    available: natsAvailable,
    fixture() {
      const run = randomBytes(5).toString("hex");
      const stream = `RESONANCE_CONTRACT_${run}`;
      const subjects = { push: `resonance.contract.${run}.push`, deadLetter: `resonance.contract.${run}.dead` };
      const opened: Queue[] = [];
      return {
        async open() {
          const q = createQueue({ natsUrl: NATS_URL, name: `resonance-contract-${run}`, log, ackWaitMs: ACK_WAIT_MS, durable: `contract-${run}`, stream, subjects });
          opened.push(q);
          await q.start();
          return q;
        },
        async deadLetterReason() {
          const nc = await connect({ servers: NATS_URL });
          try {
            const msg = await (await jetstreamManager(nc)).streams.getMessage(stream, { last_by_subj: subjects.deadLetter });
            return msg?.header.get(DEAD_LETTER_REASON_HEADER);
          } finally {
            await nc.close();
          }
        },
        async fetched(q) {
          return (await q.consumer.pending()).ackPending; // the server counts what it sent us
        },
        async cleanup() {
          await Promise.all(opened.map((q) => q.close()));
          const nc = await connect({ servers: NATS_URL });
          try {
            await (await jetstreamManager(nc)).streams.delete(stream).catch(() => false);
          } finally {
            await nc.close();
          }
        },
      };
    },
  },
  {
    kind: "embedded",
    available: true,
    fixture() {
      const opened: Queue[] = [];
      return {
        async open() {
          const q = createQueue({ name: "embedded", log, ackWaitMs: ACK_WAIT_MS });
          opened.push(q);
          await q.start();
          return q;
        },
        async deadLetterReason(queue, id) {
          return (queue as EmbeddedQueue).deadLetters().find((d) => d.id === id)?.reason;
        },
        async fetched(q) {
          const p = await q.consumer.pending(); // in process, every queued event is at hand
          return p.ackPending + p.waiting;
        },
        async cleanup() {
          await Promise.all(opened.map((q) => q.close()));
        },
      };
    },
  },
];

describe.each(implementations.filter((i) => i.available))("queue contract - $kind", ({ kind, fixture: makeFixture }) => {
  let fixture: Fixture;
  let queue: Queue;
  const drained = async (q: Queue): Promise<void> =>
    waitFor("nothing pending", async () => {
      const p = await q.consumer.pending();
      return p.ackPending === 0 && p.waiting === 0;
    });

  beforeEach(async () => {
    fixture = makeFixture();
    queue = await fixture.open();
  });
  afterEach(async () => {
    await fixture.cleanup();
  });

  it("queue - reports its kind", () => {
    expect(queue.kind).toBe(kind);
  });

  it("queue - published events are consumed and acked once", async () => {
    const events = ids("basic", 3);
    const published = queue.publisher.publish(events); // embedded: resolves once acked
    const rec = recorder();
    await queue.consumer.consume(rec.handler, 4);
    await published;
    await waitFor("3 deliveries", () => rec.seen.length === 3);
    expect(rec.seen.map((d) => d.id).sort()).toEqual(events.map((e) => e.id));
    expect(rec.seen.every((d) => d.deliveryCount === 1 && d.data === `payload-${d.id}`)).toBe(true);
    await drained(queue);
    expect(queue.consumer.stats()).toEqual({ acked: 3, naked: 0 });
  });

  it("queue - the same id is delivered once", async () => {
    const rec = recorder();
    const first = queue.publisher.publish([event("a")]);
    const second = queue.publisher.publish([event("a"), event("b")]);
    await queue.consumer.consume(rec.handler, 1);
    await Promise.all([first, second]);
    await queue.publisher.publish([event("a")]); // already acked
    await relay(queue, [event("z")]);
    // One consumer, concurrency 1, in order: a duplicate of a would have arrived before z.
    await waitFor("sentinel", () => rec.count("z") === 1);
    expect([rec.count("a"), rec.count("b")]).toEqual([1, 1]);
  });

  it("queue - at most `concurrency` handlers run at once", async () => {
    let running = 0;
    let max = 0;
    const rec = recorder(async (e) => {
      max = Math.max(max, ++running);
      await sleep(5);
      running--;
      await e.ack();
    });
    const published = queue.publisher.publish(ids("conc", 12));
    await queue.consumer.consume(rec.handler, 3);
    await published;
    await waitFor("12 deliveries", () => rec.seen.length === 12);
    expect(max).toBeLessThanOrEqual(3);
    expect(max).toBeGreaterThan(1);
  });

  it("queue - nak redelivers with deliveryCount 2", async () => {
    const rec = recorder(async (e) => (e.deliveryCount === 1 ? e.nak() : e.ack()));
    const published = queue.publisher.publish([event("n")]);
    await queue.consumer.consume(rec.handler, 2);
    await published;
    await waitFor("redelivery", () => rec.seen.length === 2);
    expect(rec.seen.map((d) => d.deliveryCount)).toEqual([1, 2]);
    await drained(queue);
    expect(queue.consumer.stats()).toEqual({ acked: 1, naked: 1 });
  });

  it("queue - a throwing handler gets the event again", async () => {
    const rec = recorder(async (e) => {
      if (e.deliveryCount === 1) throw new Error("transient");
      await e.ack();
    });
    const published = queue.publisher.publish([event("t")]);
    await queue.consumer.consume(rec.handler, 2);
    await published;
    await waitFor("redelivery", () => rec.seen.length === 2);
    expect(rec.seen.map((d) => [d.id, d.deliveryCount])).toEqual([["t", 1], ["t", 2]]);
    await drained(queue);
  });

  it("queue - stop lets the running handler finish; events not started go to the next consumer", async () => {
    const events = ids("stop", 5);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const first = recorder(async (e) => {
      if (e.id === "stop-0") await gate;
      await e.ack();
    });
    const relayed = relay(queue, events);
    await queue.consumer.consume(first.handler, 1);
    await waitFor("the slow handler to start", () => first.count("stop-0") === 1);
    const stopping = queue.consumer.stop();
    release();
    const stats = await stopping;
    expect(first.seen.map((d) => d.id)).toEqual(["stop-0"]);
    expect(stats.acked).toBe(1);
    expect(await queue.consumer.stop()).toEqual(stats); // idempotent

    const second = recorder();
    await queue.consumer.consume(second.handler, 4);
    await relayed;
    await waitFor("the rest", () => events.slice(1).every((e) => second.count(e.id) >= 1));
    expect(second.count("stop-0")).toBe(0);
    await drained(queue);
  });

  it("queue - deadLetter records the reason and acks (no redelivery)", async () => {
    const rec = recorder(async (e) => (e.id === "dead" ? e.deadLetter("unparseable") : e.ack()));
    const published = queue.publisher.publish([event("dead")]);
    await queue.consumer.consume(rec.handler, 1);
    await published;
    await relay(queue, [event("after")]);
    await waitFor("sentinel", () => rec.count("after") === 1);
    expect(rec.count("dead")).toBe(1);
    expect(await fixture.deadLetterReason(queue, "dead")).toBe("unparseable");
    await drained(queue);
    expect(queue.consumer.stats().acked).toBe(2);
  });

  it("batches - events that arrive while a batch runs go together in the next one, at most maxBatch each", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const rec = batchRecorder(queue, async (events) => {
      if (events.some((e) => e.id === "first")) await gate;
      await queue.consumer.ackAll(events);
    });
    await queue.consumer.consumeBatches(rec.handler, { maxBatch: 4, inFlight: 1 });
    const relayed = [relay(queue, [event("first")])];
    await waitFor("the first batch to start", () => rec.count("first") === 1);
    const rest = ids("later", 9);
    relayed.push(relay(queue, rest));
    // The first batch holds; at least a full batch more has reached the consumer meanwhile.
    await waitFor("a full batch waiting", async () => (await fixture.fetched(queue)) >= 5);
    release();
    await Promise.all(relayed);
    await waitFor("all ten", () => rest.every((e) => rec.count(e.id) === 1));
    expect(rec.batches[0]!.map((d) => d.id)).toEqual(["first"]);
    expect(rec.batches[1]).toHaveLength(4);
    expect(rec.batches.every((b) => b.length >= 1 && b.length <= 4)).toBe(true);
    expect(rec.seen()).toHaveLength(10);
    await drained(queue);
    expect(queue.consumer.stats()).toEqual({ acked: 10, naked: 0 });
  });

  it("batches - a poison event in a batch goes alone to the dead letters; the others are acked once", async () => {
    const events = [event("ok-0"), event("ok-1"), event("poison"), event("ok-3"), event("ok-4")];
    const rec = batchRecorder(queue, async (batch) => {
      const good = [];
      for (const e of batch) {
        if (e.id === "poison") await e.deadLetter("cannot decode");
        else good.push(e);
      }
      await queue.consumer.ackAll(good);
    });
    await queue.consumer.consumeBatches(rec.handler, { maxBatch: 8, inFlight: 2 });
    await relay(queue, events);
    await relay(queue, [event("after")]);
    await waitFor("sentinel", () => rec.count("after") === 1);
    expect(events.map((e) => rec.count(e.id))).toEqual([1, 1, 1, 1, 1]);
    expect(await fixture.deadLetterReason(queue, "poison")).toBe("cannot decode");
    await drained(queue);
    expect(queue.consumer.stats()).toEqual({ acked: 6, naked: 0 });
  });

  it("batches - a handler that throws: what it settled stays settled, the rest of its batch comes back", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const rec = batchRecorder(queue, async (batch) => {
      if (batch.some((e) => e.id === "hold")) {
        await gate;
        return queue.consumer.ackAll(batch);
      }
      for (const e of batch) if (e.id === "keep") await e.ack();
      if (batch.some((e) => e.deliveryCount === 1 && e.id !== "keep")) throw new Error("inbox down");
      await queue.consumer.ackAll(batch);
    });
    await queue.consumer.consumeBatches(rec.handler, { maxBatch: 8, inFlight: 1 });
    const relayed = [relay(queue, [event("hold")])];
    await waitFor("the holding batch", () => rec.count("hold") === 1);
    // Queued behind the holding batch, these three go together in one batch.
    relayed.push(relay(queue, [event("keep"), event("redo-1"), event("redo-2")]));
    await waitFor("the three to arrive", async () => (await fixture.fetched(queue)) >= 4);
    release();
    await Promise.all(relayed);
    await waitFor("the redeliveries", () => rec.count("redo-1") === 2 && rec.count("redo-2") === 2);
    expect(rec.batches[1]!.map((d) => d.id)).toEqual(["keep", "redo-1", "redo-2"]);
    expect(rec.count("keep")).toBe(1);
    expect(rec.seen().filter((d) => d.id.startsWith("redo")).map((d) => d.deliveryCount).sort()).toEqual([1, 1, 2, 2]);
    await drained(queue);
    expect(queue.consumer.stats()).toEqual({ acked: 4, naked: 2 });
  });

  it("batches - stop: the running batch finishes and is acked, the fetched but unstarted go back to the next consumer", async () => {
    const events = ids("bstop", 6);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const first = batchRecorder(queue, async (batch) => {
      await gate;
      await queue.consumer.ackAll(batch);
    });
    const relayed = relay(queue, events);
    await queue.consumer.consumeBatches(first.handler, { maxBatch: 2, inFlight: 1 });
    await waitFor("the first batch to start", () => first.batches.length === 1);
    await waitFor("more fetched than running", async () => (await fixture.fetched(queue)) > first.batches[0]!.length);
    const stopping = queue.consumer.stop();
    release();
    const stats = await stopping;
    const ran = first.batches[0]!.map((d) => d.id);
    expect(first.batches).toHaveLength(1); // nothing started after stop
    expect(stats.acked).toBe(ran.length);
    expect(stats.naked).toBeGreaterThanOrEqual(1);

    const second = batchRecorder(queue);
    await queue.consumer.consumeBatches(second.handler, { maxBatch: 8, inFlight: 1 });
    await relayed;
    const rest = events.map((e) => e.id).filter((id) => !ran.includes(id));
    await waitFor("the rest", () => rest.every((id) => second.count(id) >= 1));
    expect(ran.map((id) => second.count(id))).toEqual(ran.map(() => 0));
    await drained(queue);
  });

  it("batches - an event published to an idle consumer is handled at once", async () => {
    const rec = batchRecorder(queue);
    await queue.consumer.consumeBatches(rec.handler, { maxBatch: 16, inFlight: 2 });
    await relay(queue, [event("idle-1")]);
    await waitFor("the event", () => rec.count("idle-1") === 1);
    await relay(queue, [event("idle-2")]);
    await waitFor("the second", () => rec.count("idle-2") === 1);
    expect(rec.batches.map((b) => b.map((d) => d.id))).toEqual([["idle-1"], ["idle-2"]]);
  });

  if (kind === "jetstream") it("jetstream - an event reaches the pull request already open, and stop naks what an open request brings", async () => {
    // A pull lifetime far beyond the test's waits: the event can only come through the open request.
    const run = randomBytes(5).toString("hex");
    const stream = `RESONANCE_CONTRACT_IDLE_${run}`;
    const subjects = { push: `resonance.contract-idle.${run}.push`, deadLetter: `resonance.contract-idle.${run}.dead` };
    const durable = `contract-idle-${run}`;
    const open = (pullExpiresMs?: number) =>
      new JetStreamQueue({ natsUrl: NATS_URL, name: `contract-idle-${run}`, log, ackWaitMs: ACK_WAIT_MS, durable, stream, subjects, pullExpiresMs });
    const q = open(120_000);
    const next = open(); // the default lifetime, so closing it at the end is quick
    const nc = await connect({ servers: NATS_URL });
    try {
      await q.start();
      const jsm = await jetstreamManager(nc);
      const rec = batchRecorder(q);
      await q.consumer.consumeBatches(rec.handler, { maxBatch: 1, inFlight: 1 });
      await waitFor("a pull request open at the server", async () => (await jsm.consumers.info(stream, durable)).num_waiting >= 1);
      await q.publisher.publish([event("to-idle")]);
      await waitFor("the event, well before the pull request would expire", () => rec.count("to-idle") === 1, 30_000);

      // stop() waits for the open requests to end; events filling them are handed back, not handled.
      const stopping = q.consumer.stop();
      await q.publisher.publish(ids("filler", 2)); // the capacity: 1 × (1 + 1)
      const stats = await stopping;
      expect(stats.acked).toBe(1);
      expect(stats.naked).toBeGreaterThanOrEqual(2);
      expect(rec.count("filler-0") + rec.count("filler-1")).toBe(0);
      await next.start();
      const after = batchRecorder(next);
      await next.consumer.consumeBatches(after.handler, { maxBatch: 4, inFlight: 1 });
      await waitFor("the fillers, handed on", () => after.count("filler-0") === 1 && after.count("filler-1") === 1);
    } finally {
      await Promise.all([q.close(), next.close()]);
      await (await jetstreamManager(nc)).streams.delete(stream).catch(() => false);
      await nc.close();
    }
  });

  if (kind === "jetstream") it("jetstream - ackAll: when it resolves, the server has every ack of the batch", async () => {
    const total = 200;
    const after: Array<{ expected: number; pending: number }> = [];
    let acked = 0;
    const rec = batchRecorder(queue, async (batch) => {
      // Everything is delivered first (capacity 2 × 100), so nothing changes the count but our acks.
      await waitFor("all delivered", async () => (await queue.consumer.pending()).ackPending === total - acked);
      await queue.consumer.ackAll(batch);
      acked += batch.length;
      after.push({ expected: total - acked, pending: (await queue.consumer.pending()).ackPending });
    });
    await relay(queue, ids("confirm", total)); // JetStream: stored once this resolves
    await queue.consumer.consumeBatches(rec.handler, { maxBatch: 100, inFlight: 1 });
    await waitFor("every batch checked", () => after.at(-1)?.expected === 0);
    expect(after.length).toBeGreaterThanOrEqual(2);
    expect(after.map((a) => a.pending)).toEqual(after.map((a) => a.expected));
    expect(queue.consumer.stats()).toEqual({ acked: total, naked: 0 });
  });

  it("queue - close is idempotent and publishing after it rejects", async () => {
    await Promise.all([queue.close(), queue.close()]);
    await queue.close();
    await expect(queue.publisher.publish([event("late")])).rejects.toThrow(/closed/);
    await new Promise((resolve) => setImmediate(resolve));
    // `lost` first: had it resolved, its value would win the race over the fresh sentinel.
    const notLost = Symbol("not lost");
    expect(await Promise.race([queue.lost, Promise.resolve(notLost)])).toBe(notLost);
  });

  if (kind === "embedded") it("embedded - publish waits for a consumer; close rejects it", async () => {
    const pending = queue.publisher.publish([event("w")]);
    await waitFor("queued", async () => (await queue.consumer.pending()).waiting === 1);
    await queue.close();
    await expect(pending).rejects.toMatchObject({ code: "QUEUE_UNAVAILABLE" });
  });

  if (kind === "embedded") it("embedded - a delivery not settled within ack wait is delivered again", async () => {
    const short = new EmbeddedQueue({ log, ackWaitMs: 50 });
    const rec = recorder(async (e) => {
      if (e.deliveryCount === 1) await new Promise(() => undefined); // hangs forever
      await e.ack();
    });
    const published = short.publisher.publish([event("hang")]);
    await short.consumer.consume(rec.handler, 2);
    await published;
    expect(rec.seen.map((d) => d.deliveryCount)).toEqual([1, 2]);
  });
});

describe("queue - start failures", () => {
  it("jetstream - an unreachable server fails start() with a clear error, not the factory", async () => {
    const queue = createQueue({ natsUrl: "nats://127.0.0.1:1", name: "t", log, ackWaitMs: 1_000 });
    await expect(queue.start()).rejects.toThrow(/cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/);
    await queue.close();
    await queue.close();
  });
});
