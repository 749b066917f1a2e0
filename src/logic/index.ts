import type { Config } from "../config/config.js";
import type { Queue } from "../infra/queue/types.js";
import type { Registration, Registry } from "../infra/registry/types.js";
import type { RouteTable } from "../infra/routes/types.js";
import type { Storage } from "../infra/storage/types.js";
import type { Faults } from "../lifecycle/faults.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import { RpcServer } from "../rpc/server.js";
import { Tokens } from "./auth.js";
import { logicRoutes } from "./handlers.js";
import { OutboxRelay } from "./relay.js";
import { LogicStore } from "./store.js";

export interface LogicDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly storage: Storage;
  readonly queue: Queue;
  readonly routes: RouteTable;
  readonly registry: Registry;
  readonly faults: Faults;
  readonly tokenSecret: string;
}

/**
 * The logic service: auth, sessions, messages (one transaction per message), presence, and the
 * outbox relay. Its infrastructure is started and released by the caller (the app).
 */
export class LogicService {
  readonly #config: Config;
  readonly #d: LogicDeps;
  readonly #store: LogicStore;
  readonly #relay: OutboxRelay;
  readonly #rpc: RpcServer;
  #registration: Registration | undefined;

  constructor(config: Config, deps: LogicDeps) {
    this.#config = config;
    this.#d = deps;
    this.#store = new LogicStore(deps.storage);
    this.#relay = new OutboxRelay(this.#store, deps.queue.publisher, { ...config.relay, owner: config.instanceId }, deps.log.child({ part: "relay" }), deps.metrics);
    this.#rpc = new RpcServer({
      name: "logic gRPC",
      host: config.listen.host,
      secret: config.internalSecret,
      port: config.listen.logicPort,
      log: deps.log,
      routes: logicRoutes({
        store: this.#store,
        tokens: new Tokens(deps.tokenSecret, config.tokenTtlMs),
        routes: deps.routes,
        faults: deps.faults,
        metrics: deps.metrics,
        maxContentChars: config.limits.maxContentChars,
        onCommit: () => this.#relay.poke(),
      }),
    });
    deps.metrics.gauge("resonance_outbox_backlog", "Outbox events not yet published", () => this.#store.outboxBacklog());
  }

  get rpcPort(): number {
    return this.#rpc.port;
  }

  /** Listens, starts the relay, registers in the registry. */
  async start(): Promise<void> {
    await this.#rpc.start();
    await this.#relay.start();
    this.#registration = await this.#d.registry.register({
      service: "logic",
      id: this.#config.instanceId,
      address: `${this.#config.listen.advertiseHost}:${this.#rpc.port}`,
      state: "serving",
    });
  }

  /** Shutdown step: the registry entry turns `draining` (gateways stop picking this instance). */
  async unready(): Promise<void> {
    await this.#registration?.setDraining();
  }

  /** Shutdown step: gRPC graceful stop (new calls UNAVAILABLE, in-flight calls finish), forced after `graceMs`. */
  async stopRpc(graceMs: number): Promise<Record<string, number>> {
    const r = await this.#rpc.stop(graceMs);
    return { rpcCompleted: r.completed, rpcAborted: r.aborted };
  }

  /** Shutdown step: the relay finishes its batch and makes a last flush. */
  async flushOutbox(): Promise<Record<string, number>> {
    const r = await this.#relay.stop();
    return { outboxFlushed: r.flushed, outboxPending: r.pending };
  }

  /** Shutdown step: the registry entry goes at once. */
  async deregister(): Promise<void> {
    await this.#registration?.deregister();
  }

  /** Stops everything this service started (not its infrastructure); idempotent. */
  async close(): Promise<void> {
    await this.#rpc.stop(0);
    await this.#relay.stop();
    await this.#registration?.deregister();
  }
}
