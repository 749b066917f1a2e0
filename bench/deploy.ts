/**
 * The deployment a benchmark run drives: started fresh with the test harness (real processes;
 * standalone, `all` on PostgreSQL, or a cluster) or a running one given by URLs. Also the
 * run's users and chats (set up through the public HTTP API with the SDK's Connect clients:
 * setup is not on the hot path) and the processes whose CPU the report accounts for.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { pino } from "pino";
import { createApi, wsUrlOf } from "../src/client/api.js";
import { createStorage, type Storage } from "../src/infra/storage/index.js";
import { codeName } from "../src/rpc/code-names.js";
import { TestCluster } from "../test/support/cluster.js";
import type { ServiceProcess } from "../test/support/processes.js";
import { TEST_DATABASE_URL } from "../test/support/services.js";
import type { PairPlan } from "./client.js";
import type { BenchOptions } from "./options.js";
import { pidsByName } from "./proc.js";
import { startOwnServers, type OwnServers } from "./servers.js";

/** Settings for every service process of a bench deployment: the product's per-user limits raised so the load is not refused by design. */
export const BENCH_ENV: Readonly<Record<string, string>> = {
  RESONANCE_CHAT_RATE: "1000000",
  RESONANCE_CHAT_BURST: "1000000",
  RESONANCE_AUTH_RATE: "100000",
  RESONANCE_AUTH_BURST: "100000",
  // Every bench connection comes from this machine's address.
  RESONANCE_WS_PER_ADDRESS: "100000",
  RESONANCE_WS_DRAIN_WINDOW: "1s",
};

/**
 * A group of processes whose CPU is summed in the report. `kind` "shared" marks servers that
 * other users of the machine also use: reported, but kept out of the run's total.
 */
export interface CpuGroup {
  readonly name: string;
  readonly kind: "service" | "database" | "server" | "shared" | "client" | "relay";
  /** The group's pids now (PostgreSQL backends come and go). */
  pids(): Promise<number[]>;
}

export interface Deployment {
  readonly description: string;
  readonly urls: readonly string[];
  /** Service processes started by the bench (empty for --urls). */
  readonly services: readonly ServiceProcess[];
  readonly cpuGroups: readonly CpuGroup[];
  /** How the PostgreSQL backends are found, for the report (undefined without PostgreSQL). */
  readonly pgNote: string | undefined;
  /** SIGTERM the services still running and wait for their exits (at most 60 s). Never rejects. */
  stopServices(): Promise<void>;
  /**
   * After stopServices(): looks the (receiver, msg_id) pairs up in the deployment's database
   * (PGlite opened from its directory). Undefined for --urls.
   */
  lookUp?(entries: ReadonlyArray<{ readonly owner: string; readonly msgId: number }>): Promise<LookUp>;
  /** stopServices(), then remove everything the run created. Never rejects. */
  stop(): Promise<void>;
}

/** Name of a service process in the report: its instance id (e.g. `gateway-3`). */
export function serviceName(p: ServiceProcess): string {
  return p.env.RESONANCE_INSTANCE_ID ?? p.role;
}

/** Backends of `dbName` (or, with `dbName` null, PostgreSQL's background processes) now. */
class PgBackends {
  readonly #client: pg.Client;

  private constructor(client: pg.Client) {
    this.#client = client;
  }

  static async open(): Promise<PgBackends> {
    const c = new pg.Client({ connectionString: TEST_DATABASE_URL, application_name: "resonance-bench-sampler" });
    await c.connect();
    return new PgBackends(c);
  }

  /** Client backends of the database (the sampler's own connection excluded). */
  async of(dbName: string): Promise<number[]> {
    const r = await this.#client.query<{ pid: number }>("select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()", [dbName]);
    return r.rows.map((x) => x.pid);
  }

  /** Background processes (checkpointer, WAL writer, ...): shared by every database of the server. */
  async background(): Promise<number[]> {
    const r = await this.#client.query<{ pid: number }>("select pid from pg_stat_activity where datname is null");
    return r.rows.map((x) => x.pid);
  }

  async close(): Promise<void> {
    await this.#client.end().catch(() => {});
  }
}

const PG_NOTE =
  "PostgreSQL backends: pids from pg_stat_activity (datname = the run's database) at the start, every second and at the end; " +
  "a backend present at the start counts end − start, one started within the interval counts all its CPU, " +
  "one that vanished counts up to its last sample (the rest is missing)";

async function stopServices(services: readonly ServiceProcess[]): Promise<void> {
  for (const p of services) p.kill("SIGTERM");
  await Promise.race([Promise.all(services.map((p) => p.exited)), new Promise((r) => setTimeout(r, 60_000))]);
}

/** Starts the deployment named by the options (or wraps --urls). Rejects, after cleaning up, when it cannot start. */
export async function startDeployment(o: BenchOptions): Promise<Deployment> {
  if (o.urls) {
    const none = async (): Promise<void> => {};
    return { description: `running deployment at ${o.urls.join(", ")}`, urls: o.urls, services: [], cpuGroups: [], pgNote: undefined, stopServices: none, stop: none };
  }
  const cleanups: Array<() => Promise<void>> = [];
  const cleanup = async (): Promise<void> => {
    for (const f of cleanups.reverse()) await f().catch(() => {});
  };
  try {
    let cluster: TestCluster;
    let dbName: string | undefined;
    let databaseUrl: string | undefined;
    let servers: OwnServers | undefined;
    let description: string;
    if (o.deploy === "standalone") {
      cluster = await TestCluster.start({ mode: "standalone", env: { ...BENCH_ENV } });
      description = "standalone: `resonance all` on PGlite, embedded queue";
    } else if (o.deploy === "all-pg") {
      dbName = `resonance_bench_${randomBytes(4).toString("hex")}`;
      const name = dbName;
      await adminQuery(`create database ${name}`);
      cleanups.push(() => adminQuery(`drop database if exists ${name} with (force)`));
      databaseUrl = `${TEST_DATABASE_URL.replace(/\/[^/]*$/, "")}/${name}`;
      cluster = await TestCluster.start({
        mode: "standalone",
        env: { ...BENCH_ENV, RESONANCE_DATABASE_URL: databaseUrl, RESONANCE_TOKEN_SECRET: randomBytes(24).toString("hex") },
      });
      description = "all-pg: `resonance all` on PostgreSQL, embedded queue";
    } else {
      const env: Record<string, string> = { ...BENCH_ENV };
      if (o.servers === "own") {
        servers = await startOwnServers(await mkdtemp(join(tmpdir(), "resonance-bench-servers-")));
        const s = servers;
        cleanups.push(() => s.stop());
        Object.assign(env, { RESONANCE_NATS_URL: s.natsUrl, RESONANCE_REDIS_URL: s.redisUrl, RESONANCE_ETCD_ENDPOINTS: s.etcdEndpoints });
      }
      cluster = await TestCluster.start({ mode: "cluster", gateways: o.gateways, logics: o.logics, tasks: o.tasks, env });
      databaseUrl = cluster.databaseUrl!;
      dbName = new URL(databaseUrl).pathname.slice(1);
      description =
        `cluster: ${o.gateways} gateway(s), ${o.logics} logic, ${o.tasks} task on PostgreSQL, ` +
        `${o.servers === "own" ? "private" : "the machine's shared"} nats-server/redis-server/etcd`;
    }
    const c = cluster;
    cleanups.push(async () => {
      await stopServices(c.all);
      await c.destroy();
    });
    const storage = (): Storage =>
      createStorage({ databaseUrl, dataDir: c.dataDir ?? "", applicationName: "resonance-bench-check", log: pino({ level: "silent" }) });
    const groups: CpuGroup[] = c.all.map((p) => ({ name: serviceName(p), kind: "service", pids: async () => (p.proc.pid ? [p.proc.pid] : []) }));
    if (dbName) {
      const backends = await PgBackends.open();
      cleanups.push(() => backends.close());
      const db = dbName;
      groups.push({ name: "postgres backends", kind: "database", pids: () => backends.of(db) });
      groups.push({ name: "postgres background", kind: "shared", pids: () => backends.background() });
    }
    if (o.deploy === "cluster") {
      if (servers) for (const s of servers.processes) groups.push({ name: s.name, kind: "server", pids: async () => [s.pid] });
      else for (const name of ["nats-server", "redis-server", "etcd"]) groups.push({ name, kind: "shared", pids: async () => pidsByName(name) });
    }
    return {
      description,
      urls: c.urls,
      services: c.all,
      cpuGroups: groups,
      pgNote: dbName ? PG_NOTE : undefined,
      stopServices: () => stopServices(c.all),
      lookUp: (entries) => lookUp(storage(), entries),
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** Where acked messages are: in their receiver's inbox, or at least committed (a messages row). */
export interface LookUp {
  readonly inInbox: number;
  readonly committed: number;
}

/** Counts the entries with an inbox row and those with a messages row; opens and closes `storage`. */
async function lookUp(storage: Storage, entries: ReadonlyArray<{ readonly owner: string; readonly msgId: number }>): Promise<LookUp> {
  await storage.start();
  try {
    let inInbox = 0;
    let committed = 0;
    for (let i = 0; i < entries.length; i += 10_000) {
      const chunk = entries.slice(i, i + 10_000);
      const owners = chunk.map((e) => e.owner);
      const ids = chunk.map((e) => String(e.msgId));
      const inbox = await storage.query<{ n: number }>(
        "select count(*)::int as n from inbox i join unnest($1::text[], $2::bigint[]) as l(owner, msg_id) on i.owner = l.owner and i.msg_id = l.msg_id",
        [owners, ids],
      );
      const messages = await storage.query<{ n: number }>("select count(*)::int as n from messages where id = any($1::bigint[])", [ids]);
      inInbox += Number(inbox.rows[0]?.n ?? 0);
      committed += Number(messages.rows[0]?.n ?? 0);
    }
    return { inInbox, committed };
  } finally {
    await storage.close();
  }
}

async function adminQuery(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const RETRY = new Set(["resource_exhausted", "unavailable", "deadline_exceeded", "internal", "unknown"]);

/** Calls `f`, retrying retryable Connect errors with a growing pause, for up to `timeoutMs`. */
async function withRetry<T>(what: string, f: () => Promise<T>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let pause = 100; ; pause = Math.min(2_000, pause * 2)) {
    try {
      return await f();
    } catch (err) {
      const code = codeName(ConnectError.from(err).code);
      if (!RETRY.has(code) || Date.now() + pause > deadline) throw new Error(`${what}: ${code}: ${ConnectError.from(err).rawMessage}`);
      await new Promise((r) => setTimeout(r, pause));
    }
  }
}

/**
 * Registers 2·pairs fresh users and one single chat per pair through the public API; sender i
 * talks to gateway i mod n, its receiver to gateway (i+1) mod n (so pushes cross gateways when
 * there are several). Resolves with the WebSocket plan of each pair.
 */
export async function setupPairs(urls: readonly string[], pairs: number): Promise<PairPlan[]> {
  const tag = randomBytes(3).toString("hex");
  const password = `bench-${randomBytes(8).toString("hex")}`;
  const plans: PairPlan[] = new Array(pairs);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < pairs; i = next++) {
      const sUrl = urls[i % urls.length]!;
      const rUrl = urls[(i + 1) % urls.length]!;
      const sender = `b${tag}s${i}`;
      const receiver = `b${tag}r${i}`;
      const reg = (url: string, username: string) => withRetry(`register ${username}`, () => createApi(url, { binary: true }).auth.register({ username, password }));
      const [s, r] = await Promise.all([reg(sUrl, sender), reg(rUrl, receiver)]);
      const api = createApi(sUrl, { binary: true, token: s.accessToken });
      const { sessionId } = await withRetry(`create chat ${sender}`, () => api.session.createSession({ members: [receiver], type: 1 }));
      plans[i] = { senderWs: wsUrlOf(sUrl, s.accessToken), receiverWs: wsUrlOf(rUrl, r.accessToken), sessionId, receiver };
    }
  };
  await Promise.all(Array.from({ length: Math.min(4, pairs) }, worker));
  return plans;
}

/** The pairs of a bare relay at `port` (bench/relay.ts): the token is the username. */
export function relayPairs(port: number, pairs: number): PairPlan[] {
  return Array.from({ length: pairs }, (_, i) => ({
    senderWs: `ws://127.0.0.1:${port}/ws?token=s${i}`,
    receiverWs: `ws://127.0.0.1:${port}/ws?token=r${i}`,
    sessionId: [`s${i}`, `r${i}`].sort().join(":").replace(/^/, "single:"),
  }));
}
