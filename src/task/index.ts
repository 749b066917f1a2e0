import { create, fromBinary } from "@bufbuild/protobuf";
import { PushMessageSchema, SessionMetaSchema } from "../gen/resonance/gateway/v1/gateway_pb.js";
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
import { INBOX_INSERT } from "./inbox.js";
import { GatewayPusher } from "./pusher.js";

export interface TaskDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly storage: Storage;
  readonly queue: Queue;
  readonly routes: RouteTable;
  readonly registry: Registry;
  readonly faults: Faults;
}

/**
 * The task service: consumes push events, writes every member's inbox row (idempotent), acks,
 * then pushes to the gateways that hold the recipients' connections. The inbox is the truth:
 * a failed push loses nothing, the client pulls its delta on reconnect.
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

  constructor(config: Config, deps: TaskDeps) {
    this.#config = config;
    this.#d = deps;
    this.#channels = new Channels({ timeoutMs: 5_000, secret: config.internalSecret });
    deps.metrics.gauge("resonance_consumer_ack_pending", "Queue events delivered and not yet acked", async () => (await deps.queue.consumer.pending()).ackPending);
    deps.metrics.gauge("resonance_consumer_lag", "Queue events waiting to be delivered", async () => (await deps.queue.consumer.pending()).waiting);
  }

  async start(): Promise<void> {
    this.#gateways = await this.#d.registry.watch("gateway", (entries) => this.#setGateways(entries));
    this.#setGateways(this.#gateways.entries());
    await this.#d.queue.consumer.consume((ev) => this.#handle(ev), this.#config.task.concurrency);
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

  async #handle(ev: DeliveredEvent): Promise<void> {
    let event: PushEvent;
    try {
      event = fromBinary(PushEventSchema, ev.data);
      if (!event.sessionId || event.msgId === 0n) throw new Error("event without session or msg_id");
    } catch (err) {
      this.#d.log.error({ err, id: ev.id }, "undecodable event moved to the dead-letter subject");
      this.#d.metrics.eventsHandled.inc({ outcome: "dead-letter" });
      await ev.deadLetter(err instanceof Error ? err.message : String(err));
      return;
    }
    const keepAlive = setInterval(() => ev.working(), Math.max(1_000, this.#config.task.ackWaitMs / 3));
    try {
      const members = await this.#writeInbox(event);
      await this.#d.faults.at("task.before-ack");
      await ev.ack();
      this.#d.metrics.eventsHandled.inc({ outcome: "acked" });
      this.#track(this.#push(event, members));
    } finally {
      clearInterval(keepAlive);
    }
  }

  /** Inserts the inbox rows of every member (a redelivery inserts nothing); resolves with the members. */
  async #writeInbox(e: PushEvent): Promise<string[]> {
    const { rows } = await this.#d.storage.query<{ username: string }>(INBOX_INSERT, [e.sessionId, e.seqId.toString(), e.msgId.toString()]);
    return rows.map((r) => r.username);
  }



  #track(p: Promise<void>): void {
    this.#pushes.add(p);
    void p.finally(() => this.#pushes.delete(p));
  }

  #pusher(address: string): GatewayPusher {
    let p = this.#pushers.get(address);
    if (!p) {
      p = new GatewayPusher(address, this.#channels, this.#d.metrics, this.#d.log);
      this.#pushers.set(address, p);
    }
    return p;
  }

  /** One route lookup for all members, then the message is queued for each gateway. Never rejects. */
  async #push(e: PushEvent, members: string[]): Promise<void> {
    try {
      const routes = await this.#d.routes.lookup(members);
      const byGateway = new Map<string, string[]>();
      for (const [user, gateways] of routes) {
        for (const g of gateways) {
          const list = byGateway.get(g);
          if (list) list.push(user);
          else byGateway.set(g, [user]);
        }
      }
      if (byGateway.size === 0) return;
      const message = create(PushMessageSchema, {
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
      for (const [gatewayId, users] of byGateway) {
        const address = this.#addresses.get(gatewayId);
        if (!address) this.#d.metrics.pushes.inc({ outcome: "gateway-gone" });
        else this.#pusher(address).push(users, message);
      }
    } catch (err) {
      this.#d.log.warn({ err, msgId: e.msgId.toString() }, "route lookup failed; recipients will catch up from their inbox");
    }
  }

  /** Shutdown step: stops pulling, naks what was not started, finishes and acks the events in hand. */
  async stopConsumer(): Promise<Record<string, number>> {
    if (!this.#started) return {};
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
    if (this.#started) await this.#d.queue.consumer.stop();
    await this.flushPushes();
    await this.#gateways?.close();
    this.#channels.close();
  }
}
