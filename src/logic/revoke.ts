import { PushService } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { Registry, RegistryWatch } from "../infra/registry/types.js";
import type { Logger } from "../observability/log.js";
import { Channels } from "../rpc/channels.js";
import type { LocalServers } from "../rpc/in-process.js";

/** How long one gateway may take to confirm a revocation. */
const CALL_TIMEOUT_MS = 2_000;

export interface Revocation {
  /** Tokens revoked one by one (Logout). */
  readonly accessTokens?: readonly string[];
  /** Users whose every token was revoked (LogoutAll). */
  readonly usernames?: readonly string[];
}

/**
 * Tells every gateway (found in the registry, serving or draining) that tokens were revoked, so
 * that each one refuses them at once (instead of trusting its validation cache) and closes their
 * sockets. The database is the truth either way: a gateway that misses the call refuses the
 * token once its cached validation lapses (30 s).
 */
export class RevocationNotifier {
  readonly #registry: Registry;
  readonly #channels: Channels;
  readonly #log: Logger;
  #watch: RegistryWatch | undefined;
  /** Gateway addresses seen, so the channel to one that left is dropped. */
  #known = new Set<string>();

  /** `local`: the servers of this process (`all`), called without a socket. */
  constructor(registry: Registry, secret: string | undefined, log: Logger, local?: LocalServers) {
    this.#registry = registry;
    this.#channels = new Channels({ timeoutMs: CALL_TIMEOUT_MS, secret, local });
    this.#log = log;
  }

  /** Starts following the registry's gateways. */
  async start(): Promise<void> {
    this.#watch = await this.#registry.watch("gateway", (entries) => {
      const live = new Set(entries.map((e) => e.address));
      for (const a of this.#known) if (!live.has(a)) this.#channels.forget(a);
      this.#known = live;
    });
    this.#known = new Set(this.#watch.entries().map((e) => e.address));
  }

  /**
   * Sends the revocation to every gateway in parallel; resolves when each has answered or failed
   * (at most {@link CALL_TIMEOUT_MS}) with how many confirmed it. Never rejects; failures are
   * logged at warn.
   */
  async notify(r: Revocation): Promise<{ reached: number; failed: number }> {
    const addresses = this.#watch?.entries().map((e) => e.address) ?? [];
    const request = { accessTokens: [...(r.accessTokens ?? [])], usernames: [...(r.usernames ?? [])] };
    const results = await Promise.allSettled(addresses.map((a) => this.#channels.client(PushService, a).revoke(request)));
    const failed = results.flatMap((x, i) => (x.status === "rejected" ? [{ gateway: addresses[i], err: (x.reason as Error).message }] : []));
    if (failed.length > 0) {
      this.#log.warn({ failed }, "a gateway did not confirm a token revocation; it refuses the token when its cache lapses");
    }
    return { reached: addresses.length - failed.length, failed: failed.length };
  }

  /** Stops following the registry and closes the channels; idempotent. */
  async close(): Promise<void> {
    await this.#watch?.close();
    this.#watch = undefined;
    this.#channels.close();
  }
}
