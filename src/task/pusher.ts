import { create } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import { PushRequestSchema, type PushMessage, type PushRequest, type PushService } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { Metrics } from "../observability/metrics.js";
import type { Logger } from "../observability/log.js";
import { takeBatch } from "../rpc/batch.js";

/** What a pusher needs of one gateway: its PushService (a gRPC client, or the gateway itself in process). */
export type PushClient = Pick<Client<typeof PushService>, "push" | "pushBatch">;

export interface PusherLimits {
  /** Most pushes in one call. */
  readonly maxBatch: number;
  /** Most (estimated) encoded bytes in one call; a larger push goes alone. */
  readonly maxBatchBytes: number;
  /** Beyond this many pushes waiting, {@link GatewayPusher.room} makes the producer wait. */
  readonly highWater: number;
  /** Most pushes waiting; beyond it the oldest are dropped (their recipients have them in their inbox). */
  readonly maxQueued: number;
  /** Most (estimated) bytes waiting, dropped the same way; default {@link DEFAULT_MAX_QUEUED_BYTES}. */
  readonly maxQueuedBytes?: number;
}

/** 20,000 pushes of 8,000-character messages to big groups would be over a gigabyte: bytes are bounded too. */
export const DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024;

/**
 * The gateway's gRPC server refuses bodies over 1 MiB: a batch stays well under it. The task
 * waits for room at the high-water mark (the events wait in the queue instead); dropping is
 * the last resort, for a producer that does not wait.
 */
export const DEFAULT_PUSHER_LIMITS: PusherLimits = { maxBatch: 1_024, maxBatchBytes: 256 * 1024, highWater: 4_096, maxQueued: 20_000 };

/** A failed or dropping pusher logs at most this often (with counts), so a dead gateway cannot flood the log. */
const WARN_INTERVAL_MS = 5_000;

interface Queued {
  readonly request: PushRequest;
  readonly bytes: number;
}

/**
 * Pushes to one gateway: a push goes out at once when no call to that gateway is in flight;
 * pushes that arrive meanwhile wait and go together in the next call (PushBatch), capped by count
 * and bytes. So an idle system adds no delay, and a busy one makes one call per gateway per round
 * trip instead of one per message. A failed call or a dropped push loses nothing: the recipients
 * catch up from their inbox.
 */
export class GatewayPusher {
  readonly #address: string;
  readonly #client: () => PushClient;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #limits: PusherLimits;
  #queue: Queued[] = [];
  #queuedBytes = 0;
  #sending: Promise<void> | undefined;
  /** Producers waiting for the queue to fall to the high-water mark. */
  #roomWaiters: Array<() => void> = [];
  /** False after a failed call, until a call succeeds. */
  #healthy = true;
  #failed = 0;
  #dropped = 0;
  #lastWarn = -Infinity;

  /** `client` is asked for the gateway's client at each call (a channel may be replaced meanwhile). */
  constructor(address: string, client: () => PushClient, metrics: Metrics, log: Logger, limits: PusherLimits = DEFAULT_PUSHER_LIMITS) {
    this.#address = address;
    this.#client = client;
    this.#metrics = metrics;
    this.#log = log;
    this.#limits = limits;
  }

  /** Pushes waiting to be sent (not counting the call in flight). */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Queues `message` for `toUsernames` on this gateway — or, with `toSessionMembers`, for every
   * member of its session connected there (a large session) — and sends at once if no call is in
   * flight. Never throws.
   */
  push(toUsernames: string[], message: PushMessage, toSessionMembers = false): void {
    const bytes = encodedSizeBound(toUsernames, message);
    this.#queue.push({ request: create(PushRequestSchema, { toUsernames, message, toSessionMembers }), bytes });
    this.#queuedBytes += bytes;
    const maxBytes = this.#limits.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    let excess = 0;
    // The oldest go first; the newest push always stays, whatever its size.
    while (this.#queue.length > 1 && (this.#queue.length > this.#limits.maxQueued || this.#queuedBytes > maxBytes)) {
      this.#queuedBytes -= this.#queue.shift()!.bytes;
      excess++;
    }
    if (excess > 0) {
      this.#metrics.pushes.inc({ outcome: "dropped" }, excess);
      this.#dropped += excess;
      this.#warn(undefined);
    }
    this.#sending ??= this.#drain();
  }

  /**
   * Resolves once at most `highWater` pushes wait (at once if so): a producer that awaits it
   * before taking more work slows to what the gateway takes instead of filling memory. A gateway
   * whose last call failed holds nobody back — its pushes fail anyway, and the queue's bound
   * drops the oldest. Never rejects.
   */
  room(): Promise<void> {
    if (!this.#healthy || this.#queue.length <= this.#limits.highWater) return Promise.resolve();
    return new Promise((resolve) => this.#roomWaiters.push(resolve));
  }

  /** Resolves when everything queued so far has been sent (or has failed); never rejects. */
  async flush(): Promise<void> {
    while (this.#sending) await this.#sending;
  }

  /** The next call's pushes: in order, at most `maxBatch` and `maxBatchBytes` (at least one). */
  #take(): PushRequest[] {
    return takeBatch(this.#queue, this.#limits.maxBatch, this.#limits.maxBatchBytes).map((q) => {
      this.#queuedBytes -= q.bytes;
      return q.request;
    });
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#take();
        if (this.#queue.length <= this.#limits.highWater) this.#wakeProducers();
        try {
          const client = this.#client();
          if (batch.length === 1) await client.push(batch[0]!);
          else await client.pushBatch({ pushes: batch });
          this.#metrics.pushes.inc({ outcome: "ok" }, batch.length);
          this.#healthy = true;
        } catch (err) {
          this.#metrics.pushes.inc({ outcome: "failed" }, batch.length);
          this.#failed += batch.length;
          this.#healthy = false;
          this.#wakeProducers();
          this.#warn(err);
        }
      }
    } finally {
      this.#sending = undefined;
      this.#wakeProducers();
    }
  }

  #wakeProducers(): void {
    for (const w of this.#roomWaiters.splice(0)) w();
  }

  /** One warn line per interval with what failed or was dropped since the last one. */
  #warn(err: unknown): void {
    const now = performance.now();
    if (now - this.#lastWarn < WARN_INTERVAL_MS) return;
    this.#lastWarn = now;
    this.#log.warn(
      { err, address: this.#address, failed: this.#failed, dropped: this.#dropped, queued: this.#queue.length },
      "pushes to a gateway failed or were dropped; their recipients will catch up from their inbox",
    );
    this.#failed = 0;
    this.#dropped = 0;
  }
}

/** Bytes of protobuf framing allowed per field: tag and length prefix. */
const FIELD_OVERHEAD = 6;

/**
 * An upper bound of the encoded size of one push, without encoding it (it is encoded once, by
 * the transport): the strings' UTF-8 bytes plus framing, and the fixed-size fields.
 */
export function encodedSizeBound(toUsernames: readonly string[], m: PushMessage): number {
  let bytes = 64; // the int64 and int32 fields, the nested messages' own framing
  for (const u of toUsernames) bytes += Buffer.byteLength(u) + FIELD_OVERHEAD;
  for (const s of [m.sessionId, m.fromUsername, m.toUsername, m.content, m.type]) bytes += Buffer.byteLength(s) + FIELD_OVERHEAD;
  if (m.sessionMeta) bytes += Buffer.byteLength(m.sessionMeta.name) + 2 * FIELD_OVERHEAD + 16;
  return bytes;
}
