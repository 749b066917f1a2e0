import type { EventPublisher } from "../infra/queue/types.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import type { LogicStore } from "./store.js";

/** How long a relay owns the rows it took; after that another relay may publish them again. */
const CLAIM_MS = 15_000;
/**
 * A round whose publish has not resolved after this goes on in the background and the next
 * round starts: with the embedded queue a publish resolves only once the consumer has handled
 * every event, and one event being retried (with back-off, until it is dead-lettered) must not
 * hold back the messages committed after it.
 */
const SLOW_ROUND_MS = 200;
/** Slow rounds at most in the background; beyond, the relay waits for one of them. */
const MAX_SLOW_ROUNDS = 4;
/** How long a stop waits for slow rounds. */
const SLOW_STOP_WAIT_MS = 5_000;

export interface RelayOptions {
  readonly batchSize: number;
  readonly intervalMs: number;
  /** Who claims rows: the instance id. */
  readonly owner: string;
  /**
   * Let a slow round go on in the background (the embedded queue, whose publish waits for the
   * consumer). Off for JetStream, whose publish waits only for the stream: rounds stay in order.
   */
  readonly backgroundSlowRounds?: boolean;
}

/**
 * The outbox relay: claims committed events from the outbox table (SKIP LOCKED,
 * so several logic instances share the work), publishes them with their msg_id as dedup id,
 * and deletes them only after every publish was acknowledged. A failure leaves the rows for
 * the next round (backoff up to 5 s); a redelivery is harmless downstream.
 */
export class OutboxRelay {
  readonly #store: LogicStore;
  readonly #publisher: EventPublisher;
  readonly #opts: RelayOptions;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  #state: "idle" | "running" | "stopping" | "stopped" = "idle";
  #timer: NodeJS.Timeout | undefined;
  #wake = false;
  #running: Promise<void> | undefined;
  #failures = 0;
  #flushed = 0;
  #stopping: Promise<{ flushed: number; pending: number }> | undefined;
  readonly #slow = new Set<Promise<void>>();

  constructor(store: LogicStore, publisher: EventPublisher, opts: RelayOptions, log: Logger, metrics: Metrics) {
    this.#store = store;
    this.#publisher = publisher;
    this.#opts = opts;
    this.#log = log;
    this.#metrics = metrics;
  }

  /** Takes back the claims this instance left when it last died, then starts relaying. */
  async start(): Promise<void> {
    if (this.#state !== "idle") return;
    await this.#store.releaseStaleClaims(this.#opts.owner, this.#store.db.kind === "pglite");
    this.#state = "running";
    this.poke();
  }

  /** Asks for a round as soon as the current one ends (called after every commit). */
  poke(): void {
    if (this.#state !== "running") return;
    if (this.#running) {
      this.#wake = true;
      return;
    }
    clearTimeout(this.#timer);
    this.#running = this.#loop().finally(() => {
      this.#running = undefined;
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#state !== "running") return;
    const backoff = this.#failures === 0 ? this.#opts.intervalMs : Math.min(5_000, 100 * 2 ** this.#failures);
    if (this.#wake && this.#failures === 0) {
      this.#wake = false;
      this.poke();
      return;
    }
    this.#timer = setTimeout(() => this.poke(), backoff);
    this.#timer.unref();
  }

  async #loop(): Promise<void> {
    try {
      // Keep going while full batches come back: a backlog drains without waiting for the timer.
      while ((await this.#round()) === this.#opts.batchSize && this.#state === "running");
      this.#failures = 0;
    } catch (err) {
      this.#failures++;
      this.#log.warn({ err, failures: this.#failures }, "outbox relay round failed; will retry");
    }
  }

  /** One batch: resolves with the number of events published. */
  async #round(): Promise<number> {
    if (this.#slow.size >= MAX_SLOW_ROUNDS) await Promise.race(this.#slow);
    const rows = await this.#store.claimOutbox(this.#opts.batchSize, CLAIM_MS, this.#opts.owner);
    if (rows.length === 0) return 0;
    const done = this.#publishRows(rows);
    if (!this.#opts.backgroundSlowRounds) {
      await done;
      return rows.length;
    }
    let timer: NodeJS.Timeout | undefined;
    const slow = new Promise<"slow">((resolve) => (timer = setTimeout(() => resolve("slow"), SLOW_ROUND_MS)));
    try {
      if ((await Promise.race([done, slow])) !== "slow") return rows.length;
    } finally {
      clearTimeout(timer);
    }
    // Still waiting (an event being retried): its rows stay claimed; the next round goes on.
    const background = done.then(
      () => {},
      (err: unknown) => this.#log.warn({ err, events: rows.length }, "outbox relay round failed; its rows go out again"),
    );
    this.#slow.add(background);
    void background.finally(() => this.#slow.delete(background));
    return rows.length;
  }

  /** Publishes the claimed rows' events, then deletes the rows; on failure gives them back and rejects. */
  async #publishRows(rows: ReadonlyArray<{ id: string; msg_id: string }>): Promise<void> {
    const ids = rows.map((r) => r.id);
    try {
      const events = await this.#store.pushEvents(rows.map((r) => r.msg_id));
      // Every outbox row's message exists: both were written by one statement.
      await this.#publisher.publish(rows.map((r) => ({ id: r.msg_id, data: events.get(r.msg_id)! })));
    } catch (err) {
      await this.#store.releaseOutbox(ids).catch(() => {});
      throw err;
    }
    await this.#store.deleteOutbox(ids);
    this.#metrics.outboxPublished.inc(rows.length);
    this.#flushed += rows.length;
  }

  /**
   * Stops polling, lets the batch in flight finish, then makes one last bounded flush.
   * Resolves with how many events were published in total and how many remain; never rejects.
   */
  stop(): Promise<{ flushed: number; pending: number }> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<{ flushed: number; pending: number }> {
    if (this.#state === "stopped" || this.#state === "idle") {
      this.#state = "stopped";
      return { flushed: this.#flushed, pending: 0 };
    }
    this.#state = "stopping";
    clearTimeout(this.#timer);
    await this.#running;
    // Slow rounds get a bounded wait: what they hold stays in the outbox for the next start.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.#slow), new Promise((r) => (timer = setTimeout(r, SLOW_STOP_WAIT_MS)))]);
    clearTimeout(timer);
    try {
      for (let i = 0; i < 20 && (await this.#round()) > 0; i++);
    } catch (err) {
      this.#log.warn({ err }, "last outbox flush failed; rows stay for the next relay");
    }
    this.#state = "stopped";
    const pending = await this.#store.outboxBacklog().catch(() => -1);
    return { flushed: this.#flushed, pending };
  }
}
