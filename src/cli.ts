import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { App, type Role } from "./app.js";
import { ConfigError, parseConfig, type Config, type RawEnv } from "./config/config.js";

// The only module that reads process.env / argv and calls process.exit.

/** A repeat of the first signal within this long, under npm, is npm passing the same signal on. */
const NPM_ECHO_MS = 1_000;

const USAGE = `usage: resonance <command>

commands:
  all        gateway, logic and task in one process (embedded storage and queue unless URLs are set)
  gateway    the public HTTP/WebSocket gateway
  logic      auth, sessions and messages
  task       delivery: inbox writes and pushes
  migrate    apply database migrations and exit
  chat       terminal client: resonance chat --user NAME [--password P] [--url http://127.0.0.1:8080] [--session ID|@user]

Settings come from RESONANCE_* environment variables (see README), optionally from a JSON
file named by RESONANCE_CONFIG_FILE (environment variables win).`;

function loadEnv(): RawEnv {
  const file = process.env.RESONANCE_CONFIG_FILE;
  if (!file) return process.env;
  let fromFile: unknown;
  try {
    fromFile = JSON.parse(readFileSync(file, "utf8"));
  } catch (err) {
    throw new ConfigError(`RESONANCE_CONFIG_FILE: cannot read ${file}: ${(err as Error).message}`);
  }
  if (!fromFile || typeof fromFile !== "object" || Array.isArray(fromFile)) {
    throw new ConfigError("RESONANCE_CONFIG_FILE: expected a JSON object of RESONANCE_* settings");
  }
  const env: RawEnv = {};
  for (const [k, v] of Object.entries(fromFile)) env[k] = Array.isArray(v) ? v.join(",") : String(v);
  return { ...env, ...process.env };
}

function fail(message: string): never {
  process.stderr.write(`resonance: ${message}\n`);
  process.exit(2);
}

async function runMigrate(config: Config): Promise<void> {
  const { createStorage } = await import("./infra/storage/index.js");
  const { migrate } = await import("./infra/storage/migrate.js");
  const { migrations } = await import("./logic/migrations.js");
  const { createLogger } = await import("./observability/log.js");
  const log = createLogger("migrate", config.instanceId, config.logLevel);
  const storage = createStorage({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    applicationName: `resonance-migrate-${config.instanceId}`,
    log,
  });
  try {
    await storage.start();
    const r = await migrate(storage, migrations, log);
    log.info({ applied: r.applied }, r.applied.length ? "migrations applied" : "schema is up to date");
  } finally {
    await storage.close();
  }
}

async function runService(config: Config, role: Role): Promise<never> {
  let app: App;
  try {
    app = new App(config, role);
  } catch (err) {
    fail((err as Error).message);
  }
  let signals = 0;
  let first: { signal: NodeJS.Signals; at: number } | undefined;
  const stop = (reason: string, code: number) => {
    void app.shutdown(reason, code).then(
      (report) => process.exit(report.exitCode),
      () => process.exit(1),
    );
  };
  // A reader that went away (a closed pipe) must not turn into a crash loop: logs are lost, service goes on.
  process.stdout.on("error", () => {});
  // Started by npm or npx: npm passes SIGTERM and SIGINT on to its child, so a signal sent to the
  // whole process group (Ctrl-C in a terminal, systemd's default KillMode) arrives here twice
  // within milliseconds. That is one request to stop, not the second signal that forces an exit.
  const viaNpm = Boolean(process.env.npm_lifecycle_event);
  const onSignal = (sig: NodeJS.Signals) => {
    if (viaNpm && first?.signal === sig && Date.now() - first.at < NPM_ECHO_MS) return;
    first ??= { signal: sig, at: Date.now() };
    if (++signals > 1) {
      app.log.warn({ signal: sig }, "second signal: exiting now");
      process.exit(130);
    }
    stop(`signal ${sig}`, 0);
  };
  if (viaNpm) {
    // npx (and an `npm start` whose npm was killed) leaves a shell or nothing between the signal
    // and this process: when the process that started us goes away, stop as if it had passed on SIGTERM.
    const parent = process.ppid;
    setInterval(() => {
      if (process.ppid !== parent && signals === 0) {
        signals++;
        stop("parent process exited", 0);
      }
    }, 500).unref();
  }
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
  process.on("uncaughtException", (err) => {
    app.log.fatal({ err }, "uncaught exception");
    stop("uncaught exception", 1);
  });
  process.on("unhandledRejection", (err) => {
    app.log.fatal({ err }, "unhandled rejection");
    stop("unhandled rejection", 1);
  });
  try {
    await app.start();
  } catch (err) {
    // A signal during start: the shutdown under way reports and exits.
    if (signals > 0) return new Promise<never>(() => {});
    app.log.fatal({ err }, "startup failed");
    process.stderr.write(`resonance ${role}: startup failed: ${(err as Error).message}\n`);
    process.exit(1);
  }
  void app.lost.then((err) => {
    app.log.error({ err }, "a dependency is gone for good");
    stop(`dependency lost: ${err.message}`, 1);
  });
  if (role === "all" || role === "gateway") {
    const port = app.gateway?.httpPort;
    process.stderr.write(`Resonance is up: http://127.0.0.1:${port} (WebSocket: ws://127.0.0.1:${port}/ws?token=...)\n`);
  }
  return new Promise<never>(() => {});
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (!command || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(USAGE + "\n");
    return;
  }
  if (command === "chat") {
    const { values } = parseArgs({
      args: rest,
      options: { user: { type: "string" }, password: { type: "string" }, url: { type: "string" }, session: { type: "string" } },
    });
    if (!values.user) fail("chat: --user NAME is required");
    const { runChat } = await import("./client/chat-cli.js");
    const port = process.env.RESONANCE_HTTP_PORT ?? "8080";
    const chat = runChat({
      url: values.url ?? `http://127.0.0.1:${port}`,
      user: values.user,
      ...(values.password ? { password: values.password } : {}),
      ...(values.session ? { session: values.session } : {}),
      input: process.stdin,
      output: process.stdout,
    });
    await chat.catch((err: Error & { code?: string }) => fail(`chat: ${err.code ? `${err.code}: ` : ""}${err.message}`));
    process.exit(0);
  }
  let config: Config;
  try {
    config = parseConfig(loadEnv());
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
  switch (command) {
    case "migrate":
      await runMigrate(config);
      return;
    case "all":
    case "gateway":
    case "logic":
    case "task":
      await runService(config, command);
      return;
    default:
      fail(`unknown command "${command}"\n\n${USAGE}`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`resonance: ${(err as Error)?.stack ?? String(err)}\n`);
  process.exit(1);
});
