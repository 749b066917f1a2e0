import type { Logger } from "../../observability/log.js";
import { batchLimits, oneByOne, runBatch, type SettleableEvent } from "./batches.js";
import type { BatchHandler, BatchOptions, ConsumerStats, EventConsumer, EventPublisher, OutgoingEvent, Queue } from "./types.js";

export interface EmbeddedQueueOptions {
  readonly log: Logger;
  /** A delivery not settled within this time (reset by `working()`) is delivered again. */
  readonly ackWaitMs: number;
  /** How many recently acked ids are remembered for dedup (default 100 000). */
  readonly dedupCapacity?: number;
  /** How many dead letters are kept for inspection (default 1 000). */
  readonly deadLetterCapacity?: number;
}

/** publish() could not hand an event over (consumer stopped, queue closed): retry later, dedup makes it safe. */
export class QueueUnavailableError extends Error {
  readonly code = "QUEUE_UNAVAILABLE";
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QueueUnavailableError";
  }
}

export interface DeadLetter {
  readonly id: string;
  readonly data: Uint8Array;
  readonly reason: string;
  readonly at: Date;
}

interface Entry {
  readonly id: string;
  readonly data: Uint8Array;
  deliveries: number;
  /** Acked, dead-lettered or rejected: nothing more happens to it. */
  done: boolean;
  readonly waiters: Array<{ resolve: () => void; reject: (err: Error) => void }>;
}

type State = "idle" | "consuming" | "stopping" | "stopped" | "closed";

/**
 * The in-process queue of standalone mode. It keeps nothing on disk: durability comes from the
 * caller, whose `publish()` resolves only once the consumer has acked (or dead-lettered) every
 * event of the call, so the caller's outbox row outlives any event lost in a crash. Before the
 * first `consume()` events wait; after `stop()` the events not started are handed back — their
 * `publish()` rejects with {@link QueueUnavailableError} — and new publishes reject at once until
 * `consume()` is called again. Ids acked recently (bounded) resolve at once; an id waiting or in
 * flight is never queued twice.
 */
export class EmbeddedQueue implements Queue {
  readonly kind = "embedded" as const;
  /** In-process: never lost. */
  readonly lost: Promise<Error> = new Promise<Error>(() => undefined);
  /** An ack means the consumer has handled the event: nothing more to wait for. */
  readonly publisher: EventPublisher = { publish: (events) => this.#publish(events), unsyncedMs: 0, destination: () => "embedded" };
  readonly consumer: EventConsumer = {
    consume: (handler, concurrency) => this.#consume(oneByOne(handler), { maxBatch: 1, inFlight: concurrency }),
    consumeBatches: (handler, opts) => this.#consume(handler, opts),
    // In process: an ack is done when it returns, there is nothing to confirm.
    ackAll: async (events) => {
      for (const e of events) await e.ack();
    },
    stop: () => this.#stop(),
    stats: () => ({ ...this.#stats }),
    pending: async () => ({ ackPending: this.#inflight.size, waiting: this.#byId.size - this.#inflight.size }),
  };
  readonly #opts: EmbeddedQueueOptions;
  readonly #log: Logger;
  readonly #stats: ConsumerStats = { acked: 0, naked: 0 };
  /** Every entry not done, waiting or in flight. */
  readonly #byId = new Map<string, Entry>();
  readonly #inflight = new Set<Entry>();
  /** Delivery order; may hold entries that became done meanwhile (skipped). */
  #waiting: Entry[] = [];
  readonly #acked = new Set<string>();
  readonly #deadLetters: DeadLetter[] = [];
  #state: State = "idle";
  /** Entries nak'd with a delay, waiting for their timer to queue them again. */
  readonly #delayed = new Map<Entry, NodeJS.Timeout>();
  #handler: BatchHandler | undefined;
  #maxBatch = 1;
  #inFlight = 1;
  /** Batches running. */
  #running = 0;
  #idle: (() => void) | undefined;
  #pumpScheduled = false;
  #stopping: Promise<ConsumerStats> | undefined;
  #closing: Promise<void> | undefined;

  constructor(opts: EmbeddedQueueOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: "queue", kind: "embedded" });
  }

  /** Nothing to connect. */
  async start(): Promise<void> {
    if (this.#state === "closed") throw new Error("queue: start() after close()");
  }

  /** The dead letters kept in memory, oldest first. */
  deadLetters(): readonly DeadLetter[] {
    return [...this.#deadLetters];
  }

  #publish(events: readonly OutgoingEvent[]): Promise<void> {
    if (this.#state === "closed") return Promise.reject(new QueueUnavailableError("queue: closed"));
    if (this.#state === "stopping" || this.#state === "stopped") {
      return Promise.reject(new QueueUnavailableError("queue: consumer stopped"));
    }
    const all = events.map((event) => {
      if (this.#acked.has(event.id)) return Promise.resolve();
      let entry = this.#byId.get(event.id);
      if (!entry) {
        entry = { id: event.id, data: event.data, deliveries: 0, done: false, waiters: [] };
        this.#byId.set(event.id, entry);
        this.#waiting.push(entry);
      }
      const waiters = entry.waiters;
      return new Promise<void>((resolve, reject) => waiters.push({ resolve, reject }));
    });
    this.#schedule();
    return Promise.all(all).then(() => undefined);
  }

  async #consume(handler: BatchHandler, opts: BatchOptions): Promise<void> {
    if (this.#state === "closed") throw new Error("queue: closed");
    if (this.#state === "consuming" || this.#state === "stopping") throw new Error("queue: already consuming");
    const { maxBatch, inFlight } = batchLimits(opts);
    this.#handler = handler;
    this.#maxBatch = maxBatch;
    this.#inFlight = inFlight;
    this.#state = "consuming";
    this.#stopping = undefined;
    this.#schedule();
  }

  /**
   * Pumps on a later turn, so a handler that naks in a loop cannot starve the event loop, and
   * events published in the same turn go out in one batch.
   */
  #schedule(): void {
    if (this.#pumpScheduled) return;
    this.#pumpScheduled = true;
    setImmediate(() => {
      this.#pumpScheduled = false;
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#state === "consuming" && this.#running < this.#inFlight && this.#waiting.length > 0) {
      const batch: Entry[] = [];
      while (batch.length < this.#maxBatch && this.#waiting.length > 0) {
        const entry = this.#waiting.shift()!;
        if (!entry.done && !this.#inflight.has(entry) && !batch.includes(entry)) batch.push(entry);
      }
      if (batch.length > 0) this.#deliver(batch);
    }
  }

  #deliver(entries: readonly Entry[]): void {
    const handler = this.#handler!;
    this.#running++;
    const events = entries.map((entry) => this.#event(entry));
    void runBatch(handler, events, this.#log).then(() => {
      this.#running--;
      if (this.#running === 0) this.#idle?.();
      this.#schedule();
    });
  }

  /** One delivery of `entry`, redelivered if not settled within the ack wait (reset by `working()`). */
  #event(entry: Entry): SettleableEvent {
    entry.deliveries++;
    this.#inflight.add(entry);
    let settled = false;
    let expired = false;
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (settled) return;
        expired = true;
        this.#log.warn({ id: entry.id, deliveryCount: event.deliveryCount }, "event not settled within ack wait; redelivering");
        this.#requeue(entry);
      }, this.#opts.ackWaitMs);
      timer.unref();
    };
    const settle = (): boolean => {
      if (settled) return false;
      settled = true;
      clearTimeout(timer);
      return true;
    };
    const event: SettleableEvent = {
      id: entry.id,
      data: entry.data,
      deliveryCount: entry.deliveries,
      // An expired delivery is out of the handler's hands: it is being delivered again.
      settled: () => settled || expired,
      // A late ack from an expired delivery still counts: the work was done.
      ack: async () => {
        if (settle()) this.#ackEntry(entry);
      },
      nak: (delayMs?: number) => {
        if (expired || !settle()) return;
        this.#stats.naked++;
        if (delayMs !== undefined && delayMs > 0) this.#requeueLater(entry, delayMs);
        else this.#requeue(entry);
      },
      working: () => {
        if (!settled && !expired) arm();
      },
      deadLetter: async (reason: string) => {
        if (!settle()) return;
        this.#deadLetters.push({ id: entry.id, data: entry.data, reason, at: new Date() });
        if (this.#deadLetters.length > (this.#opts.deadLetterCapacity ?? 1000)) this.#deadLetters.shift();
        this.#log.error({ id: entry.id, reason, deliveryCount: event.deliveryCount }, "event dead-lettered");
        this.#ackEntry(entry);
      },
    };
    arm();
    return event;
  }

  /** Out of flight now, queued again after `delayMs` (or handed back to its publishers if the consumer stops meanwhile). */
  #requeueLater(entry: Entry, delayMs: number): void {
    this.#inflight.delete(entry);
    const timer = setTimeout(() => {
      this.#delayed.delete(entry);
      this.#requeue(entry);
    }, delayMs);
    this.#delayed.set(entry, timer);
  }

  #ackEntry(entry: Entry): void {
    if (entry.done) return;
    entry.done = true;
    this.#inflight.delete(entry);
    this.#byId.delete(entry.id);
    this.#acked.add(entry.id);
    if (this.#acked.size > (this.#opts.dedupCapacity ?? 100_000)) {
      this.#acked.delete(this.#acked.values().next().value!);
    }
    this.#stats.acked++;
    for (const w of entry.waiters.splice(0)) w.resolve();
  }

  /** Back to the queue for another delivery; while stopping or closed, hands it back to its publishers. */
  #requeue(entry: Entry): void {
    if (entry.done) return;
    this.#inflight.delete(entry);
    if (this.#state !== "consuming") {
      this.#reject(entry, new QueueUnavailableError("queue: consumer stopped before the event was handled"));
      return;
    }
    this.#waiting.push(entry);
    this.#schedule();
  }

  #reject(entry: Entry, err: Error): void {
    if (entry.done) return;
    entry.done = true;
    this.#inflight.delete(entry);
    this.#byId.delete(entry.id);
    for (const w of entry.waiters.splice(0)) w.reject(err);
  }

  /**
   * Hands back the events not started (their publish() rejects), awaits running handlers — a
   * handler that never returns keeps it pending, so bound it with the shutdown deadline. Idempotent.
   */
  #stop(): Promise<ConsumerStats> {
    if (this.#state !== "consuming") return this.#stopping ?? Promise.resolve({ ...this.#stats });
    this.#state = "stopping";
    this.#stopping = (async () => {
      const err = new QueueUnavailableError("queue: consumer stopped before the event was handled");
      for (const entry of this.#waiting.splice(0)) {
        if (entry.done || this.#inflight.has(entry)) continue;
        this.#stats.naked++;
        this.#reject(entry, err);
      }
      // Already counted as nak'd when they were handed back with a delay.
      for (const [entry, timer] of this.#delayed) {
        clearTimeout(timer);
        this.#reject(entry, err);
      }
      this.#delayed.clear();
      if (this.#running > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
      this.#idle = undefined;
      if (this.#state === "stopping") this.#state = "stopped";
      this.#log.info({ ...this.#stats }, "consumer stopped");
      return { ...this.#stats };
    })();
    return this.#stopping;
  }

  /** Stops the consumer, then rejects every publish still waiting. Idempotent, never rejects. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#stop();
      this.#state = "closed";
      const err = new QueueUnavailableError("queue: closed");
      for (const entry of [...this.#byId.values()]) this.#reject(entry, err);
      this.#waiting = [];
    })();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
