import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../observability/log.js";

/** Why a gateway cannot serve: no logic instance known, none answering, or they refuse its secret. */
export type LogicTrouble = "no-logic" | "unreachable" | "secret-mismatch";

export interface LogicReadinessOptions {
  /**
   * One cheap authenticated call to the logic instance at `address` (host:port); resolves when
   * logic answered, whatever it answered, rejects with the call's error.
   */
  readonly probe: (address: string) => Promise<void>;
  readonly log: Logger;
  /** Time between probes while every instance fails (default 2 s); while one answers, 5× that. */
  readonly intervalMs?: number;
}

/** What the gateway tells a client while logic refuses its internal secret (non-retryable: an operator must act). */
export const SECRET_MISMATCH_MESSAGE =
  "this gateway is misconfigured: logic refuses its internal secret (RESONANCE_INTERNAL_SECRET must be the same on every instance)";

/**
 * Whether the gateway can call logic. It probes the logic instances it knows (at start, whenever
 * the set changes, then periodically) and is ready while at least one answers. A cause of
 * trouble is logged once when it starts and once when it ends, not on every probe.
 */
export class LogicReadiness {
  readonly #opts: LogicReadinessOptions;
  #addresses: readonly string[] = [];
  #trouble: { cause: LogicTrouble; detail: string } | undefined = { cause: "no-logic", detail: "not probed yet" };
  /** The cause last logged: each is logged when it starts and when it ends, not on every probe. */
  #logged: LogicTrouble | undefined;
  #timer: NodeJS.Timeout | undefined;
  #probing: Promise<void> | undefined;
  #again = false;
  #stopped = false;

  constructor(opts: LogicReadinessOptions) {
    this.#opts = opts;
  }

  /** True while at least one logic instance answered the last probe. */
  get ready(): boolean {
    return this.#trouble === undefined;
  }

  /** The current trouble, or undefined when ready. */
  get trouble(): { readonly cause: LogicTrouble; readonly detail: string } | undefined {
    return this.#trouble;
  }

  /** Takes the logic instances to probe (a static list, or the registry's on every change) and probes them now. */
  setAddresses(addresses: readonly string[]): void {
    this.#addresses = [...addresses];
    void this.check();
  }

  /** Starts the periodic probe; resolves when the first probe is done (never rejects). */
  start(): Promise<void> {
    this.#stopped = false;
    return this.check();
  }

  /** Probes now (a probe in flight is followed by one more). Resolves when done; never rejects. */
  check(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#probing) {
      this.#again = true;
      return this.#probing;
    }
    this.#probing = this.#probeAll().finally(() => {
      this.#probing = undefined;
      if (this.#again) {
        this.#again = false;
        void this.check();
      } else this.#schedule();
    });
    return this.#probing;
  }

  /** Stops probing; idempotent. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }

  #schedule(): void {
    clearTimeout(this.#timer);
    if (this.#stopped) return;
    const every = this.#opts.intervalMs ?? 2_000;
    this.#timer = setTimeout(() => void this.check(), this.ready ? every * 5 : every);
    this.#timer.unref();
  }

  async #probeAll(): Promise<void> {
    const addresses = this.#addresses;
    if (addresses.length === 0) return this.#set({ cause: "no-logic", detail: "no logic instance is registered (is logic running, with the same RESONANCE_NAMESPACE and etcd?)" });
    const results = await Promise.allSettled(addresses.map((a) => this.#opts.probe(a)));
    if (results.some((r) => r.status === "fulfilled")) return this.#set(undefined);
    const refused = results.findIndex((r) => r.status === "rejected" && ConnectError.from(r.reason).code === Code.Unauthenticated);
    if (refused >= 0) return this.#set({ cause: "secret-mismatch", detail: `logic at ${addresses[refused]} refuses this gateway's RESONANCE_INTERNAL_SECRET` });
    const first = results[0] as PromiseRejectedResult;
    this.#set({ cause: "unreachable", detail: `cannot call logic at ${addresses.join(", ")}: ${ConnectError.from(first.reason).rawMessage}` });
  }

  #set(trouble: { cause: LogicTrouble; detail: string } | undefined): void {
    this.#trouble = trouble;
    if (trouble && trouble.cause !== this.#logged) {
      this.#logged = trouble.cause;
      this.#opts.log.warn({ cause: trouble.cause }, `gateway not ready: ${trouble.detail}`);
    } else if (!trouble && this.#logged) {
      this.#opts.log.info({ was: this.#logged }, "gateway ready again: logic answers");
      this.#logged = undefined;
    }
  }
}
