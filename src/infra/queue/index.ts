import type { Logger } from "../../observability/log.js";
import { EmbeddedQueue } from "./embedded.js";
import { JetStreamQueue } from "./jetstream.js";
import { DEAD_LETTER_SUBJECT, PUSH_SUBJECT, type Queue } from "./types.js";

export type { ConsumerStats, DeliveredEvent, EventConsumer, EventPublisher, OutgoingEvent, Queue } from "./types.js";
export { DEAD_LETTER_SUBJECT, PUSH_SUBJECT } from "./types.js";
export { EmbeddedQueue, QueueUnavailableError, type DeadLetter } from "./embedded.js";
export { DEAD_LETTER_ID_HEADER, DEAD_LETTER_REASON_HEADER, JetStreamQueue } from "./jetstream.js";

export const DEFAULT_DURABLE = "resonance-task";
export const DEFAULT_STREAM = "RESONANCE_PUSH";

export interface QueueOptions {
  /** NATS URL (JetStream); unset selects the embedded in-process queue. */
  readonly natsUrl?: string | undefined;
  /** Connection name shown by NATS monitoring, e.g. `resonance-task-<instance>`. */
  readonly name: string;
  readonly log: Logger;
  /** Unacked deliveries are redelivered after this long (handlers call `working()` to extend). */
  readonly ackWaitMs: number;
  /** Durable consumer name (default {@link DEFAULT_DURABLE}). */
  readonly durable?: string | undefined;
  /** Stream name (default {@link DEFAULT_STREAM}). */
  readonly stream?: string | undefined;
  /**
   * Subjects (default {@link PUSH_SUBJECT} / {@link DEAD_LETTER_SUBJECT}). Streams may not share
   * subjects, so tests that make their own stream also pick their own subjects.
   */
  readonly subjects?: { readonly push: string; readonly deadLetter: string } | undefined;
  /** The NATS server's `jetstream.sync_interval` (0: it syncs every write; default 2 minutes, as nats-server). */
  readonly syncIntervalMs?: number | undefined;
}

/**
 * Picks the queue: JetStream when `natsUrl` is set, else the embedded one. Does no I/O; `start()`
 * connects and sets up the stream and consumer, `close()` is idempotent.
 */
export function createQueue(opts: QueueOptions): Queue {
  if (!opts.natsUrl) return new EmbeddedQueue({ log: opts.log, ackWaitMs: opts.ackWaitMs });
  return new JetStreamQueue({
    natsUrl: opts.natsUrl,
    name: opts.name,
    log: opts.log,
    ackWaitMs: opts.ackWaitMs,
    durable: opts.durable ?? DEFAULT_DURABLE,
    stream: opts.stream ?? DEFAULT_STREAM,
    subjects: opts.subjects ?? { push: PUSH_SUBJECT, deadLetter: DEAD_LETTER_SUBJECT },
    ...(opts.syncIntervalMs !== undefined ? { syncIntervalMs: opts.syncIntervalMs } : {}),
  });
}
