import type { Ack } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { equalJitter, isRetryableCode, ResonanceError } from "./errors.js";
import type { Timer } from "./platform.js";

/** Resends after an `internal`/`unknown` ack before the send fails with that code. */
const MAX_FAULT_RETRIES = 5;

/**
 * Sends one encoded chat frame on the current connection if it is ready. Returns that
 * connection's generation, or undefined when nothing was sent (the frame waits for the
 * next `resendAll`).
 */
export type Transmit = (frame: Uint8Array) => number | undefined;

/** Called once per entry as it settles (for counters). */
export interface OutboxHooks {
  readonly onAcked?: (ack: Ack) => void;
  readonly onRejected?: (err: ResonanceError) => void;
}

export type AckOutcome = "acked" | "rejected" | "retrying" | "ignored";

interface Entry {
  readonly seq: string;
  readonly frame: Uint8Array;
  readonly promise: Promise<Ack>;
  readonly resolve: (ack: Ack) => void;
  readonly reject: (err: ResonanceError) => void;
  /** Generation of the connection the frame was last sent on; -1 while waiting to be sent. */
  sentGen: number;
  /** Order of the last transmission, to find the most recent frame of a connection. */
  sentOrder: number;
  retries: number;
  timer: Timer | undefined;
}

/**
 * Chats sent but not yet committed, keyed by their `seq` (the idempotency key). An entry
 * leaves only by a success ack (resolve), a non-retryable error (reject) or `rejectAll`.
 * Retryable ack errors keep it: it is resent with the same `seq` after a jittered backoff on
 * the same connection, and in any case by `resendAll` after a reconnect — resending a
 * committed `seq` only returns the original ack.
 */
export class Outbox {
  readonly #transmit: Transmit;
  readonly #retryBaseMs: number;
  readonly #retryMaxMs: number;
  readonly #detach: (timer: Timer) => void;
  readonly #entries = new Map<string, Entry>();
  #order = 0;

  readonly #hooks: OutboxHooks;

  /** `retry.detach` marks a retry timer as not keeping the process alive (Node's unref). */
  constructor(transmit: Transmit, retry: { baseMs: number; maxMs: number; detach?: (timer: Timer) => void }, hooks: OutboxHooks = {}) {
    this.#transmit = transmit;
    this.#hooks = hooks;
    this.#retryBaseMs = retry.baseMs;
    this.#retryMaxMs = retry.maxMs;
    this.#detach = retry.detach ?? (() => {});
  }

  get size(): number {
    return this.#entries.size;
  }

  /**
   * Queues a frame and sends it now if a connection is ready. The same `seq` while still
   * pending returns the pending promise (no second entry).
   */
  add(seq: string, frame: Uint8Array): Promise<Ack> {
    const existing = this.#entries.get(seq);
    if (existing) return existing.promise;
    let resolve!: (ack: Ack) => void;
    let reject!: (err: ResonanceError) => void;
    const promise = new Promise<Ack>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry: Entry = { seq, frame, promise, resolve, reject, sentGen: -1, sentOrder: 0, retries: 0, timer: undefined };
    this.#entries.set(seq, entry);
    this.#send(entry);
    return promise;
  }

  /**
   * Applies an ack received on connection `gen`. A retryable error is only acted on when it
   * answers the latest transmission (an old connection's late answer is ignored).
   */
  handleAck(ack: Ack, gen: number): AckOutcome {
    const entry = this.#entries.get(ack.refSeq);
    if (!entry) return "ignored";
    if (!ack.error && !ack.errorCode) {
      this.#remove(entry);
      this.#hooks.onAcked?.(ack);
      entry.resolve(ack);
      return "acked";
    }
    // A server fault (internal/unknown) may be deterministic: retried a few times, then reported.
    const gaveUp = (ack.errorCode === "internal" || ack.errorCode === "unknown") && entry.retries >= MAX_FAULT_RETRIES;
    if (!isRetryableCode(ack.errorCode) || gaveUp) {
      this.#remove(entry);
      this.#fail(entry, new ResonanceError(ack.errorCode, ack.error || ack.errorCode));
      return "rejected";
    }
    if (entry.sentGen !== gen) return "ignored";
    entry.sentGen = -1;
    // A shutdown answers `unavailable` and then closes: wait long enough that the reconnect
    // (which resends everything) usually comes first; rate limiting clears sooner.
    const base = ack.errorCode === "resource_exhausted" ? this.#retryBaseMs : Math.max(1_000, this.#retryBaseMs);
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      if (this.#entries.get(entry.seq) === entry && entry.sentGen === -1) this.#send(entry);
    }, equalJitter(entry.retries++, base, this.#retryMaxMs));
    this.#detach(entry.timer);
    return "retrying";
  }

  /** Sends every pending frame, oldest first, on the (new) ready connection. */
  resendAll(): void {
    for (const entry of this.#entries.values()) {
      clearTimeout(entry.timer);
      entry.timer = undefined;
      this.#send(entry);
    }
  }

  /**
   * After the server closed connection `gen` for a bad (1003) or oversized (1009) frame:
   * rejects the frame that most likely caused it — the largest (1009) or the most recent
   * (1003) sent on that connection and not acked. Returns the error, or undefined if none.
   */
  rejectCulprit(gen: number, closeCode: number): ResonanceError | undefined {
    let culprit: Entry | undefined;
    for (const e of this.#entries.values()) {
      if (e.sentGen !== gen) continue;
      const better = closeCode === 1009 ? e.frame.length > (culprit?.frame.length ?? -1) : e.sentOrder > (culprit?.sentOrder ?? -1);
      if (better) culprit = e;
    }
    if (!culprit) return undefined;
    this.#remove(culprit);
    const err = new ResonanceError("invalid_argument", `the gateway closed the connection with ${closeCode} after this message (${culprit.frame.length} bytes)`);
    this.#fail(culprit, err);
    return err;
  }

  /** Rejects every pending send with `err` and forgets them. */
  rejectAll(err: ResonanceError): void {
    const all = [...this.#entries.values()];
    for (const e of all) this.#remove(e);
    for (const e of all) this.#fail(e, err);
  }

  #fail(entry: Entry, err: ResonanceError): void {
    this.#hooks.onRejected?.(err);
    entry.reject(err);
  }

  #send(entry: Entry): void {
    const gen = this.#transmit(entry.frame);
    if (gen === undefined) return;
    entry.sentGen = gen;
    entry.sentOrder = ++this.#order;
  }

  #remove(entry: Entry): void {
    clearTimeout(entry.timer);
    this.#entries.delete(entry.seq);
  }
}
