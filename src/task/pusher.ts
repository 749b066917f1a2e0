import { create } from "@bufbuild/protobuf";
import { PushRequestSchema, PushService, type PushMessage, type PushRequest } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { Metrics } from "../observability/metrics.js";
import type { Logger } from "../observability/log.js";
import type { Channels } from "../rpc/channels.js";

/** Most pushes in one call. */
const MAX_BATCH = 256;

/**
 * Pushes to one gateway: a push goes out at once when no call to that gateway is in flight;
 * pushes that arrive meanwhile wait and go together in the next call (PushBatch). So an idle
 * system adds no delay, and a busy one makes one call per gateway per round trip instead of one
 * per message. A failed call loses nothing: the recipients catch up from their inbox.
 */
export class GatewayPusher {
  readonly #address: string;
  readonly #channels: Channels;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  #queue: PushRequest[] = [];
  #sending: Promise<void> | undefined;

  constructor(address: string, channels: Channels, metrics: Metrics, log: Logger) {
    this.#address = address;
    this.#channels = channels;
    this.#metrics = metrics;
    this.#log = log;
  }

  push(toUsernames: string[], message: PushMessage): void {
    this.#queue.push(create(PushRequestSchema, { toUsernames, message }));
    this.#sending ??= this.#drain();
  }

  /** Resolves when everything queued so far has been sent (or has failed); never rejects. */
  async flush(): Promise<void> {
    while (this.#sending) await this.#sending;
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        try {
          const client = this.#channels.client(PushService, this.#address);
          if (batch.length === 1) await client.push(batch[0]!);
          else await client.pushBatch({ pushes: batch });
          this.#metrics.pushes.inc({ outcome: "ok" }, batch.length);
        } catch (err) {
          this.#metrics.pushes.inc({ outcome: "failed" }, batch.length);
          this.#log.debug({ err, address: this.#address }, "push failed; recipients will catch up from their inbox");
        }
      }
    } finally {
      this.#sending = undefined;
    }
  }
}
