import { create, fromBinary } from "@bufbuild/protobuf";
import { PushMessageSchema, PushService, SessionMetaSchema, type PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { PushEventSchema, type PushEvent } from "../gen/resonance/mq/v1/mq_pb.js";
import type { Config } from "../config/config.js";
import type { DeliveredEvent, Queue } from "../infra/queue/types.js";
import type { Registry, RegistryEntry, RegistryWatch } from "../infra/registry/types.js";
import type { RouteTable } from "../infra/routes/types.js";
import type { Storage } from "../infra/storage/types.js";
import type { Faults } from "../lifecycle/faults.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import { Channels } from "../rpc/channels.js";
import type { LocalServers } from "../rpc/in-process.js";
import { writeInboxFront } from "./inbox.js";
import { GatewayPusher, type PushClient } from "./pusher.js";

export interface TaskDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly storage: Storage;
  readonly queue: Queue;
  readonly routes: RouteTable;
  readonly registry: Registry;
  readonly faults: Faults;
  /**
   * The PushService of the gateway at `address`; by default a gRPC client over this service's
   * channels. In one process (`all`) the gateway itself can be passed.
   */
  readonly pushClient?: ((address: string) => PushClient) | undefined;
  /** In `all`: the servers of this process; a gateway found there is called without a socket. */
  readonly localServers?: LocalServers | undefined;
}

/** Batches handled at once: while one batch's inbox statement runs, the next is decoded and sent. */
const BATCHES_IN_FLIGHT = 2;
/**
 * Route lookups (one per inbox statement) pending at once; beyond, a statement's pushes are
 * skipped (Redis is down or stuck: there would be no route anyway) rather than waited for,
 * so the inbox writes go on.
 */
const MAX_LOOKUPS_PENDING = 64;
/** A batch whose inbox write failed comes back after this back-off, doubled per delivery, up to the cap. */
const RETRY_BASE_MS = 100;
const RETRY_MAX_MS = 5_000;
/**
 * Deliveries after which an event whose inbox write still fails on its own, while the database
 * answers, is poison: it goes to the dead letters with its reason instead of coming back forever.
 * (While the database is down every event comes back, however often.)
 */
export const MAX_DELIVERIES = 5;
/** Longest reason kept with a dead letter. */
const MAX_REASON = 300;
const MAX_INT64 = 2n ** 63n - 1n;
/** Longest session id an event may carry (ids are short: `group:<n>`, `single:<a>:<b>`). */
const MAX_SESSION_ID = 512;

/** A delivered event and what it carries. */
interface Decoded {
  readonly delivered: DeliveredEvent;
  readonly event: PushEvent;
}

/**
 * How `RESONANCE_TASK_CONCURRENCY` splits: the most events a task handles at once, in up to
 * {@link BATCHES_IN_FLIGHT} batches (each at most half of it; a concurrency of 1 is one event at a time).
 */
export function taskBatching(concurrency: number): { maxBatch: number; inFlight: number } {
  const inFlight = Math.min(BATCHES_IN_FLIGHT, concurrency);
  return { maxBatch: Math.max(1, Math.floor(concurrency / inFlight)), inFlight };
}

/**
 * The push event in `data`, or why it can never be handled: undecodable, or with ids the inbox
 * cannot store. Such an event goes to the dead letters alone.
 */
export function decodeEvent(data: Uint8Array): PushEvent | string {
  let e: PushEvent;
  try {
    e = fromBinary(PushEventSchema, data);
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
  if (!e.sessionId || e.msgId === 0n) return "event without session or msg_id";
  if (e.sessionId.length > MAX_SESSION_ID || e.sessionId.includes("\u0000")) return "event with an invalid session id";
  if (e.msgId < 0n || e.msgId > MAX_INT64 || e.seqId < 0n || e.seqId > MAX_INT64) return "event with msg_id or seq_id out of range";
  return e;
}

/**
 * True when `err` came from a database server that is up: it has a SQLSTATE that is not a
 * connection exception (class 08) or an operator intervention (57P: shutdown, crash recovery).
 */
function databaseAnswered(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && /^([0-9]{2}|F0|HV|P0|XX)[0-9A-Z]{3}$/.test(code) && !code.startsWith("08") && !code.startsWith("57P");
}

/** A PostgreSQL "data exception" (SQLSTATE class 22): the row is at fault, not the database. */
function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && code.startsWith("22");
}

function toPushMessage(e: PushEvent): PushMessage {
  return create(PushMessageSchema, {
    msgId: e.msgId,
    seqId: e.seqId,
    sessionId: e.sessionId,
    fromUsername: e.fromUsername,
    toUsername: e.toUsername,
    content: e.content,
    type: e.type,
    timestamp: e.timestamp,
    ...(e.type === "system" ? { sessionMeta: create(SessionMetaSchema, { name: e.sessionName, type: e.sessionType }) } : {}),
  });
}

/**
 * The task service: consumes push events in batches, writes every member's inbox rows
 * (idempotent, one statement per batch), pushes to the gateways that hold the recipients'
 * connections, and acks the batch (one confirmation). The inbox is the truth: a failed push
 * loses nothing, the client pulls its delta on reconnect.
 */
export class TaskService {
  readonly #config: Config;
  readonly #d: TaskDeps;
  readonly #channels: Channels;
  readonly #pushes = new Set<Promise<void>>();
  readonly #pushers = new Map<string, GatewayPusher>();
  #gateways: RegistryWatch | undefined;
  #addresses = new Map<string, string>();
  #started = false;
  /** Resolved when the consumer is asked to stop: batches then stop waiting for back-pressure. */
  readonly #stopping: Promise<void>;
  #stop!: () => void;
  /** Pushes skipped in a row because route lookups fell behind (one warning per run of them). */
  #skipped = 0;

  constructor(config: Config, deps: TaskDeps) {
    this.#config = config;
    this.#d = deps;
    this.#channels = new Channels({ timeoutMs: 5_000, secret: config.internalSecret, local: deps.localServers });
    this.#stopping = new Promise((resolve) => (this.#stop = resolve));
    deps.metrics.gauge("resonance_consumer_ack_pending", "Queue events delivered and not yet acked", async () => (await deps.queue.consumer.pending()).ackPending);
    deps.metrics.gauge("resonance_consumer_lag", "Queue events waiting to be delivered", async () => (await deps.queue.consumer.pending()).waiting);
    deps.metrics.gauge("resonance_pushes_queued", "Pushes waiting for their gateway", () => {
      let n = 0;
      for (const p of this.#pushers.values()) n += p.queued;
      return n;
    });
  }

  async start(): Promise<void> {
    this.#gateways = await this.#d.registry.watch("gateway", (entries) => this.#setGateways(entries));
    this.#setGateways(this.#gateways.entries());
    await this.#d.queue.consumer.consumeBatches((events) => this.#handleBatch(events), taskBatching(this.#config.task.concurrency));
    this.#started = true;
  }

  /** Gateway id → push address, kept by the registry watch; a gateway that left gets its queued pushes sent, then its channel dropped. */
  #setGateways(entries: readonly RegistryEntry[]): void {
    const live = new Map(entries.map((e) => [e.id, e.address]));
    const liveAddresses = new Set(live.values());
    for (const address of this.#addresses.values()) {
      if (liveAddresses.has(address)) continue;
      const gone = this.#pushers.get(address);
      this.#pushers.delete(address);
      void (gone?.flush() ?? Promise.resolve()).then(() => this.#channels.forget(address));
    }
    this.#addresses = live;
  }

  /**
   * One batch: poison events go to the dead letters alone; the rest get their inbox rows, their
   * pushes queued right after each commit, then one ack pass. Events it cannot settle are left
   * to the consumer, which naks them.
   */
  async #handleBatch(batch: readonly DeliveredEvent[]): Promise<void> {
    const good: Decoded[] = [];
    const dead: Array<Promise<void>> = [];
    for (const delivered of batch) {
      const event = decodeEvent(delivered.data);
      if (typeof event === "string") dead.push(this.#deadLetter(delivered, event));
      else good.push({ delivered, event });
    }
    try {
      if (good.length > 0) await this.#deliver(good);
    } finally {
      await Promise.all(dead);
    }
  }

  /** Moves an event that can never be handled to the dead-letter subject; if that fails, it stays unsettled (nak'd). Never rejects. */
  async #deadLetter(delivered: DeliveredEvent, reason: string, what = "undecodable event moved to the dead-letter subject"): Promise<void> {
    reason = reason.slice(0, MAX_REASON);
    try {
      await delivered.deadLetter(reason);
    } catch (err) {
      this.#d.log.warn({ err, id: delivered.id }, "moving an event to the dead-letter subject failed; it will come back");
      return;
    }
    this.#d.log.error({ id: delivered.id, reason, deliveryCount: delivered.deliveryCount }, what);
    this.#d.metrics.eventsHandled.inc({ outcome: "dead-letter" });
  }

  /**
   * True when `e`, failing alone with `err`, is poison: delivered {@link MAX_DELIVERIES} times
   * already, and the database answers (so the fault is the event's, not an outage).
   */
  async #isPoison(e: Decoded, err: unknown): Promise<boolean> {
    if (isDataError(err)) return true;
    if (e.delivered.deliveryCount < MAX_DELIVERIES) return false;
    try {
      await this.#d.storage.query("select 1");
      return true;
    } catch (probe) {
      // An error with a SQLSTATE is the server answering (PostgreSQL may report the failed
      // statement before it has released its locks, so "out of shared memory" can follow at once).
      if (databaseAnswered(probe)) return true;
      this.#d.log.warn({ err: probe, id: e.delivered.id }, "the database does not answer either; the event is not taken for poison");
      return false;
    }
  }

  async #deadLetterPoison(e: Decoded, err: unknown): Promise<void> {
    const why = err instanceof Error ? err.message : String(err);
    const reason = isDataError(err) ? `inbox refused the event: ${why}` : `inbox write failed ${e.delivered.deliveryCount} times: ${why}`;
    await this.#deadLetter(e.delivered, reason, "event moved to the dead-letter subject");
  }

  async #deliver(events: readonly Decoded[]): Promise<void> {
    const keepAlive = setInterval(() => {
      for (const e of events) e.delivered.working();
    }, Math.max(1_000, this.#config.task.ackWaitMs / 3));
    try {
      // A large session's message has no inbox rows: it goes once to every gateway, whatever
      // the member count, and its members catch it up by seq.
      const large = events.filter((e) => e.event.large);
      const small = large.length === 0 ? events : events.filter((e) => !e.event.large);
      const written = small.length > 0 ? await this.#writeInbox(small) : [];
      if (large.length > 0) {
        this.#pushToMembers(large);
        this.#d.metrics.largeEvents.inc(large.length);
        written.push(...large);
      }
      if (written.length === 0) return;
      await this.#senderHasRead(written);
      await this.#d.faults.at("task.before-ack");
      await this.#d.queue.consumer.ackAll(written.map((e) => e.delivered));
      this.#d.metrics.eventsHandled.inc({ outcome: "acked" }, written.length);
    } finally {
      clearInterval(keepAlive);
    }
    // Back-pressure: while a gateway takes pushes slower than they come, this batch slot stays
    // taken, so the task pulls fewer events (they wait, durable, in the queue) instead of piling
    // up pushes in memory or dropping them. Not while stopping: the shutdown flushes them.
    await Promise.race([Promise.all([...this.#pushers.values()].map((p) => p.room())), this.#stopping]);
  }

  /**
   * Writes the inbox rows of `events`, one statement per row cap's worth (usually one for the
   * whole batch), queueing each statement's pushes as soon as it has committed. Resolves with the
   * events written; those it could not write are nak'd with a back-off, or dead-lettered when the
   * database refuses their data. Never rejects.
   */
  async #writeInbox(events: readonly Decoded[]): Promise<Decoded[]> {
    const written: Decoded[] = [];
    let rest = events;
    while (rest.length > 0) {
      let members: string[][];
      try {
        members = await writeInboxFront(this.#d.storage, rest.map((e) => e.event));
      } catch (err) {
        // A bad event fails its whole statement: alone, only it fails (and, if poison, goes to the dead letters).
        const suspect = isDataError(err) || rest.some((e) => e.delivered.deliveryCount >= MAX_DELIVERIES);
        if (suspect && rest.length > 1) return [...written, ...(await this.#writeOneByOne(rest))];
        if (rest.length === 1 && (await this.#isPoison(rest[0]!, err))) {
          await this.#deadLetterPoison(rest[0]!, err);
          return written;
        }
        this.#retryLater(rest, err);
        return written;
      }
      const front = rest.slice(0, members.length);
      rest = rest.slice(members.length);
      this.#d.metrics.inboxRows.inc(members.reduce((n, m) => n + m.length, 0));
      written.push(...front);
      this.#startPushes(front, members);
    }
    return written;
  }

  /** After a batch statement failed for a suspect event: each event alone, so only the one at fault fails. */
  async #writeOneByOne(events: readonly Decoded[]): Promise<Decoded[]> {
    const written: Decoded[] = [];
    /** Sessions with an event handed back: their later events follow it (seq order per session). */
    const held = new Set<string>();
    for (const e of events) {
      if (held.has(e.event.sessionId)) {
        this.#retryLater([e], "an earlier event of its session is being retried");
        continue;
      }
      try {
        const members = await writeInboxFront(this.#d.storage, [e.event]);
        this.#d.metrics.inboxRows.inc(members.reduce((n, m) => n + m.length, 0));
        written.push(e);
        this.#startPushes([e], members);
      } catch (err) {
        if (await this.#isPoison(e, err)) {
          await this.#deadLetterPoison(e, err);
          continue;
        }
        // Not its fault (yet): this one comes back later; other sessions' events still get their turn.
        held.add(e.event.sessionId);
        this.#retryLater([e], err);
      }
    }
    return written;
  }

  /** Hands events back with a back-off, so a database that is down is not hammered by instant redeliveries. */
  #retryLater(events: readonly Decoded[], err: unknown): void {
    const first = events.slice(0, 5).map((e) => `${e.delivered.id}#${e.delivered.deliveryCount}`);
    this.#d.log.warn({ err, events: events.length, first }, "inbox write failed; events handed back for a later retry");
    this.#d.metrics.eventsHandled.inc({ outcome: "retry" }, events.length);
    for (const e of events) {
      const backoff = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(16, e.delivered.deliveryCount - 1));
      e.delivered.nak(backoff);
    }
  }

  /** Each large-session message, once to every live gateway, which pushes it to its own connections of the session's members. */
  #pushToMembers(events: readonly Decoded[]): void {
    for (const { event } of events) {
      const message = toPushMessage(event);
      for (const address of new Set(this.#addresses.values())) this.#pusher(address).push([], message, true);
    }
  }

  /**
   * The sender has read their own message: their read position moves to it (never back), so
   * their unread count does not count it, in small and large sessions alike. One statement per
   * batch; a failure only leaves the count high until the next send or read, so it is logged, not retried.
   */
  async #senderHasRead(events: readonly Decoded[]): Promise<void> {
    const upto = new Map<string, { sessionId: string; username: string; seq: bigint }>();
    for (const { event: e } of events) {
      if (!e.fromUsername) continue;
      const key = `${e.sessionId}\u0000${e.fromUsername}`;
      const had = upto.get(key);
      if (!had || had.seq < e.seqId) upto.set(key, { sessionId: e.sessionId, username: e.fromUsername, seq: e.seqId });
    }
    if (upto.size === 0) return;
    const rows = [...upto.values()];
    try {
      await this.#d.storage.query(
        `update session_members sm set last_read_seq = v.seq
           from unnest($1::text[], $2::text[], $3::bigint[]) as v(session_id, username, seq)
          where sm.session_id = v.session_id and sm.username = v.username and sm.last_read_seq < v.seq`,
        [rows.map((r) => r.sessionId), rows.map((r) => r.username), rows.map((r) => r.seq.toString())],
      );
    } catch (err) {
      this.#d.log.warn({ err, senders: rows.length }, "moving senders' read positions failed; their unread counts stay high until they read");
    }
  }

  /** Starts the pushes of a statement's events, unless too many route lookups are pending already. */
  #startPushes(events: readonly Decoded[], members: readonly string[][]): void {
    if (this.#pushes.size >= MAX_LOOKUPS_PENDING) {
      this.#d.metrics.pushes.inc({ outcome: "skipped" }, events.length);
      this.#skipped += events.length;
      if (this.#skipped === events.length) this.#d.log.warn({ pending: this.#pushes.size }, "route lookups fall behind; pushes skipped, recipients will catch up from their inbox");
      return;
    }
    this.#skipped = 0;
    const p = this.#push(events, members);
    this.#pushes.add(p);
    void p.finally(() => this.#pushes.delete(p));
  }

  #pusher(address: string): GatewayPusher {
    let p = this.#pushers.get(address);
    if (!p) {
      const client = this.#d.pushClient ? () => this.#d.pushClient!(address) : () => this.#channels.client(PushService, address);
      p = new GatewayPusher(address, client, this.#d.metrics, this.#d.log);
      this.#pushers.set(address, p);
    }
    return p;
  }

  /** One route lookup for every recipient of `events` (members[i] are event i's), then each message is queued for its gateways. Never rejects. */
  async #push(events: readonly Decoded[], members: readonly string[][]): Promise<void> {
    try {
      const recipients = new Set<string>();
      for (const list of members) for (const u of list) recipients.add(u);
      if (recipients.size === 0) return;
      this.#d.metrics.routeLookups.inc(recipients.size);
      const routes = await this.#d.routes.lookup([...recipients]);
      if (routes.size === 0) return;
      for (const [i, { event }] of events.entries()) {
        const byGateway = new Map<string, string[]>();
        for (const user of members[i]!) {
          for (const g of routes.get(user) ?? []) {
            const list = byGateway.get(g);
            if (list) list.push(user);
            else byGateway.set(g, [user]);
          }
        }
        if (byGateway.size === 0) continue;
        const message = toPushMessage(event);
        for (const [gatewayId, users] of byGateway) {
          const address = this.#addresses.get(gatewayId);
          if (!address) this.#d.metrics.pushes.inc({ outcome: "gateway-gone" });
          else this.#pusher(address).push(users, message);
        }
      }
    } catch (err) {
      this.#d.log.warn({ err, events: events.length }, "route lookup failed; recipients will catch up from their inbox");
    }
  }

  /** Shutdown step: stops pulling, naks what was not started, finishes and acks the batches in hand. */
  async stopConsumer(): Promise<Record<string, number>> {
    if (!this.#started) return {};
    this.#stop();
    const s = await this.#d.queue.consumer.stop();
    return { mqAcked: s.acked, mqNaked: s.naked };
  }

  /** Shutdown step: waits for the route lookups and the pushes queued or in flight. */
  async flushPushes(): Promise<Record<string, number>> {
    const n = this.#pushes.size;
    await Promise.all(this.#pushes);
    await Promise.all([...this.#pushers.values()].map((p) => p.flush()));
    return { pushesFlushed: n };
  }

  /** Closes what this service opened (not its infrastructure); idempotent. */
  async close(): Promise<void> {
    this.#stop();
    if (this.#started) await this.#d.queue.consumer.stop();
    await this.flushPushes();
    await this.#gateways?.close();
    this.#channels.close();
  }
}
