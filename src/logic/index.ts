import type { Config } from "../config/config.js";
import { createLimitStore } from "../infra/limits/index.js";
import type { LimitStore } from "../infra/limits/types.js";
import type { Queue } from "../infra/queue/types.js";
import type { Registration, Registry } from "../infra/registry/types.js";
import type { RouteTable } from "../infra/routes/types.js";
import type { Storage } from "../infra/storage/types.js";
import type { Faults } from "../lifecycle/faults.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import type { InProcessWiring } from "../rpc/in-process.js";
import { RpcServer } from "../rpc/server.js";
import { KdfQueue, Tokens } from "./auth.js";
import { logicRoutes } from "./handlers.js";
import { GroupCommit } from "./group-commit.js";
import { FAST_PATH_CLAIM_MS, OutboxRelay } from "./relay.js";
import { RevocationNotifier } from "./revoke.js";
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
  /** Name of this instance's connections (Redis `CLIENT SETNAME`); default `resonance-logic-<instance>`. */
  readonly connectionName?: string;
  /** In `all`: the gateway calls in process (no port when `listen` is false), and so do revocations. */
  readonly inProcess?: InProcessWiring | undefined;
}

/** Password hashes computed at once; each takes ~50 ms of one core and 16 MiB. */
const KDF_CONCURRENCY = 2;
/** Logins and registrations waiting for a hash slot; beyond this they are shed (resource_exhausted). */
const KDF_QUEUE = 128;
/**
 * Messages per group commit. PGlite runs each statement on the event-loop thread (about 0.15 ms
 * per message): 64 keeps one commit near 10 ms, so WebSocket I/O never waits long behind it.
 */
const COMMIT_BATCH = { postgres: 256, pglite: 64 } as const;
/** Messages waiting for a commit; beyond this, new ones are refused (resource_exhausted). */
const COMMIT_QUEUE = 8_192;

/**
 * The logic service: auth, sessions, messages (group commit: many per statement), presence, and the
 * outbox relay. Its infrastructure is started and released by the caller (the app).
 */
export class LogicService {
  readonly #config: Config;
  readonly #d: LogicDeps;
  readonly #store: LogicStore;
  readonly #relay: OutboxRelay;
  readonly #commits: GroupCommit;
  readonly #rpc: RpcServer;
  readonly #limits: LimitStore;
  readonly #revocations: RevocationNotifier;
  #registration: Registration | undefined;

  constructor(config: Config, deps: LogicDeps) {
    this.#config = config;
    this.#d = deps;
    this.#store = new LogicStore(deps.storage, { inboxFanoutLimit: config.inboxFanoutLimit });
    const ns = config.namespace;
    this.#limits = createLimitStore({
      redisUrl: config.redisUrl,
      name: deps.connectionName ?? `resonance-logic-${config.instanceId}`,
      log: deps.log.child({ part: "limits" }),
      ...(ns ? { prefix: `${ns}:resonance:limit:` } : {}),
    });
    this.#revocations = new RevocationNotifier(deps.registry, config.internalSecret, deps.log.child({ part: "revoke" }), deps.inProcess?.servers);
    this.#relay = new OutboxRelay(this.#store, deps.queue.publisher, { ...config.relay, owner: config.instanceId, backgroundSlowRounds: deps.queue.kind === "embedded" }, deps.log.child({ part: "relay" }), deps.metrics);
    this.#commits = new GroupCommit(
      this.#store,
      {
        maxBatch: COMMIT_BATCH[deps.storage.kind],
        // PGlite is one connection: a second statement would only wait behind the first.
        maxInFlight: deps.storage.kind === "pglite" ? 1 : 2,
        maxQueued: COMMIT_QUEUE,
        claimMs: FAST_PATH_CLAIM_MS,
        owner: config.instanceId,
      },
      (events) => this.#relay.publishCommitted(events),
      deps.log.child({ part: "commit" }),
    );
    this.#rpc = new RpcServer({
      name: "logic gRPC",
      host: config.listen.host,
      secret: config.internalSecret,
      port: config.listen.logicPort,
      advertiseHost: config.listen.advertiseHost,
      local: deps.inProcess?.servers,
      listen: deps.inProcess?.listen ?? true,
      onRefused: () => deps.metrics.internalRefused.inc(),
      log: deps.log,
      routes: logicRoutes({
        store: this.#store,
        tokens: new Tokens(deps.tokenSecret, config.tokenTtlMs),
        routes: deps.routes,
        faults: deps.faults,
        metrics: deps.metrics,
        maxContentChars: config.limits.maxContentChars,
        limits: this.#limits,
        kdf: new KdfQueue({ concurrency: KDF_CONCURRENCY, maxQueued: KDF_QUEUE }),
        revoked: (r) => this.#revocations.notify(r),
        onCommit: () => this.#relay.poke(),
        commits: this.#commits,
      }),
    });
    deps.metrics.gauge("resonance_outbox_backlog", "Outbox events not yet published", () => this.#store.outboxBacklog());
  }

  get rpcPort(): number {
    return this.#rpc.port;
  }

  /** Listens, starts the relay, registers in the registry. */
  async start(): Promise<void> {
    await this.#limits.start();
    await this.#revocations.start();
    await this.#rpc.start();
    await this.#relay.start();
    this.#registration = await this.#d.registry.register({
      service: "logic",
      id: this.#config.instanceId,
      address: this.#rpc.address,
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
    await this.#revocations.close();
    await this.#limits.close();
  }
}
