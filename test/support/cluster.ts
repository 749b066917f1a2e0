import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { freePort, ServiceProcess } from "./processes.js";
import { TEST_DATABASE_URL, TEST_ETCD_ENDPOINTS, TEST_NATS_URL, TEST_REDIS_URL } from "./services.js";

/** The database a test connects to for creating and dropping its own database. */
const PG_ADMIN_URL = TEST_DATABASE_URL;
export const REDIS_URL = TEST_REDIS_URL;
export const NATS_URL = TEST_NATS_URL;
export const ETCD_ENDPOINTS = TEST_ETCD_ENDPOINTS;

export type Mode = "cluster" | "standalone";

export interface ClusterOptions {
  readonly mode: Mode;
  readonly gateways?: number;
  readonly logics?: number;
  readonly tasks?: number;
  /** Extra settings for every process. */
  readonly env?: Record<string, string>;
}

/** A running deployment for a test: real processes, real PostgreSQL/Redis/NATS/etcd in cluster mode. */
export class TestCluster {
  readonly mode: Mode;
  readonly namespace: string;
  readonly baseEnv: Record<string, string>;
  readonly gateways: ServiceProcess[] = [];
  readonly logics: ServiceProcess[] = [];
  readonly tasks: ServiceProcess[] = [];
  readonly databaseUrl: string | undefined;
  readonly dataDir: string | undefined;
  readonly #extra: Array<() => Promise<void>> = [];
  #nextInstance = 1;

  private constructor(mode: Mode, namespace: string, env: Record<string, string>, databaseUrl?: string, dataDir?: string) {
    this.mode = mode;
    this.namespace = namespace;
    this.baseEnv = env;
    this.databaseUrl = databaseUrl;
    this.dataDir = dataDir;
  }

  /** Gateway base URLs (http://127.0.0.1:port), in the order the gateways were started. */
  get urls(): string[] {
    return this.gateways.map((g) => `http://127.0.0.1:${g.env.RESONANCE_HTTP_PORT}`);
  }

  get all(): ServiceProcess[] {
    return [...this.gateways, ...this.logics, ...this.tasks];
  }

  static async start(opts: ClusterOptions): Promise<TestCluster> {
    const namespace = `t${randomBytes(4).toString("hex")}`;
    if (opts.mode === "standalone") {
      const dataDir = await mkdtemp(join(tmpdir(), "resonance-test-"));
      const c = new TestCluster("standalone", namespace, { RESONANCE_DATA_DIR: dataDir, ...opts.env }, undefined, dataDir);
      c.#extra.push(() => rm(dataDir, { recursive: true, force: true }));
      await c.startProcess("all");
      return c;
    }
    const dbName = `resonance_${namespace}`;
    const admin = new pg.Client({ connectionString: PG_ADMIN_URL });
    await admin.connect();
    await admin.query(`create database ${dbName}`);
    await admin.end();
    const databaseUrl = `${PG_ADMIN_URL.replace(/\/[^/]*$/, "")}/${dbName}`;
    const env = {
      RESONANCE_DATABASE_URL: databaseUrl,
      RESONANCE_REDIS_URL: REDIS_URL,
      RESONANCE_NATS_URL: NATS_URL,
      RESONANCE_ETCD_ENDPOINTS: ETCD_ENDPOINTS,
      RESONANCE_TOKEN_SECRET: randomBytes(24).toString("hex"),
      RESONANCE_INTERNAL_SECRET: randomBytes(24).toString("hex"),
      RESONANCE_NAMESPACE: namespace,
      ...opts.env,
    };
    const c = new TestCluster("cluster", namespace, env, databaseUrl);
    c.#extra.push(async () => {
      const a = new pg.Client({ connectionString: PG_ADMIN_URL });
      await a.connect();
      await a.query(`drop database if exists ${dbName} with (force)`);
      await a.end();
    });
    const migrate = new ServiceProcess("migrate", { ...env, RESONANCE_INSTANCE_ID: "migrate" });
    const exit = await migrate.exited;
    if (exit.code !== 0) throw new Error(`migrate failed (${exit.code})\n${migrate.output()}`);
    await Promise.all([
      ...Array.from({ length: opts.logics ?? 1 }, () => c.startProcess("logic")),
      ...Array.from({ length: opts.tasks ?? 1 }, () => c.startProcess("task")),
    ]);
    for (let i = 0; i < (opts.gateways ?? 1); i++) await c.startProcess("gateway");
    return c;
  }

  /**
   * Starts one more process of a role (fresh ports, next instance id) and waits until it is ready.
   * Ports the test did not choose are picked free, but another program may take one before the
   * process binds it (other test runs share this machine): such a start is retried on new ports.
   */
  async startProcess(role: "gateway" | "logic" | "task" | "all", env: Record<string, string> = {}): Promise<ServiceProcess> {
    const list = role === "gateway" || role === "all" ? this.gateways : role === "logic" ? this.logics : this.tasks;
    const ownPorts = Object.keys(env).some((k) => k.endsWith("_PORT"));
    for (let attempt = 1; ; attempt++) {
      const p = new ServiceProcess(role, await this.processEnv(role, env));
      list.push(p);
      try {
        await p.ready();
        return p;
      } catch (err) {
        const portTaken = !p.alive && /EADDRINUSE|is already in use/.test(p.output());
        if (!portTaken || ownPorts || attempt >= 3) throw err;
        list.splice(list.indexOf(p), 1);
      }
    }
  }

  /**
   * Starts a process of the same role on the same ports as `old` (its replacement after a
   * restart or a crash; `old` must have exited), with a new instance id, and waits until ready.
   */
  async replace(old: ServiceProcess, env: Record<string, string> = {}): Promise<ServiceProcess> {
    const ports = ["RESONANCE_HTTP_PORT", "RESONANCE_PUSH_PORT", "RESONANCE_LOGIC_PORT", "RESONANCE_METRICS_PORT"] as const;
    return this.startProcess(old.role as "gateway" | "logic" | "task" | "all", { ...Object.fromEntries(ports.map((k) => [k, old.env[k]!])), ...env });
  }

  /** The environment a new process of `role` would get. */
  async processEnv(role: string, env: Record<string, string> = {}): Promise<Record<string, string>> {
    return {
      ...this.baseEnv,
      RESONANCE_INSTANCE_ID: `${role}-${this.#nextInstance++}`,
      RESONANCE_HTTP_PORT: String(await freePort()),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_LOGIC_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
      ...env,
    };
  }

  /** A SQL query against this deployment's database (cluster mode). */
  async sql<R = Record<string, unknown>>(text: string, params: unknown[] = []): Promise<R[]> {
    if (!this.databaseUrl) throw new Error("sql() needs cluster mode");
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: "resonance-test" });
    await client.connect();
    try {
      return (await client.query(text, params)).rows as R[];
    } finally {
      await client.end();
    }
  }

  /** Kills every process (SIGKILL) and removes the deployment's database or data dir. */
  async destroy(): Promise<void> {
    await Promise.all(this.all.map((p) => p.stop()));
    for (const f of this.#extra) await f().catch(() => {});
  }
}
