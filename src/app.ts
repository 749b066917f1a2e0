import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { checkRole, type Config } from "./config/config.js";
import { GatewayService } from "./gateway/index.js";
import { createQueue } from "./infra/queue/index.js";
import { DEAD_LETTER_SUBJECT, PUSH_SUBJECT, type Queue } from "./infra/queue/types.js";
import { createRegistry } from "./infra/registry/index.js";
import { createRouteTable } from "./infra/routes/index.js";
import type { RouteTable } from "./infra/routes/types.js";
import { createStorage } from "./infra/storage/index.js";
import { migrate } from "./infra/storage/migrate.js";
import type { Storage } from "./infra/storage/types.js";
import { Faults } from "./lifecycle/faults.js";
import { runShutdown, type Phase, type ShutdownReport } from "./lifecycle/shutdown.js";
import { LogicService } from "./logic/index.js";
import { migrations } from "./logic/migrations.js";
import { HealthServer } from "./observability/health.js";
import { createLogger, type Logger } from "./observability/log.js";
import { Metrics } from "./observability/metrics.js";
import { LocalServers, type InProcessWiring } from "./rpc/in-process.js";
import { TaskService } from "./task/index.js";

export type Role = "gateway" | "logic" | "task" | "all";

/** Fails the start when the database has not been migrated to this build's schema. */
async function requireSchema(storage: Storage): Promise<void> {
  const needed = Math.max(...migrations.map((m) => m.version));
  let current = 0;
  try {
    const { rows } = await storage.query<{ v: number | null }>("select max(version) as v from schema_migrations");
    current = Number(rows[0]?.v ?? 0);
  } catch {
    // No migrations table: nothing applied yet.
  }
  if (current < needed) {
    throw new Error(`the database schema is at version ${current}, this build needs ${needed}: run \`resonance migrate\` first`);
  }
}

const METRICS_PORT: Record<Role, number> = { gateway: 9092, logic: 9091, task: 9090, all: 9090 };

/** Something started that must be released at the end, in reverse order. */
interface Opened {
  readonly name: string;
  close(): Promise<void>;
}

/**
 * One process's worth of Resonance: the services of `role` and the infrastructure they need,
 * wired explicitly. `start()` opens everything (closing what was opened if any step fails);
 * `shutdown()` runs the phases of docs/shutdown and resolves with the report. No process
 * exit here: only the CLI exits.
 */
export class App {
  readonly config: Config;
  readonly role: Role;
  readonly log: Logger;
  readonly metrics = new Metrics();
  readonly faults: Faults;
  readonly #opened: Opened[] = [];
  readonly #lost: Array<Promise<Error>> = [];
  #health: HealthServer | undefined;
  gateway: GatewayService | undefined;
  logic: LogicService | undefined;
  task: TaskService | undefined;
  #shutdown: Promise<ShutdownReport> | undefined;
  #starting: Promise<void> | undefined;
  #started = false;

  /** Throws ConfigError (before anything is opened) when the settings do not suit the role. */
  constructor(config: Config, role: Role, log?: Logger) {
    checkRole(config, role);
    // `all` without etcd: nobody outside this process can find its services, and every internal
    // call is its own (in process, no port is opened), so they require a secret it makes up.
    const ownSecret = role === "all" && !config.internalSecret && config.etcdEndpoints.length === 0;
    this.config = ownSecret ? Object.freeze({ ...config, internalSecret: randomBytes(32).toString("base64url") }) : config;
    this.role = role;
    this.log = log ?? createLogger(role, config.instanceId, config.logLevel);
    this.faults = new Faults(config.faults, this.log);
  }

  get connectionName(): string {
    return `resonance-${this.role}-${this.config.instanceId}`;
  }

  get healthPort(): number | undefined {
    return this.#health?.port;
  }

  /** Resolves when a dependency is gone for good (NATS closed, etcd lease lost); never rejects. */
  get lost(): Promise<Error> {
    return Promise.race(this.#lost.length > 0 ? this.#lost : [new Promise<Error>(() => {})]);
  }

  /** Starts a component; it is released at the end even if its own start fails half-way. */
  async #open<T extends { start(): Promise<void>; close(): Promise<void> }>(name: string, thing: T): Promise<T> {
    this.#opened.push({ name, close: () => thing.close() });
    await this.faults.at(`start.${name}`);
    await thing.start();
    return thing;
  }

  /**
   * Opens infrastructure and services; on failure closes what was opened, in reverse, and
   * rethrows. Idempotent. A shutdown requested meanwhile waits for it (within its deadline).
   */
  start(): Promise<void> {
    this.#starting ??= (async () => {
      try {
        await this.#start();
        this.#started = true;
        if (this.#shutdown) return; // Asked to stop while starting: never report ready.
        this.#health?.setReady(true);
        this.log.info({ role: this.role, instance: this.config.instanceId }, "started");
        this.#injectCrash();
      } catch (err) {
        if (!this.#shutdown) await this.#closeOpened();
        // Tests look at the process here: alive, with everything it had opened closed.
        await this.faults.at("start.failed");
        throw err;
      }
    })();
    return this.#starting;
  }

  async #start(): Promise<void> {
    const c = this.config;
    const r = this.role;
    const name = this.connectionName;
    const log = this.log;
    this.#health = await this.#open(
      "health",
      new HealthServer({ host: c.listen.host, port: c.listen.metricsPort ?? METRICS_PORT[r], metrics: this.metrics, log }),
    );
    const ns = c.namespace;
    const registry = await this.#open(
      "registry",
      createRegistry({
        endpoints: c.etcdEndpoints,
        name,
        log: log.child({ part: "registry" }),
        ...(ns ? { prefix: `/${ns}/resonance/services/` } : {}),
      }),
    );
    this.#lost.push(registry.lost);
    let data: { storage: Storage; routes: RouteTable; queue: Queue } | undefined;
    if (r !== "gateway") {
      const storage = await this.#open(
        "storage",
        createStorage({ databaseUrl: c.databaseUrl, dataDir: c.dataDir, applicationName: name, poolSize: c.pgPoolSize, log: log.child({ part: "storage" }) }),
      );
      if (r === "all") await migrate(storage, migrations, log);
      else await requireSchema(storage);
      const routes = await this.#open(
        "routes",
        createRouteTable({
          redisUrl: c.redisUrl,
          name,
          ttlMs: c.presence.routeTtlMs,
          log: log.child({ part: "routes" }),
          ...(ns ? { prefix: `${ns}:resonance:route:` } : {}),
        }),
      );
      const queue = await this.#open(
        "queue",
        createQueue({
          natsUrl: c.natsUrl,
          name,
          log: log.child({ part: "queue" }),
          ackWaitMs: c.task.ackWaitMs,
          syncIntervalMs: c.natsSyncIntervalMs,
          ...(ns ? { stream: `RESONANCE_PUSH_${ns.toUpperCase()}`, subjects: { push: `${ns}.${PUSH_SUBJECT}`, deadLetter: `${ns}.${DEAD_LETTER_SUBJECT}` } } : {}),
        }),
      );
      this.#lost.push(queue.lost);
      data = { storage, routes, queue };
    }
    const deps = { log, metrics: this.metrics, registry, faults: this.faults };
    // `all`: the services call each other in process; without etcd nobody else can find them,
    // so their internal ports are not opened at all.
    const inProcess: InProcessWiring | undefined = r === "all" ? { servers: new LocalServers(), listen: c.etcdEndpoints.length > 0 } : undefined;
    if (r === "logic" || r === "all") {
      const tokenSecret = await this.#tokenSecret();
      this.logic = await this.#open(
        "logic",
        new LogicService(c, { ...deps, ...data!, tokenSecret, connectionName: name, inProcess }),
      );
    }
    if (r === "task" || r === "all") {
      this.task = await this.#open("task", new TaskService(c, { ...deps, ...data!, localServers: inProcess?.servers }));
    }
    if (r === "gateway" || r === "all") {
      this.gateway = await this.#open("gateway", new GatewayService(c, { ...deps, probeLogic: r === "gateway", inProcess }));
      const gateway = this.gateway;
      this.#health?.addCheck(() => gateway.notReadyReason);
    }
  }

  /**
   * Fault injection (tests): `process.unhandled-rejection=<ms>` rejects a promise nobody awaits,
   * `process.uncaught-exception=<ms>` throws from a timer.
   */
  #injectCrash(): void {
    const rejection = this.config.faults.get("process.unhandled-rejection");
    if (typeof rejection === "number") setTimeout(() => void Promise.reject(new Error("injected unhandled rejection")), rejection).unref();
    const exception = this.config.faults.get("process.uncaught-exception");
    if (typeof exception === "number") {
      setTimeout(() => {
        throw new Error("injected uncaught exception");
      }, exception).unref();
    }
  }

  /** The configured secret; in embedded mode one generated on first start and kept in the data dir. */
  async #tokenSecret(): Promise<string> {
    // With PostgreSQL, checkRole (in the constructor) made sure one is configured.
    if (this.config.tokenSecret || this.config.databaseUrl) return this.config.tokenSecret!;
    const file = join(this.config.dataDir, "token-secret");
    try {
      const s = (await readFile(file, "utf8")).trim();
      if (s.length >= 32) return s;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    await mkdir(this.config.dataDir, { recursive: true });
    const secret = randomBytes(32).toString("base64url");
    await writeFile(file, secret + "\n", { mode: 0o600 });
    return secret;
  }

  async #closeOpened(): Promise<void> {
    for (const o of this.#opened.splice(0).reverse()) {
      try {
        await o.close();
      } catch (err) {
        this.log.warn({ err, what: o.name }, "close failed");
      }
    }
  }

  /**
   * The shutdown phases for this role, in order (docs/shutdown.md). Each acts on the services
   * that exist when it runs, so the list is valid even while a start is still in progress.
   */
  phases(): Phase[] {
    const t = this.config.shutdown.timeoutMs;
    const r = this.role;
    const withGateway = r === "gateway" || r === "all";
    const withLogic = r === "logic" || r === "all";
    const withTask = r === "task" || r === "all";
    const phases: Phase[] = [];
    const add = (name: string, run: () => Promise<void | Record<string, number>>, allowanceMs?: number) =>
      phases.push({ name, run, ...(allowanceMs !== undefined ? { allowanceMs } : {}) });

    add("unready", async () => {
      this.#health?.setReady(false);
      await Promise.all([this.gateway?.unready(), this.logic?.unready()]);
    });
    const drainDelay = this.config.shutdown.drainDelayMs;
    if (drainDelay > 0) add("drain-delay", () => new Promise<void>((resolve) => setTimeout(resolve, drainDelay)));
    if (withGateway) {
      const inflight = Math.min(10_000, t / 3);
      const ws = this.config.shutdown.wsDrainWindowMs + Math.min(5_000, t / 6);
      add("gateway.stop-accepting", async () => this.gateway?.stopAccepting());
      add("gateway.finish-inflight", async () => this.gateway?.finishInflight(inflight - 50), inflight);
      add("gateway.close-websockets", async () => this.gateway?.closeWebSockets(Date.now() + ws - 50), ws);
      add("gateway.flush-presence", async () => this.gateway?.flushPresence());
    }
    if (withLogic) {
      const rpc = Math.min(10_000, t / 3);
      add("logic.stop-rpc", async () => this.logic?.stopRpc(rpc - 100), rpc);
      add("logic.flush-outbox", async () => this.logic?.flushOutbox());
    }
    if (withTask) {
      add("task.stop-consumer", async () => this.task?.stopConsumer());
      add("task.flush-pushes", async () => this.task?.flushPushes());
    }
    if (withGateway) {
      const push = Math.min(5_000, t / 6);
      add("gateway.stop-push-rpc", async () => this.gateway?.stopPushRpc(push - 100), push);
    }
    add("deregister", async () => {
      await Promise.all([this.gateway?.deregister(), this.logic?.deregister()]);
    });
    add("release", async () => {
      await this.#closeOpened();
      return { httpAborted: this.gateway?.httpAborted ?? 0 };
    });
    return phases.map((p) => ({
      ...p,
      run: async () => {
        await this.faults.at(`phase.${p.name}`);
        const counts = await p.run();
        // Tests look at the process between a phase and the next (e.g. after `release`, still alive).
        await this.faults.at(`after.${p.name}`);
        return counts;
      },
    }));
  }

  /**
   * Runs the shutdown once (later calls get the same report). Resolves with the report, which
   * is also logged as one line; never rejects.
   */
  shutdown(reason: string, baseExitCode = 0): Promise<ShutdownReport> {
    // Logging must not stop a shutdown (stdout may be a closed pipe).
    const say = (obj: object, msg: string) => {
      try {
        this.log.info(obj, msg);
      } catch {
        // Nowhere left to write.
      }
    };
    this.#shutdown ??= (async () => {
      say({ reason }, "shutting down");
      // Phases act on what exists: let a start in progress finish (or fail) first.
      const waitForStart: Phase = { name: "await-start", run: async () => void (await this.#starting?.catch(() => {})) };
      const phases = this.#starting && !this.#started ? [waitForStart] : [];
      const report = await runShutdown(reason, [...phases, ...this.phases()], {
        timeoutMs: this.config.shutdown.timeoutMs,
        log: this.log,
        baseExitCode,
      });
      say({ report }, "shutdown report");
      return report;
    })();
    return this.#shutdown;
  }
}
