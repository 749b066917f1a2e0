import { randomBytes } from "node:crypto";
import { BlockList, isIP } from "node:net";
import { z } from "zod";

/** A duration: plain milliseconds ("1500") or with a unit ("30s", "200ms", "5m"). */
const duration = z
  .string()
  .trim()
  .regex(/^\d+(\.\d+)?(ms|s|m|h)?$/, "expected a duration such as 30s, 200ms or 1500")
  .transform((v) => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v)!;
    const n = Number(m[1]);
    const unit = m[2] ?? "ms";
    return Math.round(n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[unit]!);
  });

// Empty strings are refused rather than coerced to 0.
const number = z.string().trim().min(1, "must not be empty").transform(Number);
const port = number.pipe(z.number().int().min(0).max(65535));
const positiveInt = number.pipe(z.number().int().positive());
/** A duration of at least `min` ms. */
const atLeast = (min: number) => duration.pipe(z.number().min(min, `must be at least ${min} ms`));
const bytes = number.pipe(z.number().int().min(1024).max(16 * 1024 * 1024));
/** A per-connection send buffer: room for the largest frame at least, at most 64 MiB. */
const sendBuffer = number.pipe(z.number().int().min(64 * 1024, "must be at least 65536 (64 KiB)").max(64 * 1024 * 1024));
const optionalUrl = z
  .string()
  .trim()
  .optional()
  .transform((v) => (v ? v : undefined))
  .pipe(z.url().optional());
const list = z
  .string()
  .optional()
  .transform((v) => (v ?? "").split(",").map((s) => s.trim()).filter(Boolean));

/**
 * Every setting, keyed by its environment variable. Defaults here are the documented ones
 * (README "Settings"). Unset infrastructure URLs select the embedded implementations.
 */
const schema = z.object({
  RESONANCE_DATABASE_URL: optionalUrl,
  RESONANCE_REDIS_URL: optionalUrl,
  RESONANCE_NATS_URL: optionalUrl,
  RESONANCE_ETCD_ENDPOINTS: list,
  RESONANCE_LOGIC_ADDRESSES: list,
  RESONANCE_DATA_DIR: z.string().default("./data"),
  RESONANCE_TOKEN_SECRET: z.string().min(32, "must be at least 32 characters").optional(),
  RESONANCE_INTERNAL_SECRET: z.string().min(32, "must be at least 32 characters").optional(),
  RESONANCE_TOKEN_TTL: atLeast(60_000).default(7 * 24 * 3600 * 1000),
  RESONANCE_HOST: z.string().default("127.0.0.1"),
  RESONANCE_HTTP_HOST: z.string().optional(),
  RESONANCE_ADVERTISE_HOST: z.string().optional(),
  RESONANCE_HTTP_PORT: port.default(8080),
  RESONANCE_PUSH_PORT: port.default(15091),
  RESONANCE_LOGIC_PORT: port.default(15090),
  RESONANCE_METRICS_PORT: port.optional(),
  RESONANCE_INSTANCE_ID: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, "letters, digits, _ . - only").optional(),
  RESONANCE_SHUTDOWN_TIMEOUT: atLeast(100).default(30_000),
  RESONANCE_DRAIN_DELAY: duration.default(0),
  RESONANCE_WS_DRAIN_WINDOW: duration.default(5_000),
  RESONANCE_LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  RESONANCE_LOG_FORMAT: z.enum(["auto", "json", "pretty"]).default("auto"),
  RESONANCE_MAX_FRAME_BYTES: bytes.default(64 * 1024),
  RESONANCE_MAX_CONTENT_CHARS: positiveInt.default(8000),
  RESONANCE_WS_SEND_BUFFER: sendBuffer.default(1024 * 1024),
  RESONANCE_WS_PER_USER: positiveInt.default(16),
  RESONANCE_WS_PER_ADDRESS: positiveInt.default(512),
  RESONANCE_WS_IDLE_TIMEOUT: atLeast(1000).default(60_000),
  RESONANCE_WS_PING_INTERVAL: atLeast(100).default(25_000),
  RESONANCE_CHAT_RATE: positiveInt.default(50),
  RESONANCE_CHAT_BURST: positiveInt.default(200),
  RESONANCE_WS_CHAT_WINDOW: positiveInt.default(64),
  RESONANCE_CHAT_QUEUE: positiveInt.default(4096),
  RESONANCE_AUTH_RATE: positiveInt.default(10),
  RESONANCE_AUTH_BURST: positiveInt.default(50),
  RESONANCE_PRESENCE_BATCH: positiveInt.default(500),
  RESONANCE_PRESENCE_INTERVAL: atLeast(1).default(50),
  RESONANCE_ROUTE_TTL: atLeast(1000).default(120_000),
  RESONANCE_RELAY_BATCH: positiveInt.default(256),
  RESONANCE_RELAY_INTERVAL: atLeast(10).default(200),
  RESONANCE_NATS_SYNC_INTERVAL: duration.default(120_000),
  RESONANCE_PG_POOL: positiveInt.pipe(z.number().max(100, "at most 100")).default(4),
  RESONANCE_TASK_CONCURRENCY: positiveInt.default(256),
  RESONANCE_ACK_WAIT: atLeast(1000).default(30_000),
  RESONANCE_INBOX_FANOUT_LIMIT: positiveInt.default(200),
  RESONANCE_FAULTS: z.string().default(""),
  RESONANCE_NAMESPACE: z
    .string()
    .regex(/^[a-z0-9_]{0,32}$/, "lowercase letters, digits and _ only")
    .default(""),
});

/** The name of every setting (environment variable). */
export const SETTING_NAMES: readonly string[] = Object.freeze(Object.keys(schema.shape));

export type RawEnv = Record<string, string | undefined>;

export interface Config {
  readonly databaseUrl: string | undefined;
  readonly redisUrl: string | undefined;
  readonly natsUrl: string | undefined;
  readonly etcdEndpoints: readonly string[];
  /** Static logic addresses (host:port) for gateways; when empty, logic is found in the registry. */
  readonly logicAddresses: readonly string[];
  readonly dataDir: string;
  /** Undefined means: embedded mode, generate one and keep it in the data dir. */
  readonly tokenSecret: string | undefined;
  readonly tokenTtlMs: number;
  /**
   * Shared by every instance: internal gRPC calls carry it and servers refuse calls without it.
   * Undefined: internal ports are open to whoever can reach them (loopback by default).
   */
  readonly internalSecret: string | undefined;
  readonly instanceId: string;
  readonly logLevel: string;
  /** `auto`: human lines when stdout is a terminal, JSON lines otherwise. */
  readonly logFormat: "auto" | "json" | "pretty";
  readonly listen: {
    readonly host: string;
    readonly httpHost: string;
    readonly advertiseHost: string;
    readonly httpPort: number;
    readonly pushPort: number;
    readonly logicPort: number;
    /** Undefined: the per-service default (gateway 9092, logic 9091, task 9090). */
    readonly metricsPort: number | undefined;
  };
  readonly shutdown: { readonly timeoutMs: number; readonly drainDelayMs: number; readonly wsDrainWindowMs: number };
  readonly limits: {
    readonly maxFrameBytes: number;
    readonly maxContentChars: number;
    /** Bytes a connection may have waiting to be written before it is closed as a slow consumer (1013). */
    readonly wsSendBufferBytes: number;
    /** Most WebSocket connections of one user on one gateway, and from one client address. */
    readonly wsPerUser: number;
    readonly wsPerAddress: number;
    readonly wsIdleTimeoutMs: number;
    readonly wsPingIntervalMs: number;
    readonly chatRatePerSec: number;
    readonly chatBurst: number;
    /** Most chats of one connection waiting for their ack (beyond: `resource_exhausted` at once). */
    readonly wsChatWindow: number;
    /** Most chats a gateway holds waiting for a call to logic (beyond: `resource_exhausted` at once). */
    readonly chatQueue: number;
    /** Login/Register attempts per second per client address, and burst. */
    readonly authRatePerSec: number;
    readonly authBurst: number;
  };
  readonly presence: { readonly batchSize: number; readonly intervalMs: number; readonly routeTtlMs: number };
  readonly relay: { readonly batchSize: number; readonly intervalMs: number };
  /** The NATS server's `jetstream.sync_interval` (0: it syncs every write, or the stream is replicated). */
  readonly natsSyncIntervalMs: number;
  /** PostgreSQL connections per process. */
  readonly pgPoolSize: number;
  readonly task: { readonly concurrency: number; readonly ackWaitMs: number };
  /**
   * Sessions with more members are "large": their messages get no inbox rows (fan-out on read);
   * logic decides it per message when it builds the queue event.
   */
  readonly inboxFanoutLimit: number;
  /** Fault injection for tests: "name=ms" or "name=hang", comma-separated. Empty by default. */
  readonly faults: ReadonlyMap<string, number | "hang">;
  /**
   * Empty in production. When set, keeps this deployment's NATS stream and subjects, Redis keys
   * and etcd keys apart from others on the same servers (used by the tests).
   */
  readonly namespace: string;
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

function parseFaults(spec: string): Map<string, number | "hang"> {
  const faults = new Map<string, number | "hang">();
  for (const part of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
    const [name, value] = part.split("=");
    if (!name || !value || !(value === "hang" || /^\d+$/.test(value))) {
      throw new ConfigError(`RESONANCE_FAULTS: "${part}" is not name=<ms> or name=hang`);
    }
    faults.set(name, value === "hang" ? "hang" : Number(value));
  }
  return faults;
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/**
 * A listen host as the socket layer reads it: numeric forms normalised the way `listen()` takes
 * them ("0" → "0.0.0.0", "127.1" → "127.0.0.1", "::0" → "::"); names lowercased; "" stays "".
 */
function normalizeHost(host: string): string {
  const h = host.trim().replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (h === "") return "";
  try {
    const parsed = new URL(isIP(h) === 6 ? `http://[${h}]/` : `http://${h}/`).hostname;
    return parsed.replace(/^\[(.*)\]$/, "$1");
  } catch {
    return h;
  }
}

/** True when listening on `host` means every address of the machine ("", "0", "0.0.0.0", "::", "::0", ...). */
export function isWildcardHost(host: string): boolean {
  const h = normalizeHost(host);
  return h === "" || h === "0.0.0.0" || h === "::";
}

/** True only for addresses nobody else can reach: 127.0.0.0/8, ::1 (IPv4-mapped too) and `localhost`. */
export function isLoopbackHost(host: string): boolean {
  const h = normalizeHost(host);
  if (h === "localhost") return true;
  const v = isIP(h);
  return v !== 0 && LOOPBACK.check(h, v === 4 ? "ipv4" : "ipv6");
}

/**
 * Whether the role's internal gRPC ports (logic, PushService) must require the shared secret
 * from the configuration. `all` without etcd makes its own (see App): nobody outside the process
 * can find its ports, and its own calls carry it.
 */
export function needsInternalSecret(config: Config, role: "gateway" | "logic" | "task" | "all"): boolean {
  if (role === "task") return false; // no internal port of its own
  if (role === "all" && config.etcdEndpoints.length === 0) return false;
  return !isLoopbackHost(config.listen.host);
}

/**
 * Checks what only the role decides, before anything is opened. Throws ConfigError naming the
 * variable.
 */
export function checkRole(config: Config, role: "gateway" | "logic" | "task" | "all"): void {
  if ((role === "logic" || role === "all") && config.databaseUrl && !config.tokenSecret) {
    throw new ConfigError("RESONANCE_TOKEN_SECRET: required when RESONANCE_DATABASE_URL is set (every logic instance must share it)");
  }
  const wildcard = isWildcardHost(config.listen.host);
  if (needsInternalSecret(config, role) && !config.internalSecret) {
    throw new ConfigError(
      `RESONANCE_INTERNAL_SECRET: required unless RESONANCE_HOST is a loopback address (it is "${config.listen.host}": the internal gRPC ports would be reachable from other machines)`,
    );
  }
  if (config.etcdEndpoints.length > 0 && wildcard && config.listen.advertiseHost === "127.0.0.1" && role !== "task") {
    throw new ConfigError(
      "RESONANCE_ADVERTISE_HOST: required when RESONANCE_HOST is a wildcard and etcd is used (other instances must reach this one)",
    );
  }
}

/** Parses and validates the settings once. Throws ConfigError naming the variable on bad input. */
export function parseConfig(env: RawEnv): Config {
  const result = schema.safeParse(env);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `${String(i.path[0] ?? "config")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join("\n  ")}`);
  }
  const e = result.data;
  const host = e.RESONANCE_HOST;
  return Object.freeze({
    databaseUrl: e.RESONANCE_DATABASE_URL,
    redisUrl: e.RESONANCE_REDIS_URL,
    natsUrl: e.RESONANCE_NATS_URL,
    etcdEndpoints: Object.freeze(e.RESONANCE_ETCD_ENDPOINTS),
    logicAddresses: Object.freeze(e.RESONANCE_LOGIC_ADDRESSES),
    dataDir: e.RESONANCE_DATA_DIR,
    tokenSecret: e.RESONANCE_TOKEN_SECRET,
    tokenTtlMs: e.RESONANCE_TOKEN_TTL,
    internalSecret: e.RESONANCE_INTERNAL_SECRET,
    instanceId: e.RESONANCE_INSTANCE_ID ?? randomBytes(4).toString("hex"),
    logLevel: e.RESONANCE_LOG_LEVEL,
    logFormat: e.RESONANCE_LOG_FORMAT,
    listen: Object.freeze({
      host,
      httpHost: e.RESONANCE_HTTP_HOST ?? host,
      advertiseHost: e.RESONANCE_ADVERTISE_HOST ?? (isWildcardHost(host) ? "127.0.0.1" : host),
      httpPort: e.RESONANCE_HTTP_PORT,
      pushPort: e.RESONANCE_PUSH_PORT,
      logicPort: e.RESONANCE_LOGIC_PORT,
      metricsPort: e.RESONANCE_METRICS_PORT,
    }),
    shutdown: Object.freeze({
      timeoutMs: e.RESONANCE_SHUTDOWN_TIMEOUT,
      drainDelayMs: e.RESONANCE_DRAIN_DELAY,
      wsDrainWindowMs: e.RESONANCE_WS_DRAIN_WINDOW,
    }),
    limits: Object.freeze({
      maxFrameBytes: e.RESONANCE_MAX_FRAME_BYTES,
      maxContentChars: e.RESONANCE_MAX_CONTENT_CHARS,
      wsSendBufferBytes: e.RESONANCE_WS_SEND_BUFFER,
      wsPerUser: e.RESONANCE_WS_PER_USER,
      wsPerAddress: e.RESONANCE_WS_PER_ADDRESS,
      wsIdleTimeoutMs: e.RESONANCE_WS_IDLE_TIMEOUT,
      wsPingIntervalMs: e.RESONANCE_WS_PING_INTERVAL,
      chatRatePerSec: e.RESONANCE_CHAT_RATE,
      chatBurst: e.RESONANCE_CHAT_BURST,
      wsChatWindow: e.RESONANCE_WS_CHAT_WINDOW,
      chatQueue: e.RESONANCE_CHAT_QUEUE,
      authRatePerSec: e.RESONANCE_AUTH_RATE,
      authBurst: e.RESONANCE_AUTH_BURST,
    }),
    presence: Object.freeze({
      batchSize: e.RESONANCE_PRESENCE_BATCH,
      intervalMs: e.RESONANCE_PRESENCE_INTERVAL,
      routeTtlMs: e.RESONANCE_ROUTE_TTL,
    }),
    relay: Object.freeze({ batchSize: e.RESONANCE_RELAY_BATCH, intervalMs: e.RESONANCE_RELAY_INTERVAL }),
    natsSyncIntervalMs: e.RESONANCE_NATS_SYNC_INTERVAL,
    pgPoolSize: e.RESONANCE_PG_POOL,
    task: Object.freeze({ concurrency: e.RESONANCE_TASK_CONCURRENCY, ackWaitMs: e.RESONANCE_ACK_WAIT }),
    inboxFanoutLimit: e.RESONANCE_INBOX_FANOUT_LIMIT,
    faults: parseFaults(e.RESONANCE_FAULTS),
    namespace: e.RESONANCE_NAMESPACE,
  });
}
