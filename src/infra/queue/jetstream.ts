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
import type { ConsumerStats, DeliveredEvent, EventConsumer, EventPublisher, OutgoingEvent, Queue } from "./types.js";

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
}

/** Header carrying the reason on a dead-lettered event. */
export const DEAD_LETTER_REASON_HEADER = "Resonance-Dead-Reason";
/** Header carrying the original event id on a dead-lettered event. */
export const DEAD_LETTER_ID_HEADER = "Resonance-Event-Id";

const PUBLISH_WINDOW = 512;
const DUPLICATE_WINDOW_MS = 120_000;
/** Lifetime of one pull request: bounds how long stop() waits, and the idle polling rate. */
const FETCH_EXPIRES_MS = 1_000;

interface Session {
  readonly running: Set<Promise<void>>;
  /** Interrupts the back-off between failed fetches. */
  readonly abort: AbortController;
  stopping: boolean;
  wake: (() => void) | undefined;
  loop: Promise<void>;
  stopped?: Promise<ConsumerStats>;
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
  readonly publisher: EventPublisher = { publish: (events) => this.#publish(events) };
  readonly consumer: EventConsumer = {
    consume: (handler, concurrency) => this.#consume(handler, concurrency),
    stop: () => this.#stop(),
    stats: () => ({ ...this.#stats }),
    pending: () => this.#pending(),
  };
  readonly #opts: JetStreamQueueOptions;
  readonly #log: Logger;
  readonly #stats: ConsumerStats = { acked: 0, naked: 0 };
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
    this.#log = opts.log.child({ component: "queue", kind: "jetstream", stream: opts.stream });
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
      nc = await connect({ servers, name: this.#opts.name, maxReconnectAttempts: -1, reconnectTimeWait: 1_000 });
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

  async #consume(handler: (event: DeliveredEvent) => Promise<void>, concurrency: number): Promise<void> {
    const js = this.#client();
    if (this.#session) throw new Error("queue: already consuming");
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error(`queue: invalid concurrency ${concurrency}`);
    const consumer = await js.consumers.get(this.#opts.stream, this.#opts.durable);
    const session: Session = { running: new Set(), stopping: false, wake: undefined, abort: new AbortController(), loop: Promise.resolve() };
    this.#session = session;
    session.loop = this.#loop(session, consumer, js, handler, concurrency);
    this.#log.info({ durable: this.#opts.durable, concurrency }, "consuming");
  }

  /** Resolves when fewer than `concurrency` handlers run, or at stop. */
  async #slot(session: Session, concurrency: number): Promise<void> {
    while (session.running.size >= concurrency && !session.stopping) {
      await new Promise<void>((resolve) => (session.wake = resolve));
    }
  }

  /**
   * Fetch loop rather than `consume()`: a fetch is one pull request that ends by itself (batch
   * filled or {@link FETCH_EXPIRES_MS} passed), and stop() lets the current one end while naking
   * what it brings. Closing a subscription with a pull request still open would strand the
   * messages the server is sending until their ack wait runs out.
   */
  async #loop(
    session: Session,
    consumer: Consumer,
    js: JetStreamClient,
    handler: (event: DeliveredEvent) => Promise<void>,
    concurrency: number,
  ): Promise<void> {
    let failures = 0;
    while (!session.stopping) {
      await this.#slot(session, concurrency);
      if (session.stopping) break;
      try {
        // Up to `concurrency` more than run now wait here, fetched but not started.
        const batch = 2 * concurrency - session.running.size;
        const messages = await consumer.fetch({ max_messages: batch, expires: FETCH_EXPIRES_MS });
        for await (const msg of messages) {
          await this.#slot(session, concurrency);
          if (session.stopping) {
            msg.nak();
            this.#stats.naked++;
            continue;
          }
          const run = this.#handle(this.#wrap(msg, js), handler).finally(() => {
            session.running.delete(run);
            session.wake?.();
          });
          session.running.add(run);
        }
        failures = 0;
      } catch (err) {
        if (session.stopping) break;
        if (this.#nc?.isClosed()) {
          this.#log.error({ err }, "NATS connection closed; no longer consuming");
          break;
        }
        failures++;
        this.#log.warn({ err, failures }, "fetching from JetStream failed; retrying");
        await sleep(Math.min(500 * failures, 5_000), undefined, { signal: session.abort.signal }).catch(() => undefined);
      }
    }
  }

  /** Runs the handler; an event it leaves unsettled (by throwing or not) is nak'd. Never rejects. */
  async #handle(event: DeliveredEvent & { settled(): boolean }, handler: (event: DeliveredEvent) => Promise<void>): Promise<void> {
    try {
      await handler(event);
    } catch (err) {
      if (!event.settled()) {
        this.#log.warn({ err, id: event.id, deliveryCount: event.deliveryCount }, "handler failed; event nak'd");
        event.nak();
      }
      return;
    }
    if (!event.settled()) {
      this.#log.warn({ id: event.id }, "handler returned without settling the event; nak'd");
      event.nak();
    }
  }

  /** The event handed to the handler: the first of ack / nak / deadLetter settles it, later calls are no-ops. */
  #wrap(msg: JsMsg, js: JetStreamClient): DeliveredEvent & { settled(): boolean } {
    let settled = false;
    const id = msg.headers?.get("Nats-Msg-Id") || `seq-${msg.seq}`;
    const ackAck = async (): Promise<void> => {
      if (!(await msg.ackAck())) throw new Error(`queue: ack of ${id} not confirmed`);
      this.#stats.acked++;
    };
    return {
      id,
      data: msg.data,
      deliveryCount: msg.info.deliveryCount,
      settled: () => settled,
      ack: async () => {
        if (settled) return;
        settled = true;
        await ackAck();
      },
      nak: () => {
        if (settled) return;
        settled = true;
        msg.nak();
        this.#stats.naked++;
      },
      working: () => {
        if (!settled) msg.working();
      },
      deadLetter: async (reason: string) => {
        if (settled) return;
        settled = true;
        try {
          const h = headers();
          h.set(DEAD_LETTER_REASON_HEADER, reason.replace(/[\r\n]+/g, " ").slice(0, 1024));
          h.set(DEAD_LETTER_ID_HEADER, id);
          // Its own msgID: dedup is per stream, and the event's id is already in the window.
          await js.publish(this.#opts.subjects.deadLetter, msg.data, { msgID: `dead.${id}`, headers: h });
        } catch (err) {
          settled = false; // not moved: let the caller (or the handler wrapper) nak it
          throw err;
        }
        this.#log.error({ id, reason, deliveryCount: msg.info.deliveryCount }, "event dead-lettered");
        await ackAck();
      },
    };
  }

  /**
   * Stops pulling, naks what was fetched but not started (including what the open pull request
   * still brings, so it may take up to {@link FETCH_EXPIRES_MS}), awaits running handlers — a
   * handler that never returns keeps it pending, so bound it with the shutdown deadline. Idempotent.
   */
  #stop(): Promise<ConsumerStats> {
    const session = this.#session;
    if (!session) return Promise.resolve({ ...this.#stats });
    session.stopped ??= (async () => {
      session.stopping = true;
      session.abort.abort();
      session.wake?.();
      // The current fetch ends within FETCH_EXPIRES_MS; the loop naks what it still brings.
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
