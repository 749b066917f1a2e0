/** One event on its way from logic's outbox relay to task. */
export interface OutgoingEvent {
  /** Deduplication id (the msg_id): publishing the same id twice delivers it once. */
  readonly id: string;
  readonly data: Uint8Array;
}

/** Publishes events durably. */
export interface EventPublisher {
  /**
   * Resolves when every event is durably accepted (JetStream: publish ack; embedded: handled and
   * acked by the consumer). Rejects if any is not; the caller retries the whole batch (dedup by id).
   */
  publish(events: readonly OutgoingEvent[]): Promise<void>;
  /**
   * How long after a publish ack the server may still lose the event in an operating-system crash
   * (it has not written it to disk yet): 0 when an ack means it is safe. The caller keeps its own
   * copy that long.
   */
  readonly unsyncedMs: number;
  /**
   * Which server acknowledges publishes now: a new value after the server restarted (JetStream:
   * the connected server's id, new at every start; "unknown" while not connected). Events acked
   * by another server within {@link unsyncedMs} may be lost and are published again.
   */
  destination(): string;
}

/** A delivered event. Exactly one of ack / nak / deadLetter settles it. */
export interface DeliveredEvent {
  readonly id: string;
  readonly data: Uint8Array;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  /** Acknowledges and waits for the server's confirmation (ack-ack). */
  ack(): Promise<void>;
  /**
   * Hands the event back for redelivery (to this or another consumer): at once, or after
   * `delayMs` (a back-off for an event whose handling failed for a reason that may pass).
   */
  nak(delayMs?: number): void;
  /** Tells the server the handler is still working, so it is not redelivered meanwhile. */
  working(): void;
  /** Moves an event that can never be handled to the dead-letter subject, then acks it. */
  deadLetter(reason: string): Promise<void>;
}

export interface ConsumerStats {
  /** Events acked (including dead-lettered) since start. */
  acked: number;
  /** Events handed back with nak since start (including those nak'd by stop()). */
  naked: number;
}

export interface BatchOptions {
  /** Most events handed to the handler in one call (≥ 1). */
  readonly maxBatch: number;
  /** Most handler calls running at once (≥ 1, default 1). */
  readonly inFlight?: number;
}

/** A handler of a batch: it settles each event on its own (ack / nak / deadLetter, or {@link EventConsumer.ackAll}). */
export type BatchHandler = (events: readonly DeliveredEvent[]) => Promise<void>;

/** A durable consumer with explicit ack. */
export interface EventConsumer {
  /**
   * Starts delivering events to `handler`, at most `concurrency` at once. The handler settles each
   * event (ack/nak/deadLetter); if it throws, the event is nak'd. Resolves once consuming has begun.
   * The same as {@link consumeBatches} with batches of one and `concurrency` of them in flight.
   */
  consume(handler: (event: DeliveredEvent) => Promise<void>, concurrency: number): Promise<void>;
  /**
   * Starts delivering events in batches: whatever arrived while the previous batches ran, up to
   * `maxBatch` per call, at most `inFlight` calls at once; an event arriving while a call slot is
   * free goes out at once, without waiting for company. Each event is settled on its own; the
   * events a handler leaves unsettled — because it threw or returned — are nak'd, one by one, so a
   * poison event can be dead-lettered alone while the rest of its batch is acked. At most
   * `maxBatch × (inFlight + 1)` events are delivered to this consumer and not yet settled (the
   * ones beyond those running wait here, fetched but not started). Resolves once consuming has begun.
   */
  consumeBatches(handler: BatchHandler, opts: BatchOptions): Promise<void>;
  /**
   * Acks every event of `events` not settled yet, with one confirmation: resolves once the server
   * has confirmed all of them (JetStream: plain acks, then one ack-ack on the same connection,
   * which the server answers only after the acks before it). Rejects if the confirmation fails —
   * the events count as settled either way, and any ack that did not land brings its event back
   * after the ack wait, which the handler must absorb (it does: handling is idempotent).
   */
  ackAll(events: readonly DeliveredEvent[]): Promise<void>;
  /**
   * Stops pulling; events fetched but not yet handed to the handler are nak'd; resolves when the
   * running handlers have finished. Idempotent.
   */
  stop(): Promise<ConsumerStats>;
  stats(): ConsumerStats;
  /** Events delivered and not yet acked, and events waiting (server view for JetStream). */
  pending(): Promise<{ ackPending: number; waiting: number }>;
}

/** One connection's worth of queue: JetStream (NATS) or the embedded in-process queue. */
export interface Queue {
  readonly kind: "jetstream" | "embedded";
  /** Connects and makes sure the stream and the durable consumer exist. */
  start(): Promise<void>;
  readonly publisher: EventPublisher;
  readonly consumer: EventConsumer;
  /** Resolves when the connection is closed for good (not by close()); never rejects. */
  readonly lost: Promise<Error>;
  /** Stops the consumer if running, drains and closes the connection. Idempotent. */
  close(): Promise<void>;
}

export const PUSH_SUBJECT = "resonance.push.event.v1";
export const DEAD_LETTER_SUBJECT = "resonance.push.dead.v1";
