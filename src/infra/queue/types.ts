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
}

/** A delivered event. Exactly one of ack / nak / deadLetter settles it. */
export interface DeliveredEvent {
  readonly id: string;
  readonly data: Uint8Array;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  /** Acknowledges and waits for the server's confirmation (ack-ack). */
  ack(): Promise<void>;
  /** Hands the event back for immediate redelivery (to this or another consumer). */
  nak(): void;
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

/** A durable consumer with explicit ack. */
export interface EventConsumer {
  /**
   * Starts delivering events to `handler`, at most `concurrency` at once. The handler settles each
   * event (ack/nak/deadLetter); if it throws, the event is nak'd. Resolves once consuming has begun.
   */
  consume(handler: (event: DeliveredEvent) => Promise<void>, concurrency: number): Promise<void>;
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
