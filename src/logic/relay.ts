import type { EventPublisher } from "../infra/queue/types.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import type { CommittedEvent, LogicStore } from "./store.js";

/** How long the poller owns the rows it took; after that another relay may publish them again. */
const CLAIM_MS = 15_000;
/**
 * How long rows committed by this instance stay claimed for the fast path: the poller (of any
 * instance) publishes them only if the fast path has not within this time (a crash, a failure).
 */
export const FAST_PATH_CLAIM_MS = 5_000;
/** Events of the fast path publishing at once; beyond this, commits leave them to the poller. */
const MAX_FAST_IN_FLIGHT = 8_192;
/** Published rows are deleted this long after the queue's sync interval (the fsync itself takes time). */
const SYNC_MARGIN_MS = 5_000;
/** Rows deleted per statement once synced. */
const DELETE_BATCH = 5_000;
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
  /** Added to the queue's sync interval before a published row goes (default 5 s). */
  readonly syncMarginMs?: number;
  /**
   * Let a slow round go on in the background (the embedded queue, whose publish waits for the
   * consumer). Off for JetStream, whose publish waits only for the stream: rounds stay in order.
   */
  readonly backgroundSlowRounds?: boolean;
}

/**
 * The outbox relay. Fast path: the events of every group commit are published at once, straight
 * from the commit (many publishes in flight, bounded). Safety net: a poller claims outbox rows
 * whose claim ran out (SKIP LOCKED, so several logic instances share the work) and publishes them
 * with their msg_id as dedup id. A publish that fails leaves its rows for the poller (backoff up
 * to 5 s); a redelivery is harmless downstream.
 *
 * A published row goes only once the queue has the event on disk: at once when the publisher's
 * ack means that (embedded queue: the consumer has handled it), else the row is marked published
 * and deleted after the queue server's sync interval ({@link EventPublisher.unsyncedMs}). If the
 * queue server restarts meanwhile (its id changes), the marked rows are published again: an
 * operating-system crash may have cost it what it had acknowledged and not written yet.
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
  /** Fast-path events publishing now, and their publishes. */
  #fastInFlight = 0;
  readonly #fast = new Set<Promise<void>>();
  /** Ids of published rows waiting to be deleted (or marked), and the statement doing it. */
  #settle: string[] = [];
  #settling: Promise<void> | undefined;
  /** The queue server the marked rows were checked against. */
  #server: string | undefined;
  #lastSyncedDelete = 0;
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

  /** Asks for a poller round as soon as the current one ends. */
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

  /**
   * The fast path: publishes the events of a commit now. Returns at once; the rows of events it
   * does not take (stopping, the queue failing, too many in flight) are left to the poller.
   */
  publishCommitted(events: readonly CommittedEvent[]): void {
    if (this.#state !== "running" || this.#failures > 0 || this.#fastInFlight + events.length > MAX_FAST_IN_FLIGHT) return;
    this.#fastInFlight += events.length;
    const p: Promise<void> = this.#publisher
      .publish(events.map((e) => ({ id: e.msgId, data: e.data })))
      .then(
        () => this.#published(events.map((e) => e.outboxId)),
        (err: unknown) => this.#log.warn({ err, events: events.length }, "publishing committed events failed; the poller retries them"),
      )
      .finally(() => {
        this.#fastInFlight -= events.length;
        this.#fast.delete(p);
      });
    this.#fast.add(p);
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
      await this.#housekeeping();
      // Keep going while full batches come back: a backlog drains without waiting for the timer.
      while ((await this.#round()) === this.#opts.batchSize && this.#state === "running");
      this.#failures = 0;
    } catch (err) {
      this.#failures++;
      this.#log.warn({ err, failures: this.#failures }, "outbox relay round failed; will retry");
    }
  }

  /**
   * Where the queue does not sync at once: publishes again what a restarted server may have lost,
   * and deletes (about once a second) the rows the server has had on disk for sure.
   */
  async #housekeeping(): Promise<void> {
    if (this.#publisher.unsyncedMs === 0) return;
    const server = this.#publisher.destination();
    // "unknown": not connected right now; the check waits for a server to compare with.
    if (server !== this.#server && server !== "unknown") {
      const again = await this.#store.republishLost(server);
      if (again > 0) this.#log.warn({ events: again, server }, "the queue server changed: publishing again what it may not have written to disk");
      this.#server = server;
    }
    if (Date.now() - this.#lastSyncedDelete < 1_000) return;
    this.#lastSyncedDelete = Date.now();
    while ((await this.#store.deleteSynced(this.#publisher.unsyncedMs + (this.#opts.syncMarginMs ?? SYNC_MARGIN_MS), DELETE_BATCH)) === DELETE_BATCH);
  }

  /** One poller batch: resolves with the number of events published. */
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
    await this.#published(ids);
  }

  /**
   * Counts published events and settles their rows, many at once: one statement in flight,
   * the ids that arrive meanwhile go in the next. Resolves when these ids are settled; never
   * rejects (a row left unsettled is published again later: harmless).
   */
  async #published(ids: readonly string[]): Promise<void> {
    this.#metrics.outboxPublished.inc(ids.length);
    this.#flushed += ids.length;
    for (const id of ids) this.#settle.push(id);
    this.#settling ??= this.#settleAll().finally(() => (this.#settling = undefined));
    await this.#settling;
  }

  /** Deletes (or marks) the published rows until none is left waiting; never rejects. */
  async #settleAll(): Promise<void> {
    while (this.#settle.length > 0) {
      const batch = this.#settle;
      this.#settle = [];
      try {
        if (this.#publisher.unsyncedMs > 0) await this.#store.markPublished(batch, this.#publisher.destination());
        else {
          await this.#store.deleteOutbox(batch);
        }
      } catch (err) {
        this.#log.warn({ err, rows: batch.length }, "settling published outbox rows failed; they will be published again");
      }
    }
  }

  /**
   * Stops polling, lets the poller's batch and the fast-path publishes in flight finish, then makes
   * one last bounded flush. Resolves with how many events were published in total and how many
   * remain; never rejects.
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
    await Promise.allSettled([...this.#fast]);
    // Slow rounds get a bounded wait: what they hold stays in the outbox for the next start.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.#slow), new Promise((r) => (timer = setTimeout(r, SLOW_STOP_WAIT_MS)))]);
    clearTimeout(timer);
    try {
      // The rows this instance holds for its fast path are published now rather than after their claim.
      await this.#store.releaseStaleClaims(this.#opts.owner, false);
      for (let i = 0; i < 20 && (await this.#round()) > 0; i++);
    } catch (err) {
      this.#log.warn({ err }, "last outbox flush failed; rows stay for the next relay");
    }
    this.#state = "stopped";
    const pending = await this.#store.outboxBacklog().catch(() => -1);
    return { flushed: this.#flushed, pending };
  }
}
