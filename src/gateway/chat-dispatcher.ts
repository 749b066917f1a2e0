import { Code, ConnectError } from "@connectrpc/connect";
import type { SendMessageRequest, SendMessageResult } from "../gen/resonance/logic/v1/logic_pb.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import { takeBatch } from "../rpc/batch.js";
import { codeName } from "../rpc/code-names.js";

/** Sends one batch of chats to the logic instance at `address`; resolves one result per item, in order. */
export type SendBatch = (address: string, items: SendMessageRequest[]) => Promise<readonly SendMessageResult[]>;

/** What a chat gets: its ids, or an error code name (`unavailable`, `permission_denied`, ...) and a short message. */
export type ChatOutcome = { readonly msgId: bigint; readonly seqId: bigint } | { readonly errorCode: string; readonly error: string };

export interface DispatcherLimits {
  /** Most chats in one call (logic takes at most 512). */
  readonly maxBatch: number;
  /** Most (estimated) encoded bytes in one call; a larger chat goes alone. Logic reads at most 1 MiB. */
  readonly maxBatchBytes: number;
  /** Most calls in flight to one logic instance. */
  readonly maxInFlight: number;
  /** Most chats waiting for a call; beyond it a chat is answered `resource_exhausted` at once. */
  readonly maxQueued: number;
  /**
   * While the oldest waiting chat has waited longer than this, the queue is standing (logic takes
   * less than arrives): a new chat is answered `resource_exhausted` at once, so the wait for an
   * ack stays bounded under overload instead of growing with the queue.
   */
  readonly maxQueueWaitMs: number;
  /** Calls one batch may take (moving to another instance after each refusal) before its chats get `unavailable`. */
  readonly attempts: number;
  /** First wait before an instance that refused is tried again (doubling per refusal, at most 2 s). */
  readonly backoffMs: number;
}

export const DEFAULT_DISPATCHER_LIMITS: DispatcherLimits = {
  maxBatch: 256,
  maxBatchBytes: 256 * 1024,
  maxInFlight: 2,
  maxQueued: 4096,
  maxQueueWaitMs: 1_000,
  attempts: 4,
  backoffMs: 50,
};

const MAX_BACKOFF_MS = 2_000;

/**
 * Whole-call failures after which the batch moves to another instance: refused (`unavailable`:
 * draining, connection refused) or cut off by the transport (the instance died mid-call).
 * Moving is safe either way: a chat that did commit is found by its client_msg_id.
 */
const MOVE = new Set([Code.Unavailable, Code.Canceled, Code.Aborted]);

interface Pending {
  readonly item: SendMessageRequest;
  /** When it was queued (the clock's time). */
  readonly at: number;
  readonly bytes: number;
  readonly resolve: (outcome: ChatOutcome) => void;
}

interface Batch {
  readonly chats: Pending[];
  /** Calls made so far (each refused with `unavailable`). */
  tries: number;
}

interface Instance {
  inFlight: number;
  /** Refusals in a row; reset by a call that goes through. */
  refusals: number;
  /** Not chosen before this time (performance.now()) while another instance can take the call. */
  coolUntil: number;
}

/**
 * The gateway's chats towards logic, batched per call (ChatService.SendMessages), in the
 * pattern of the task's GatewayPusher: while an instance has room (fewer than `maxInFlight`
 * calls), a chat goes at once — no timer, no added latency when idle; chats that arrive while
 * every instance is busy wait and go together in the next call, capped by count and bytes.
 * A call goes to the instance with the fewest calls in flight.
 *
 * A call refused as a whole with `unavailable` (a draining logic, a refused connection) ran
 * nothing: the WHOLE batch moves to another instance (every chat carries its client_msg_id, so
 * even a retry of a call that did run, cut off mid-way, is only a resend), and the refusing
 * instance cools down (backoff). Any other whole-call failure answers each chat `unavailable`
 * (retryable: the client resends the same seq), never `internal`. Per-chat errors go to that chat alone. The queue is bounded: beyond
 * `maxQueued` waiting chats, a new chat is answered `resource_exhausted` at once.
 */
export class ChatDispatcher {
  readonly #send: SendBatch;
  readonly #addresses: () => readonly string[];
  readonly #limits: DispatcherLimits;
  readonly #metrics: Metrics | undefined;
  readonly #log: Logger | undefined;
  readonly #instances = new Map<string, Instance>();
  /** Chats waiting for their first call, in arrival order. */
  #queue: Pending[] = [];
  /** Batches refused by an instance, waiting to be sent elsewhere (before any new chat). */
  readonly #moving: Batch[] = [];
  #queuedChats = 0;
  #inFlight = 0;
  #rotate = 0;
  /** Waits in a row with no logic instance known. */
  #noLogicWaits = 0;
  /** Set while work waits for an instance to cool down. */
  #wake: NodeJS.Timeout | undefined;
  #lastWarn = -Infinity;
  readonly #now: () => number;

  /**
   * `addresses` is read at every call: the logic instances to use now (the registry's serving
   * ones). `now` is the clock of queue waits (tests pass their own).
   */
  constructor(
    send: SendBatch,
    addresses: () => readonly string[],
    limits: Partial<DispatcherLimits> = {},
    metrics?: Metrics,
    log?: Logger,
    now: () => number = () => performance.now(),
  ) {
    this.#now = now;
    this.#send = send;
    this.#addresses = addresses;
    this.#limits = { ...DEFAULT_DISPATCHER_LIMITS, ...limits };
    this.#metrics = metrics;
    this.#log = log;
  }

  /** Chats waiting for a call (not counting those in flight). */
  get queued(): number {
    return this.#queuedChats;
  }

  /** Calls in flight, over every instance. */
  get callsInFlight(): number {
    return this.#inFlight;
  }

  /**
   * Sends one chat to logic; resolves with its outcome (never rejects). A full queue answers
   * `resource_exhausted` at once.
   */
  submit(item: SendMessageRequest): Promise<ChatOutcome> {
    const now = this.#now();
    const oldest = this.#queue[0];
    if (this.#queuedChats >= this.#limits.maxQueued || (oldest !== undefined && now - oldest.at > this.#limits.maxQueueWaitMs)) {
      this.#metrics?.chatsShed.inc({ reason: "queue" });
      return Promise.resolve({ errorCode: "resource_exhausted", error: "the server is busy; resend shortly" });
    }
    return new Promise<ChatOutcome>((resolve) => {
      this.#queue.push({ item, at: now, bytes: encodedSizeBound(item), resolve });
      this.#queuedChats++;
      this.#pump();
    });
  }

  /** Starts calls while there is work and an instance with room. */
  #pump(): void {
    while (this.#moving.length > 0 || this.#queue.length > 0) {
      const now = performance.now();
      const address = this.#pick(now);
      if (address === undefined) return this.#sleep(now);
      const batch = this.#moving.shift() ?? { chats: this.#take(), tries: 0 };
      this.#queuedChats -= batch.chats.length;
      void this.#call(address, batch);
    }
  }

  /**
   * The instance with the fewest calls in flight among those with room, cooled-down ones only if
   * no other has room; ties go round. Undefined when none can take a call now.
   */
  #pick(now: number): string | undefined {
    const addresses = this.#addresses();
    let best: string | undefined;
    let bestScore = Infinity;
    const n = addresses.length;
    for (let i = 0; i < n; i++) {
      const address = addresses[(this.#rotate + i) % n]!;
      const inst = this.#instance(address);
      if (inst.inFlight >= this.#limits.maxInFlight) continue;
      // A cooling instance is worse than any other with room; once cooled it is like the rest.
      const score = inst.inFlight + (inst.coolUntil > now ? this.#limits.maxInFlight + 1 : 0);
      if (score < bestScore) {
        best = address;
        bestScore = score;
      }
    }
    if (best === undefined) return undefined;
    this.#noLogicWaits = 0;
    const inst = this.#instances.get(best)!;
    // Every instance with room is cooling down: wait (the backoff) unless it is the only way.
    if (inst.coolUntil > now) return undefined;
    this.#rotate = (this.#rotate + 1) % Math.max(1, n);
    return best;
  }

  #instance(address: string): Instance {
    let inst = this.#instances.get(address);
    if (!inst) {
      if (this.#instances.size >= 64) this.#forgetGone();
      inst = { inFlight: 0, refusals: 0, coolUntil: 0 };
      this.#instances.set(address, inst);
    }
    return inst;
  }

  /** Drops the state of instances that left and have nothing in flight (addresses change with restarts). */
  #forgetGone(): void {
    const live = new Set(this.#addresses());
    for (const [address, inst] of this.#instances) if (!live.has(address) && inst.inFlight === 0) this.#instances.delete(address);
  }

  /**
   * Nothing can be sent now. With every instance cooling, the wait ends when the first one has
   * cooled; with none known, the waiting chats are answered `unavailable` after `attempts`
   * doubling waits (a registry briefly empty during a restart is ridden out). A call that ends
   * also pumps.
   */
  #sleep(now: number): void {
    if (this.#wake) return;
    const addresses = this.#addresses();
    let wait: number;
    if (addresses.length === 0) {
      wait = Math.min(MAX_BACKOFF_MS, this.#limits.backoffMs * 2 ** this.#noLogicWaits);
    } else {
      const withRoom = addresses.map((a) => this.#instance(a)).filter((i) => i.inFlight < this.#limits.maxInFlight);
      if (withRoom.length === 0) return; // every instance is busy: the next answer pumps
      wait = Math.max(1, Math.min(...withRoom.map((i) => i.coolUntil)) - now);
    }
    this.#wake = setTimeout(() => {
      this.#wake = undefined;
      if (this.#addresses().length === 0 && ++this.#noLogicWaits >= this.#limits.attempts) {
        this.#noLogicWaits = 0;
        this.#metrics?.chatBatches.inc({ outcome: "failed" });
        this.#warn(new ConnectError("no logic instance available", Code.Unavailable), undefined, this.#queuedChats);
        this.#answerWaiting({ errorCode: "unavailable", error: "no logic instance is available; resend shortly" });
      }
      this.#pump();
    }, wait);
  }

  /** Answers every chat not in flight. */
  #answerWaiting(outcome: ChatOutcome): void {
    const waiting = [...this.#moving.splice(0).flatMap((b) => b.chats), ...this.#queue.splice(0)];
    this.#queuedChats = 0;
    for (const chat of waiting) chat.resolve(outcome);
  }

  /** The next call's chats: in order, at most `maxBatch` and `maxBatchBytes` (at least one). */
  #take(): Pending[] {
    return takeBatch(this.#queue, this.#limits.maxBatch, this.#limits.maxBatchBytes);
  }

  async #call(address: string, batch: Batch): Promise<void> {
    const inst = this.#instance(address);
    inst.inFlight++;
    this.#inFlight++;
    batch.tries++;
    try {
      let results: readonly SendMessageResult[];
      try {
        results = await this.#send(address, batch.chats.map((c) => c.item));
      } catch (err) {
        const ce = ConnectError.from(err);
        if (MOVE.has(ce.code)) {
          inst.refusals++;
          inst.coolUntil = performance.now() + Math.min(MAX_BACKOFF_MS, this.#limits.backoffMs * 2 ** (inst.refusals - 1));
          return this.#refused(batch, ce);
        }
        this.#metrics?.chatBatches.inc({ outcome: "failed" });
        this.#warn(ce, address, batch.chats.length);
        return this.#answerAll(batch, { errorCode: "unavailable", error: "the message could not be stored now; resend" });
      }
      inst.refusals = 0;
      inst.coolUntil = 0;
      if (results.length !== batch.chats.length) {
        this.#metrics?.chatBatches.inc({ outcome: "failed" });
        this.#warn(new Error(`logic answered ${results.length} results for ${batch.chats.length} chats`), address, batch.chats.length);
        return this.#answerAll(batch, { errorCode: "unavailable", error: "the message could not be stored now; resend" });
      }
      this.#metrics?.chatBatches.inc({ outcome: "ok" });
      for (const [i, chat] of batch.chats.entries()) {
        const r = results[i]!;
        chat.resolve(r.errorCode === 0 ? { msgId: r.msgId, seqId: r.seqId } : { errorCode: codeName(r.errorCode), error: r.errorMessage.slice(0, 200) });
      }
    } finally {
      inst.inFlight--;
      this.#inFlight--;
      this.#pump();
    }
  }

  /** A whole batch refused: it moves (ahead of new chats) unless out of tries, then its chats get `unavailable`. */
  #refused(batch: Batch, err: ConnectError): void {
    if (batch.tries < this.#limits.attempts) {
      this.#metrics?.chatBatches.inc({ outcome: "moved" });
      this.#moving.push(batch);
      this.#queuedChats += batch.chats.length;
      return;
    }
    this.#metrics?.chatBatches.inc({ outcome: "failed" });
    this.#warn(err, undefined, batch.chats.length);
    this.#answerAll(batch, { errorCode: "unavailable", error: "no logic instance could take the message; resend" });
  }

  #answerAll(batch: Batch, outcome: ChatOutcome): void {
    for (const chat of batch.chats) chat.resolve(outcome);
  }

  /** At most one warn line per 5 s, so a dead logic cannot flood the log. */
  #warn(err: unknown, address: string | undefined, chats: number): void {
    const now = performance.now();
    if (now - this.#lastWarn < 5_000) return;
    this.#lastWarn = now;
    this.#log?.warn({ err, address, chats }, "a batch of chats failed; their senders were told to resend");
  }

  /** Answers every waiting chat `unavailable` and stops the wake timer (calls in flight still answer); idempotent. */
  close(): void {
    clearTimeout(this.#wake);
    this.#wake = undefined;
    this.#answerWaiting({ errorCode: "unavailable", error: "server is shutting down; resend after reconnecting" });
  }
}

/** Bytes of protobuf framing allowed per field: tag and length prefix. */
const FIELD_OVERHEAD = 6;

/** An upper bound of one chat's encoded size, without encoding it (the transport encodes it once). */
export function encodedSizeBound(r: SendMessageRequest): number {
  let bytes = 24; // the int64 timestamp and the item's own framing
  for (const s of [r.sessionId, r.fromUsername, r.toUsername, r.content, r.type, r.clientMsgId]) bytes += Buffer.byteLength(s) + FIELD_OVERHEAD;
  return bytes;
}
