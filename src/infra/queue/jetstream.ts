import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type Consumer,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, headers, nanos, type NatsConnection } from "@nats-io/transport-node";
import type { Logger } from "../../observability/log.js";
import { batchLimits, oneByOne, runBatch, type SettleableEvent } from "./batches.js";
import type { BatchHandler, BatchOptions, ConsumerStats, DeliveredEvent, EventConsumer, EventPublisher, OutgoingEvent, Queue } from "./types.js";

export interface JetStreamQueueOptions {
  /** One NATS URL, or several separated by commas. */
  readonly natsUrl: string;
  /** Connection name, shown by the server's monitoring (`/connz`). */
  readonly name: string;
  readonly log: Logger;
  /** How long the server waits for an ack before redelivering. */
  readonly ackWaitMs: number;
  readonly durable: string;
  readonly stream: string;
  readonly subjects: { readonly push: string; readonly deadLetter: string };
  /** Delivered-but-unacked limit of the durable consumer, across all its instances (default 1000). */
  readonly maxAckPending?: number;
  /**
   * Lifetime of one pull request (default and minimum 1 s): stop() waits up to this long for the
   * open requests to end. An event reaches an open request at once, whatever its lifetime.
   */
  readonly pullExpiresMs?: number;
  /**
   * The server's `jetstream.sync_interval` (how long an acknowledged event may stay unwritten to
   * disk; NATS default 2 minutes), or 0 when it syncs always or the stream is replicated.
   */
  readonly syncIntervalMs?: number;
}

/** Header carrying the reason on a dead-lettered event. */
export const DEAD_LETTER_REASON_HEADER = "Resonance-Dead-Reason";
/** Header carrying the original event id on a dead-lettered event. */
export const DEAD_LETTER_ID_HEADER = "Resonance-Event-Id";

const PUBLISH_WINDOW = 512;
const DUPLICATE_WINDOW_MS = 120_000;
/** nats-server's default `jetstream.sync_interval`. */
export const DEFAULT_SYNC_INTERVAL_MS = 120_000;
/** Default lifetime of one pull request: bounds how long stop() waits (the client's minimum). */
const PULL_EXPIRES_MS = 1_000;
/** Pull requests open at once: a second one keeps events flowing while the first refills. */
const MAX_OPEN_PULLS = 2;

interface Session {
  readonly handler: BatchHandler;
  readonly maxBatch: number;
  readonly inFlight: number;
  /** Most events delivered here and not settled: running, buffered and asked for. */
  readonly capacity: number;
  /** Fetched, not yet handed to the handler. */
  readonly buffer: JsEvent[];
  readonly running: Set<Promise<void>>;
  runningEvents: number;
  /** Events asked for by the open pull requests and not yet received. */
  requested: number;
  failures: number;
  dispatchScheduled: boolean;
  /** Interrupts the back-off between failed pulls. */
  readonly abort: AbortController;
  stopping: boolean;
  /** Wakes the pull loop when room may have grown. */
  wake: (() => void) | undefined;
  loop: Promise<void>;
  stopped?: Promise<ConsumerStats>;
}

/** What an event needs from its queue. */
interface EventHooks {
  readonly log: Logger;
  acked(): void;
  naked(): void;
  deadLetter(js: JetStreamClient, id: string, data: Uint8Array, reason: string): Promise<void>;
}

/** A delivered JetStream message: the first of ack / nak / deadLetter settles it, later calls are no-ops. */
class JsEvent implements SettleableEvent {
  readonly data: Uint8Array;
  readonly #msg: JsMsg;
  readonly #js: JetStreamClient;
  readonly #hooks: EventHooks;
  #settled = false;
  #id: string | undefined;

  constructor(msg: JsMsg, js: JetStreamClient, hooks: EventHooks) {
    this.#msg = msg;
    this.#js = js;
    this.#hooks = hooks;
    this.data = msg.data;
  }

  // Read when asked: parsing the headers and the reply subject of every message is a visible
  // share of the CPU per event, and the hot path needs neither.
  get id(): string {
    this.#id ??= this.#msg.headers?.get("Nats-Msg-Id") || `seq-${this.#msg.seq}`;
    return this.#id;
  }

  get deliveryCount(): number {
    return this.#msg.info.deliveryCount;
  }

  settled(): boolean {
    return this.#settled;
  }

  async ack(): Promise<void> {
    if (this.#settled) return;
    this.#settled = true;
    await this.#confirm();
  }

  /** Settles with a plain ack; a later ack-ack on the same connection confirms it (see ackAll). */
  ackUnconfirmed(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#msg.ack();
  }

  nak(delayMs?: number): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#msg.nak(delayMs !== undefined && delayMs > 0 ? Math.ceil(delayMs) : undefined);
    this.#hooks.naked();
  }

  working(): void {
    if (!this.#settled) this.#msg.working();
  }

  async deadLetter(reason: string): Promise<void> {
    if (this.#settled) return;
    this.#settled = true;
    try {
      await this.#hooks.deadLetter(this.#js, this.id, this.data, reason);
    } catch (err) {
      this.#settled = false; // not moved: let the caller (or the batch runner) nak it
      throw err;
    }
    this.#hooks.log.error({ id: this.id, reason, deliveryCount: this.deliveryCount }, "event dead-lettered");
    await this.#confirm();
  }

  async #confirm(): Promise<void> {
    if (!(await this.#msg.ackAck())) throw new Error(`queue: ack of ${this.id} not confirmed`);
    this.#hooks.acked();
  }
}

/** The server list for messages: credentials in a URL never reach a log line or an error. */
function describeServers(servers: readonly string[]): string {
  return servers.map((s) => s.replace(/\/\/[^@/]*@/, "//")).join(",");
}

function isApiError(err: unknown, code: number): boolean {
  return err instanceof JetStreamApiError && err.code === code;
}

/**
 * The queue on NATS JetStream: a work-queue stream (file storage, `Nats-Msg-Id` dedup over two
 * minutes) holding the push and dead-letter subjects, and one durable pull consumer with explicit
 * ack shared by every task instance. The connection reconnects forever; `lost` resolves only if it
 * closes for good without `close()`.
 */
export class JetStreamQueue implements Queue {
  readonly kind = "jetstream" as const;
  readonly lost: Promise<Error>;
  readonly publisher: EventPublisher;
  readonly consumer: EventConsumer = {
    consume: (handler, concurrency) => this.#consume(oneByOne(handler), { maxBatch: 1, inFlight: concurrency }),
    consumeBatches: (handler, opts) => this.#consume(handler, opts),
    ackAll: (events) => this.#ackAll(events),
    stop: () => this.#stop(),
    stats: () => ({ ...this.#stats }),
    pending: () => this.#pending(),
  };
  readonly #opts: JetStreamQueueOptions;
  readonly #log: Logger;
  readonly #stats: ConsumerStats = { acked: 0, naked: 0 };
  readonly #pullExpiresMs: number;
  readonly #hooks: EventHooks;
  #resolveLost!: (err: Error) => void;
  #nc: NatsConnection | undefined;
  #js: JetStreamClient | undefined;
  #jsm: JetStreamManager | undefined;
  #session: Session | undefined;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;

  /** Does no I/O: `start()` connects. */
  constructor(opts: JetStreamQueueOptions) {
    this.#opts = opts;
    this.publisher = {
      publish: (events) => this.#publish(events),
      unsyncedMs: opts.syncIntervalMs ?? DEFAULT_SYNC_INTERVAL_MS,
      destination: () => this.#nc?.info?.server_id ?? "unknown",
    };
    this.#log = opts.log.child({ component: "queue", kind: "jetstream", stream: opts.stream });
    this.#pullExpiresMs = Math.max(PULL_EXPIRES_MS, opts.pullExpiresMs ?? PULL_EXPIRES_MS);
    this.#hooks = {
      log: this.#log,
      acked: () => this.#stats.acked++,
      naked: () => this.#stats.naked++,
      deadLetter: (js, id, data, reason) => this.#publishDeadLetter(js, id, data, reason),
    };
    this.lost = new Promise((resolve) => (this.#resolveLost = resolve));
  }

  /** Connects, then creates or updates the stream and the durable consumer. Fails clearly; memoized. */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#closing) throw new Error("queue: start() after close()");
    const servers = this.#opts.natsUrl.split(",").map((s) => s.trim()).filter(Boolean);
    let nc: NatsConnection;
    try {
      // noAsyncTraces: every request (a publish, an ack-ack) would otherwise capture a stack trace
      // up front, in case it fails — a measurable share of the CPU per event.
      nc = await connect({ servers, name: this.#opts.name, maxReconnectAttempts: -1, reconnectTimeWait: 1_000, noAsyncTraces: true });
    } catch (err) {
      throw new Error(`queue: cannot connect to NATS at ${describeServers(servers)}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const jsm = await jetstreamManager(nc);
      await this.#ensureStream(jsm);
      await this.#ensureConsumer(jsm);
      this.#jsm = jsm;
      this.#js = jetstream(nc);
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw new Error(`queue: cannot set up JetStream stream ${this.#opts.stream}: ${(err as Error).message}`, { cause: err });
    }
    this.#nc = nc;
    void this.#watch(nc);
    this.#log.info({ server: nc.getServer(), durable: this.#opts.durable }, "connected to NATS JetStream");
  }

  async #watch(nc: NatsConnection): Promise<void> {
    void nc.closed().then((err) => {
      if (this.#closing) return;
      const cause = err instanceof Error ? err : new Error("NATS connection closed");
      this.#log.error({ err: cause }, "NATS connection lost for good");
      this.#resolveLost(cause);
    });
    for await (const s of nc.status()) {
      if (s.type === "disconnect") this.#log.warn({ server: s.server }, "NATS disconnected, reconnecting");
      else if (s.type === "reconnect") this.#log.info({ server: s.server }, "NATS reconnected");
      else if (s.type === "error") this.#log.warn({ err: s.error }, "NATS error");
    }
  }

  async #ensureStream(jsm: JetStreamManager): Promise<void> {
    const { stream, subjects } = this.#opts;
    const wanted = [subjects.push, subjects.deadLetter];
    try {
      const info = await jsm.streams.info(stream);
      const missing = wanted.filter((s) => !info.config.subjects?.includes(s));
      if (missing.length > 0) {
        await jsm.streams.update(stream, { subjects: [...(info.config.subjects ?? []), ...missing] });
        this.#log.info({ added: missing }, "added subjects to the JetStream stream");
      }
    } catch (err) {
      if (!isApiError(err, JetStreamApiCodes.StreamNotFound)) throw err;
      await jsm.streams.add({
        name: stream,
        subjects: wanted,
        storage: StorageType.File,
        // Acked events leave the stream; dead letters stay until an operator removes them.
        retention: RetentionPolicy.Workqueue,
        duplicate_window: nanos(DUPLICATE_WINDOW_MS),
      });
      this.#log.info({ subjects: wanted }, "created JetStream stream");
    }
  }

  async #ensureConsumer(jsm: JetStreamManager): Promise<void> {
    const { stream, durable } = this.#opts;
    const ackWait = nanos(this.#opts.ackWaitMs);
    const maxAckPending = this.#opts.maxAckPending ?? 1000;
    try {
      const info = await jsm.consumers.info(stream, durable);
      if (info.config.ack_wait !== ackWait || info.config.max_ack_pending !== maxAckPending) {
        await jsm.consumers.update(stream, durable, { ack_wait: ackWait, max_ack_pending: maxAckPending });
      }
    } catch (err) {
      if (!isApiError(err, JetStreamApiCodes.ConsumerNotFound)) throw err;
      await jsm.consumers.add(stream, {
        durable_name: durable,
        ack_policy: AckPolicy.Explicit,
        ack_wait: ackWait,
        filter_subject: this.#opts.subjects.push,
        deliver_policy: DeliverPolicy.All,
        max_ack_pending: maxAckPending,
      });
      this.#log.info({ durable }, "created durable JetStream consumer");
    }
  }

  #client(): JetStreamClient {
    if (this.#closing) throw new Error("queue: closed");
    if (!this.#js) throw new Error("queue: not started");
    return this.#js;
  }

  /** Publishes with `msgID` = event id, up to {@link PUBLISH_WINDOW} acks in flight; resolves when all are acked. */
  async #publish(events: readonly OutgoingEvent[]): Promise<void> {
    const js = this.#client();
    const subject = this.#opts.subjects.push;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < events.length) {
        const event = events[next++]!;
        await js.publish(subject, event.data, { msgID: event.id });
      }
    };
    await Promise.all(Array.from({ length: Math.min(PUBLISH_WINDOW, events.length) }, worker));
  }

  async #consume(handler: BatchHandler, opts: BatchOptions): Promise<void> {
    const js = this.#client();
    if (this.#session) throw new Error("queue: already consuming");
    const { maxBatch, inFlight } = batchLimits(opts);
    const consumer = await js.consumers.get(this.#opts.stream, this.#opts.durable);
    const session: Session = {
      handler,
      maxBatch,
      inFlight,
      capacity: maxBatch * (inFlight + 1),
      buffer: [],
      running: new Set(),
      runningEvents: 0,
      requested: 0,
      failures: 0,
      dispatchScheduled: false,
      stopping: false,
      wake: undefined,
      abort: new AbortController(),
      loop: Promise.resolve(),
    };
    this.#session = session;
    session.loop = this.#pullLoop(session, consumer, js);
    this.#log.info({ durable: this.#opts.durable, maxBatch, inFlight }, "consuming");
  }

  /** Events this consumer may still ask the server for: room left under its capacity. */
  #room(session: Session): number {
    return session.capacity - session.buffer.length - session.runningEvents - session.requested;
  }

  /**
   * Keeps pull requests open — one whenever there is room, a second when a sizeable share of the
   * capacity is free again — so the server sends an event to an idle consumer the moment it is
   * published, and a busy one is never left waiting for its next request. A request (a `fetch`)
   * ends by itself (its count filled, or {@link JetStreamQueueOptions.pullExpiresMs} passed); the
   * loop then opens the next. Closing a subscription with a request still open would strand the
   * events the server is sending until their ack wait runs out, so stop() lets the open requests
   * end and naks what they still bring.
   */
  async #pullLoop(session: Session, consumer: Consumer, js: JetStreamClient): Promise<void> {
    const open = new Set<Promise<void>>();
    const topUp = Math.max(1, Math.ceil(session.capacity / 4));
    while (!session.stopping && !this.#nc?.isClosed()) {
      const room = this.#room(session);
      const wanted = open.size === 0 ? room >= 1 : open.size < MAX_OPEN_PULLS && room >= topUp;
      if (!wanted) {
        await new Promise<void>((resolve) => (session.wake = resolve));
        session.wake = undefined;
        continue;
      }
      session.requested += room;
      const pull: Promise<void> = this.#pull(session, consumer, js, room).finally(() => {
        open.delete(pull);
        session.wake?.();
      });
      open.add(pull);
    }
    await Promise.all(open);
  }

  /** One pull request for `count` events: each arriving event joins the buffer (or is nak'd while stopping). Never rejects. */
  async #pull(session: Session, consumer: Consumer, js: JetStreamClient, count: number): Promise<void> {
    let received = 0;
    try {
      const messages = await consumer.fetch({ max_messages: count, expires: this.#pullExpiresMs });
      for await (const msg of messages) {
        received++;
        session.requested--;
        if (session.stopping) {
          msg.nak();
          this.#stats.naked++;
          continue;
        }
        session.buffer.push(new JsEvent(msg, js, this.#hooks));
        this.#scheduleDispatch(session);
      }
      session.failures = 0;
    } catch (err) {
      if (session.stopping) return;
      if (this.#nc?.isClosed()) {
        this.#log.error({ err }, "NATS connection closed; no longer consuming");
        return;
      }
      session.failures++;
      this.#log.warn({ err, failures: session.failures }, "pulling from JetStream failed; retrying");
      await sleep(Math.min(500 * session.failures, 5_000), undefined, { signal: session.abort.signal }).catch(() => undefined);
    } finally {
      session.requested -= count - received;
    }
  }

  /**
   * Dispatches on the next turn rather than per arriving event, so the events of one socket read
   * (a burst) go out together; on an idle consumer that adds no measurable delay.
   */
  #scheduleDispatch(session: Session): void {
    if (session.dispatchScheduled) return;
    session.dispatchScheduled = true;
    setImmediate(() => {
      session.dispatchScheduled = false;
      this.#dispatch(session);
    });
  }

  /** Starts batches from the buffer while fewer than `inFlight` run. */
  #dispatch(session: Session): void {
    while (!session.stopping && session.running.size < session.inFlight && session.buffer.length > 0) {
      const batch = session.buffer.splice(0, session.maxBatch);
      session.runningEvents += batch.length;
      const run: Promise<void> = runBatch(session.handler, batch, this.#log).finally(() => {
        session.running.delete(run);
        session.runningEvents -= batch.length;
        this.#dispatch(session);
        session.wake?.();
      });
      session.running.add(run);
    }
  }

  /** Plain acks for all but the last event, an ack-ack for the last: see {@link EventConsumer.ackAll}. */
  async #ackAll(events: readonly DeliveredEvent[]): Promise<void> {
    const mine = events.filter((e): e is JsEvent => e instanceof JsEvent && !e.settled());
    const last = mine.pop();
    if (!last) return;
    for (const e of mine) e.ackUnconfirmed();
    await last.ack();
    // The server answers an ack-ack after the acks this connection sent before it.
    this.#stats.acked += mine.length;
  }

  /** Moves `data` to the dead-letter subject with the reason and the original id. */
  async #publishDeadLetter(js: JetStreamClient, id: string, data: Uint8Array, reason: string): Promise<void> {
    const h = headers();
    h.set(DEAD_LETTER_REASON_HEADER, reason.replace(/[\r\n]+/g, " ").slice(0, 1024));
    h.set(DEAD_LETTER_ID_HEADER, id);
    // Its own msgID: dedup is per stream, and the event's id is already in the window.
    await js.publish(this.#opts.subjects.deadLetter, data, { msgID: `dead.${id}`, headers: h });
  }

  /**
   * Stops pulling, naks what was fetched but not started (including what the open pull requests
   * still bring, so it may take up to the pull lifetime), awaits running handlers — a handler
   * that never returns keeps it pending, so bound it with the shutdown deadline. Idempotent.
   */
  #stop(): Promise<ConsumerStats> {
    const session = this.#session;
    if (!session) return Promise.resolve({ ...this.#stats });
    session.stopped ??= (async () => {
      session.stopping = true;
      session.abort.abort();
      session.wake?.();
      for (const e of session.buffer.splice(0)) e.nak();
      // The open pull requests end within the pull lifetime; #pull naks what they still bring.
      await session.loop;
      await Promise.allSettled([...session.running]);
      if (this.#session === session) this.#session = undefined;
      this.#log.info({ ...this.#stats }, "consumer stopped");
      return { ...this.#stats };
    })();
    return session.stopped;
  }

  async #pending(): Promise<{ ackPending: number; waiting: number }> {
    if (!this.#jsm || this.#closing) throw new Error("queue: not started or closed");
    const info = await this.#jsm.consumers.info(this.#opts.stream, this.#opts.durable);
    return { ackPending: info.num_ack_pending, waiting: info.num_pending };
  }

  /** Stops the consumer if running, then drains and closes the connection. Idempotent, never rejects. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#starting?.catch(() => undefined);
    await this.#stop();
    const nc = this.#nc;
    if (!nc || nc.isClosed()) return;
    try {
      await nc.drain();
      this.#log.info("NATS connection drained and closed");
    } catch (err) {
      this.#log.warn({ err }, "draining the NATS connection failed");
      await nc.close().catch(() => undefined);
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
