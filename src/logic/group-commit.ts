import { Code, ConnectError } from "@connectrpc/connect";
import type { Logger } from "../observability/log.js";
import type { CommitOutcome, CommittedEvent, LogicStore, NewMessage } from "./store.js";

export interface GroupCommitOptions {
  /** Most messages in one statement (PGlite runs on the event loop: keep it small there for p99). */
  readonly maxBatch: number;
  /** Statements in flight at once (1 is enough for one connection; 2 overlaps a round trip). */
  readonly maxInFlight: number;
  /** Messages waiting for a statement; beyond this a message is refused with resource_exhausted. */
  readonly maxQueued: number;
  /** How long the new outbox rows stay claimed for the fast path before the poller may take them. */
  readonly claimMs: number;
  /** Who claims them: the instance id. */
  readonly owner: string;
}

/** What happens to what was committed: the relay's fast path and the metrics. */
export type CommitListener = (events: readonly CommittedEvent[]) => void;

interface Waiting {
  readonly message: NewMessage;
  readonly resolve: (outcome: CommitOutcome) => void;
  readonly reject: (err: unknown) => void;
}

/** A statement that rolled back because of a concurrent commit: the same batch again succeeds. */
const RETRYABLE = new Set(["23505", "40P01", "40001"]);
const MAX_TRIES = 4;

function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * A failure that one row may have caused (a value the database refuses): worth splitting the batch
 * for. Not a lost connection, a timeout, a shutdown or a lack of resources — those would fail
 * every half alike.
 */
function maybeOneRow(err: unknown): boolean {
  const state = sqlState(err);
  return state !== undefined && !RETRYABLE.has(state) && !/^(08|53|57|58|XX)/.test(state);
}

/**
 * Group commit (the pattern of `src/task/pusher.ts`): messages queue here; when a statement slot
 * is free, everything queued (up to `maxBatch`) goes in one statement at once — no timer, so an
 * idle server adds no latency — and what arrives while statements run goes together in the next.
 * Each message gets its own outcome; a concurrent duplicate or a deadlock retries the batch; a
 * failure a row may have caused splits the batch in halves until the bad row is answered alone.
 */
export class GroupCommit {
  readonly #store: LogicStore;
  readonly #opts: GroupCommitOptions;
  readonly #onCommit: CommitListener;
  readonly #log: Logger;
  #queue: Waiting[] = [];
  #inFlight = 0;
  /** Sessions of the statements in flight. */
  readonly #busy = new Set<string>();
  #scheduled = false;

  constructor(store: LogicStore, opts: GroupCommitOptions, onCommit: CommitListener, log: Logger) {
    this.#store = store;
    this.#opts = opts;
    this.#onCommit = onCommit;
    this.#log = log;
  }

  /** Messages waiting for a statement, and statements running. */
  get load(): { queued: number; inFlight: number } {
    return { queued: this.#queue.length, inFlight: this.#inFlight };
  }

  /**
   * Commits the messages: resolves with one outcome each, in order, once the statement that holds
   * it has committed (a Committed, or the ConnectError to answer that message with). Rejects only
   * when the database failed the whole batch (not any one message's fault).
   */
  submit(messages: readonly NewMessage[]): Promise<CommitOutcome[]> {
    return Promise.all(
      messages.map(
        (message) =>
          new Promise<CommitOutcome>((resolve, reject) => {
            if (this.#queue.length >= this.#opts.maxQueued) {
              resolve(new ConnectError("logic is overloaded; try again", Code.ResourceExhausted));
              return;
            }
            this.#queue.push({ message, resolve, reject });
            this.#pump();
          }),
      ),
    );
  }

  /**
   * The next batch: queued chats in order, up to `maxBatch`, leaving out every session that a
   * statement in flight holds — and, once one chat of a session is left out, the later ones of
   * that session too. So two statements never hold one session, and a session's chats commit in
   * the order they were submitted (seq order = arrival order within this instance).
   */
  #take(): Waiting[] {
    const batch: Waiting[] = [];
    const rest: Waiting[] = [];
    const held = new Set(this.#busy);
    for (const w of this.#queue) {
      const id = w.message.sessionId;
      if (batch.length < this.#opts.maxBatch && !held.has(id)) batch.push(w);
      else {
        rest.push(w);
        held.add(id);
      }
    }
    this.#queue = rest;
    return batch;
  }

  /** Schedules a statement if a slot is free (after the current I/O turn, so one read's calls go together). */
  #pump(): void {
    if (this.#scheduled || this.#queue.length === 0 || this.#inFlight >= this.#opts.maxInFlight) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      while (this.#queue.length > 0 && this.#inFlight < this.#opts.maxInFlight) {
        const batch = this.#take();
        if (batch.length === 0) break; // every queued chat waits for a session in flight
        const sessions = new Set(batch.map((w) => w.message.sessionId));
        for (const id of sessions) this.#busy.add(id);
        this.#inFlight++;
        void this.#run(batch).finally(() => {
          for (const id of sessions) this.#busy.delete(id);
          this.#inFlight--;
          this.#pump();
        });
      }
    });
  }

  async #run(batch: readonly Waiting[]): Promise<void> {
    // A repeat of a client id within the batch is answered from its first occurrence.
    const first = new Map<string, number>();
    const unique: Waiting[] = [];
    const repeatOf: Array<number | undefined> = [];
    for (const w of batch) {
      const m = w.message;
      const key = m.clientMsgId === undefined ? undefined : `${m.from}\u0000${m.sessionId}\u0000${m.clientMsgId}`;
      const at = key === undefined ? undefined : first.get(key);
      repeatOf.push(at);
      if (at === undefined) {
        if (key !== undefined) first.set(key, unique.length);
        unique.push(w);
      }
    }
    let outcomes: CommitOutcome[];
    try {
      outcomes = await this.#commit(unique.map((w) => w.message));
    } catch (err) {
      for (const w of batch) w.reject(err);
      return;
    }
    let u = 0;
    for (const [i, w] of batch.entries()) {
      const at = repeatOf[i];
      const outcome = at === undefined ? outcomes[u++]! : outcomes[at]!;
      if (at === undefined || outcome instanceof ConnectError) w.resolve(outcome);
      else if (!sameMessage(w.message, unique[at]!.message)) w.resolve(new ConnectError("client_msg_id was already used for a different message", Code.AlreadyExists));
      else w.resolve({ ...outcome, created: false });
    }
  }

  /**
   * One statement for `messages`, retried after a concurrent duplicate or a deadlock, split in
   * halves after a failure a row may have caused. Resolves with an outcome per message (a row that
   * fails alone gets invalid_argument for a value the database refuses, else internal); rejects when
   * the whole batch failed for a reason no split can help.
   */
  async #commit(messages: readonly NewMessage[]): Promise<CommitOutcome[]> {
    if (messages.length === 0) return [];
    for (let tries = 1; ; tries++) {
      try {
        const r = await this.#store.commitBatch(messages, this.#opts.claimMs, this.#opts.owner);
        if (r.events.length > 0) this.#onCommit(r.events);
        return r.outcomes;
      } catch (err) {
        const state = sqlState(err);
        if (state !== undefined && RETRYABLE.has(state) && tries < MAX_TRIES) continue;
        if (!maybeOneRow(err)) throw err;
        if (messages.length === 1) {
          this.#log.warn({ err, sqlState: state }, "a message the database refused; answered alone");
          return [
            state!.startsWith("22")
              ? new ConnectError("invalid input: a value the database cannot store", Code.InvalidArgument)
              : new ConnectError("internal error", Code.Internal),
          ];
        }
        const half = Math.ceil(messages.length / 2);
        return [...(await this.#commit(messages.slice(0, half))), ...(await this.#commit(messages.slice(half)))];
      }
    }
  }
}

function sameMessage(a: NewMessage, b: NewMessage): boolean {
  return a.content === b.content && a.type === b.type && a.to === b.to;
}
