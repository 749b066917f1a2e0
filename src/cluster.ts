import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Config } from "./config/config.js";

export interface ClusterOptions {
  /** Number of gateways (1-9). */
  readonly gateways: number;
  /** Run scripts/dev-services.sh first. */
  readonly services: boolean;
  /** The environment the processes inherit (and the source of the URLs and ports). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Children log human lines (RESONANCE_LOG_FORMAT=pretty) unless the format is set. */
  readonly pretty: boolean;
  readonly out: NodeJS.WritableStream;
  /** Ends the cluster like Ctrl-C (tests). Default: SIGINT and SIGTERM of this process. */
  readonly signal?: AbortSignal;
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DEFAULTS: Record<string, string> = {
  RESONANCE_DATABASE_URL: "postgres://postgres@127.0.0.1:5432/resonance",
  RESONANCE_REDIS_URL: "redis://127.0.0.1:6379",
  RESONANCE_NATS_URL: "nats://127.0.0.1:4222",
  RESONANCE_ETCD_ENDPOINTS: "http://127.0.0.1:2379",
  RESONANCE_NAMESPACE: "local",
};
const SECRETS = ["RESONANCE_TOKEN_SECRET", "RESONANCE_INTERNAL_SECRET"] as const;
const READY_TIMEOUT_MS = 120_000;

interface Member {
  readonly name: string;
  readonly role: "logic" | "task" | "gateway";
  readonly env: Record<string, string>;
  readonly health: string;
  readonly url?: string;
  proc?: ChildProcess;
  exited?: Promise<number>;
}

/**
 * The secrets every instance shares: from the environment when set, else from `file`, which is
 * written (mode 600) on the first run and read on every later one, so tokens stay valid across
 * restarts of the cluster.
 */
export async function clusterSecrets(file: string, env: Readonly<Record<string, string | undefined>>): Promise<Record<string, string>> {
  const kept: Record<string, string> = {};
  const text = await readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return "";
    throw err;
  });
  for (const line of text.split("\n")) {
    const m = /^(RESONANCE_[A-Z_]+)=(.+)$/.exec(line.trim());
    if (m) kept[m[1]!] = m[2]!;
  }
  let changed = false;
  for (const name of SECRETS) {
    if (env[name]) kept[name] = env[name]!;
    else if (!kept[name]) {
      kept[name] = randomBytes(32).toString("hex");
      changed = true;
    }
  }
  if (changed) {
    await mkdir(join(file, ".."), { recursive: true });
    const body = SECRETS.map((n) => `${n}=${kept[n]}`).join("\n");
    await writeFile(file, `# made by \`resonance cluster\`; shared by every instance, reused on every run\n${body}\n`, { mode: 0o600 });
  }
  return Object.fromEntries(SECRETS.map((n) => [n, kept[n]!]));
}

/** Runs a child to the end with its output passed through; resolves with its exit code. */
function runToEnd(cmd: string, args: string[], env: Record<string, string | undefined>, out: NodeJS.WritableStream): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.pipe(out, { end: false });
    child.stderr.pipe(out, { end: false });
    child.once("error", () => resolve(127));
    child.once("exit", (code) => resolve(code ?? 1));
  });
}

function prefixLines(stream: NodeJS.ReadableStream, prefix: string, out: NodeJS.WritableStream): void {
  let buf = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk: string) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      out.write(`${prefix}${buf.slice(0, i)}\n`);
      buf = buf.slice(i + 1);
    }
  });
}

async function isReady(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

/**
 * A local cluster: infrastructure (unless `services` is false), database, secrets, migrations,
 * then logic, task and the gateways as child processes, with their output prefixed by name. Resolves
 * with the exit code once every child has exited after Ctrl-C / SIGTERM / `signal` (or a failed start).
 */
export async function runCluster(config: Config, opts: ClusterOptions): Promise<number> {
  const say = (line: string) => void opts.out.write(`${line}\n`);
  if (!Number.isInteger(opts.gateways) || opts.gateways < 1 || opts.gateways > 9) {
    say("resonance cluster: --gateways must be a number from 1 to 9");
    return 2;
  }
  if (opts.services) {
    say("cluster: making sure PostgreSQL, Redis, NATS and etcd run (scripts/dev-services.sh)");
    const code = await runToEnd("bash", [join(ROOT, "scripts", "dev-services.sh")], { ...opts.env }, opts.out);
    if (code !== 0) {
      say(`resonance cluster: scripts/dev-services.sh failed (exit ${code}); start the servers, or pass --no-services`);
      return 1;
    }
  }
  const secretsFile = join(config.dataDir, "cluster.env");
  const base: Record<string, string> = {};
  for (const [k, v] of Object.entries(opts.env)) if (v !== undefined) base[k] = v;
  for (const [k, v] of Object.entries(DEFAULTS)) base[k] ||= v;
  Object.assign(base, await clusterSecrets(secretsFile, opts.env));
  if (opts.pretty && !opts.env.RESONANCE_LOG_FORMAT) base.RESONANCE_LOG_FORMAT = "pretty";
  const cli = join(ROOT, "bin", "resonance.js");

  say(`cluster: secrets in ${secretsFile}; migrating ${base.RESONANCE_DATABASE_URL!.replace(/\/\/[^@/]*@/, "//")}`);
  const migrated = await runToEnd(process.execPath, [cli, "migrate"], base, opts.out);
  if (migrated !== 0) {
    say(`resonance cluster: migrate failed (exit ${migrated})`);
    return 1;
  }

  const l = config.listen;
  const metrics = l.metricsPort ?? 9090;
  const host = l.host === "0.0.0.0" || l.host === "::" ? "127.0.0.1" : l.host;
  const members: Member[] = [
    { name: "task", role: "task", env: { RESONANCE_INSTANCE_ID: "task1", RESONANCE_METRICS_PORT: String(metrics) }, health: `http://${host}:${metrics}/readyz` },
    {
      name: "logic",
      role: "logic",
      env: { RESONANCE_INSTANCE_ID: "logic1", RESONANCE_METRICS_PORT: String(metrics + 1), RESONANCE_LOGIC_PORT: String(l.logicPort) },
      health: `http://${host}:${metrics + 1}/readyz`,
    },
  ];
  for (let i = 0; i < opts.gateways; i++) {
    members.push({
      name: `gw${i + 1}`,
      role: "gateway",
      env: {
        RESONANCE_INSTANCE_ID: `gw${i + 1}`,
        RESONANCE_HTTP_PORT: String(l.httpPort + i),
        RESONANCE_PUSH_PORT: String(l.pushPort + i),
        RESONANCE_METRICS_PORT: String(metrics + 2 + i),
      },
      health: `http://${host}:${metrics + 2 + i}/readyz`,
      url: `http://${host}:${l.httpPort + i}`,
    });
  }
  const width = Math.max(...members.map((m) => m.name.length));
  for (const m of members) {
    // A process group of its own: a terminal's Ctrl-C reaches this supervisor only, which then
    // signals each process once (a second signal would make it exit at once).
    const proc = spawn(process.execPath, [cli, m.role], { cwd: ROOT, env: { ...base, ...m.env }, stdio: ["ignore", "pipe", "pipe"], detached: true });
    prefixLines(proc.stdout!, `[${m.name.padEnd(width)}] `, opts.out);
    prefixLines(proc.stderr!, `[${m.name.padEnd(width)}] `, opts.out);
    m.proc = proc;
    m.exited = new Promise((resolve) => proc.once("exit", (code, sig) => resolve(code ?? (sig ? 128 : 1))));
  }

  let stopping = false;
  const stopAll = (signal: NodeJS.Signals) => {
    for (const m of members) if (m.proc && m.proc.exitCode === null && m.proc.signalCode === null) m.proc.kill(signal);
  };
  let firstStop: number | undefined;
  const onStop = () => {
    stopping = true;
    // A second Ctrl-C ends them at once; a copy of the first (npx passes signals on) does not.
    if (firstStop === undefined) {
      firstStop = Date.now();
      stopAll("SIGTERM");
    } else if (Date.now() - firstStop > 1_000) stopAll("SIGKILL");
  };
  if (opts.signal) opts.signal.addEventListener("abort", onStop, { once: true });
  else {
    process.on("SIGINT", onStop);
    process.on("SIGTERM", onStop);
  }
  for (const m of members) {
    void m.exited!.then((code) => {
      if (!stopping) say(`cluster: ${m.name} exited (${code}) — the others keep running; Ctrl-C stops them`);
    });
  }

  const deadline = Date.now() + READY_TIMEOUT_MS;
  const pending = new Set(members);
  while (pending.size > 0 && !stopping) {
    for (const m of [...pending]) {
      if (await isReady(m.health)) pending.delete(m);
      else if (m.proc!.exitCode !== null) {
        say(`resonance cluster: ${m.name} exited before it was ready; stopping the others`);
        onStop();
      }
    }
    if (Date.now() > deadline) {
      say(`resonance cluster: not ready within ${READY_TIMEOUT_MS / 1000} s: ${[...pending].map((m) => m.name).join(", ")}; stopping`);
      onStop();
    }
    if (pending.size > 0) await new Promise((r) => setTimeout(r, 250));
  }
  if (!stopping) {
    const gw = members.filter((m) => m.url);
    const logic = members.find((m) => m.role === "logic")!;
    say(
      [
        "",
        `Resonance cluster is up (namespace "${base.RESONANCE_NAMESPACE}", ${opts.gateways} gateway${opts.gateways > 1 ? "s" : ""}):`,
        ...gw.map((m) => `  ${m.name.padEnd(8)} ${m.url}   WebSocket ${m.url!.replace("http", "ws")}/ws   health ${m.health}`),
        `  ${"logic".padEnd(8)} ${host}:${l.logicPort}   health ${logic.health}`,
        `  ${"task".padEnd(8)} health ${members[0]!.health}`,
        `  secrets  ${secretsFile} (reused on every run)`,
        `  chat     npx resonance chat --user alice --url ${gw.at(-1)!.url}`,
        "  stop     Ctrl-C (each process shuts down gracefully)",
        "",
      ].join("\n"),
    );
  }
  const codes = await Promise.all(members.map((m) => m.exited!));
  process.off("SIGINT", onStop);
  process.off("SIGTERM", onStop);
  return codes.every((c) => c === 0) ? 0 : 1;
}
