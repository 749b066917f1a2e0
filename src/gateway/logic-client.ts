import type { DescService } from "@bufbuild/protobuf";
import { ChatService, type SendMessageRequest, type SendMessageResult } from "../gen/resonance/logic/v1/logic_pb.js";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { RegistryEntry } from "../infra/registry/types.js";
import type { Channels } from "../rpc/channels.js";

/**
 * Codes after which a call may go to another logic instance. UNAVAILABLE means the call was
 * refused before it ran, so any call may be retried; after the others the call may have run,
 * so only idempotent calls are retried (see `call`'s `idempotent`).
 */
const RETRYABLE_IF_IDEMPOTENT = new Set([Code.DeadlineExceeded, Code.Canceled, Code.ResourceExhausted]);
const ATTEMPTS = 4;

/**
 * Calls logic instances: round-robin over the serving ones (draining ones only when none
 * serves), from a static list or the registry. A call that fails with a retryable code is
 * retried on the next instance with a short backoff, so a logic restart is invisible to users.
 */
export class LogicClient {
  readonly #channels: Channels;
  /** Where calls go: the static list, or the registry's serving instances (draining ones only when none serves). */
  #pool: readonly string[];
  #next = 0;

  constructor(channels: Channels, addresses: readonly string[]) {
    this.#channels = channels;
    this.#pool = addresses;
  }

  /** Takes the registry's current logic instances (called on every change of the watch). */
  setInstances(entries: readonly RegistryEntry[]): void {
    const serving = entries.filter((e) => e.state === "serving").map((e) => e.address);
    this.#pool = serving.length > 0 ? serving : entries.map((e) => e.address);
  }

  /** The logic instances calls go to now (serving ones; draining ones only when none serves). */
  get addresses(): readonly string[] {
    return this.#pool;
  }

  /**
   * One SendMessages call to the instance at `address`, no retry (the chat dispatcher chooses
   * instances and moves refused batches itself). Resolves one result per item; rejects with the
   * call's error, without logic's response headers.
   */
  async sendMessages(address: string, items: SendMessageRequest[]): Promise<readonly SendMessageResult[]> {
    try {
      return (await this.#channels.client(ChatService, address).sendMessages({ items })).results;
    } catch (err) {
      const ce = ConnectError.from(err);
      throw new ConnectError(ce.rawMessage, ce.code);
    }
  }

  /**
   * Runs `fn` against one logic instance, retrying others on retryable errors (`idempotent`:
   * false for calls that must not run twice, such as creating a group). Rejects with the last
   * ConnectError.
   */
  async call<S extends DescService, T>(service: S, fn: (client: Client<S>) => Promise<T>, idempotent = true): Promise<T> {
    let lastErr: unknown = new ConnectError("no logic instance available", Code.Unavailable);
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const addresses = this.#pool;
      if (addresses.length > 0) {
        const address = addresses[this.#next++ % addresses.length]!;
        try {
          return await fn(this.#channels.client(service, address));
        } catch (err) {
          // A fresh error: the original carries logic's gRPC response headers, which must not
          // leak into the gateway's own responses.
          const ce = ConnectError.from(err);
          const clean = new ConnectError(ce.rawMessage, ce.code);
          if (ce.code !== Code.Unavailable && !(idempotent && RETRYABLE_IF_IDEMPOTENT.has(ce.code))) throw clean;
          lastErr = clean;
        }
      }
      await new Promise((r) => setTimeout(r, 50 * 2 ** attempt));
    }
    throw lastErr;
  }
}
