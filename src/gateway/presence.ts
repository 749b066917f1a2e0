import { create } from "@bufbuild/protobuf";
import { PresenceService, UserOfflineSchema, UserOnlineSchema } from "../gen/resonance/logic/v1/logic_pb.js";
import type { Logger } from "../observability/log.js";
import type { LogicClient } from "./logic-client.js";

/** The longest a stop spends flushing presence. */
export const STOP_FLUSH_MS = 3_000;

/**
 * Reports users coming online and going offline on this gateway to logic, batched: a batch
 * goes when it is full or after `intervalMs`. Only the latest state of a user is sent. Every
 * `refreshMs` all connected users are re-sent so their routes do not expire. A failed batch is
 * merged back and retried.
 */
export class PresenceReporter {
  readonly #logic: LogicClient;
  readonly #gatewayId: string;
  readonly #opts: { batchSize: number; intervalMs: number; refreshMs: number };
  readonly #log: Logger;
  readonly #connected: () => Iterable<string>;
  readonly #pending = new Map<string, { online: boolean; ip: string; at: number }>();
  #timer: NodeJS.Timeout | undefined;
  #refresh: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #seq = 0n;
  #stopped = false;
  #lastFailed = false;

  constructor(
    logic: LogicClient,
    gatewayId: string,
    opts: { batchSize: number; intervalMs: number; refreshMs: number },
    connected: () => Iterable<string>,
    log: Logger,
  ) {
    this.#logic = logic;
    this.#gatewayId = gatewayId;
    this.#opts = opts;
    this.#connected = connected;
    this.#log = log;
  }

  start(): void {
    this.#refresh = setInterval(() => {
      for (const u of this.#connected()) if (!this.#pending.has(u)) this.#pending.set(u, { online: true, ip: "", at: Date.now() });
      this.#kick();
    }, this.#opts.refreshMs);
    this.#refresh.unref();
  }

  online(username: string, ip: string): void {
    this.#pending.set(username, { online: true, ip, at: Date.now() });
    this.#kick();
  }

  /**
   * Reports a user online at once (not waiting for the batch interval) and resolves when logic
   * has taken it; rejects if it could not be reported. The gateway awaits this before completing
   * a WebSocket upgrade, so a client whose socket is open is already a push target: anything
   * committed before is in the inbox delta it pulls next, anything after reaches the socket.
   */
  async onlineNow(username: string, ip: string): Promise<void> {
    const entry = { online: true, ip, at: Date.now() };
    this.#pending.set(username, entry);
    while (this.#pending.get(username) === entry) {
      await this.flush();
      if (this.#pending.get(username) === entry && this.#lastFailed) throw new Error("presence could not be reported");
    }
  }

  offline(username: string): void {
    this.#pending.set(username, { online: false, ip: "", at: Date.now() });
    this.#kick();
  }

  #kick(): void {
    if (this.#stopped) return;
    if (this.#pending.size >= this.#opts.batchSize) {
      void this.flush();
    } else if (!this.#timer) {
      this.#timer = setTimeout(() => void this.flush(), this.#opts.intervalMs);
    }
  }

  /** Sends everything pending; resolves when sent or failed (failures are kept for retry); never rejects. */
  async flush(): Promise<void> {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#flushing) await this.#flushing;
    if (this.#pending.size === 0) return;
    this.#flushing = this.#send().finally(() => (this.#flushing = undefined));
    await this.#flushing;
  }

  async #send(): Promise<void> {
    const batch = [...this.#pending.entries()].slice(0, this.#opts.batchSize);
    for (const [u] of batch) this.#pending.delete(u);
    const req = {
      seqId: ++this.#seq,
      gatewayId: this.#gatewayId,
      onlineBatch: batch.filter(([, s]) => s.online).map(([u, s]) => create(UserOnlineSchema, { username: u, remoteIp: s.ip, timestamp: BigInt(s.at) })),
      offlineBatch: batch.filter(([, s]) => !s.online).map(([u, s]) => create(UserOfflineSchema, { username: u, timestamp: BigInt(s.at) })),
    };
    try {
      await this.#logic.call(PresenceService, (c) => c.syncStatus(req));
      this.#lastFailed = false;
    } catch (err) {
      this.#lastFailed = true;
      // Newer states win over the failed ones.
      for (const [u, s] of batch) if (!this.#pending.has(u)) this.#pending.set(u, s);
      this.#log.warn({ err, users: batch.length }, "presence batch failed; will retry");
      if (!this.#stopped) this.#timer ??= setTimeout(() => void this.flush(), 1_000);
      return;
    }
    if (this.#pending.size > 0) this.#kick();
  }

  /**
   * Flushes what is pending (at most three tries, and at most {@link STOP_FLUSH_MS} in all: logic
   * may be stopping too) and stops; idempotent. What is left is not lost for good: routes expire
   * (RESONANCE_ROUTE_TTL), and a push to a gateway that is gone only fails.
   */
  async stop(): Promise<{ presenceFlushed: number }> {
    clearInterval(this.#refresh);
    const before = this.#pending.size;
    const deadline = Date.now() + STOP_FLUSH_MS;
    for (let i = 0; i < 3 && this.#pending.size > 0 && Date.now() < deadline; i++) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.flush(), new Promise((r) => (timer = setTimeout(r, deadline - Date.now())))]);
      clearTimeout(timer);
    }
    this.#stopped = true;
    clearTimeout(this.#timer);
    return { presenceFlushed: before - this.#pending.size };
  }
}
