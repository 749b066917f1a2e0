import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import type { App, Role } from "./app.js";
import { COMMANDS, closest, commandHelp, unknownSettingWarnings, usage, type CommandSpec } from "./cli-help.js";
import { ConfigError, SETTING_NAMES, parseConfig, type Config, type RawEnv } from "./config/config.js";
import type { Logger } from "./observability/log.js";

// The only module that reads process.env / argv and calls process.exit. Everything heavy is
// imported when a command needs it, so `--help` or `chat` do not load the services.

/** A repeat of the first signal within this long, under npm, is npm passing the same signal on. */
const NPM_ECHO_MS = 1_000;

/** Not settings of the services, but read here. */
const CLI_VARIABLES = ["RESONANCE_CONFIG_FILE"];

class UsageError extends Error {}

function version(): string {
  return (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

function debugLevel(): boolean {
  return process.env.RESONANCE_LOG_LEVEL === "debug" || process.env.RESONANCE_LOG_LEVEL === "trace";
}

/** A one-line error (the stack only with RESONANCE_LOG_LEVEL=debug), then exit `code`. */
function fail(message: string, code = 2, err?: unknown): never {
  process.stderr.write(`resonance: ${message}\n`);
  if (debugLevel() && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(code);
}

function warn(message: string): void {
  process.stderr.write(`resonance: warning: ${message}\n`);
}

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
  for (const w of unknownSettingWarnings(Object.keys(env), SETTING_NAMES)) warn(`${file}: ${w}`);
  return { ...env, ...process.env };
}

/** Parses the settings once; a misspelled RESONANCE_* name gets a warning naming the closest one. */
function loadConfig(): Config {
  try {
    for (const w of unknownSettingWarnings(Object.keys(process.env), [...SETTING_NAMES, ...CLI_VARIABLES])) warn(w);
    return parseConfig(loadEnv());
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message, 2, err);
    throw err;
  }
}

/** JSON lines unless stdout is a terminal (or RESONANCE_LOG_FORMAT says otherwise). */
function isPretty(config: Config): boolean {
  return config.logFormat === "pretty" || (config.logFormat === "auto" && process.stdout.isTTY === true);
}

async function createCliLogger(config: Config, service: string): Promise<Logger> {
  const { createLogger, prettyDestination } = await import("./observability/log.js");
  if (!isPretty(config)) return createLogger(service, config.instanceId, config.logLevel);
  const destination = await prettyDestination(process.stdout.isTTY === true && !process.env.NO_COLOR);
  return createLogger(service, config.instanceId, config.logLevel, { destination });
}

/** Parses a command's options; `--help` prints its help and exits. Unknown options are refused by name. */
function commandArgs(spec: CommandSpec, args: string[]): Record<string, string | boolean | undefined> {
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({ args, options: spec.options, strict: true, allowPositionals: true }));
  } catch (err) {
    throw new UsageError(`${spec.name}: ${(err as Error).message.replace(/\. To specify a positional.*$/s, "")}\n\n${commandHelp(spec)}`);
  }
  if (values.help) {
    process.stdout.write(`${commandHelp(spec)}\n`);
    process.exit(0);
  }
  if (positionals.length > 0) throw new UsageError(`${spec.name}: unexpected argument "${positionals[0]}"\n\n${commandHelp(spec)}`);
  return values as Record<string, string | boolean | undefined>;
}

/** The setting behind a port, for "port in use" errors. */
function portSetting(config: Config, role: Role, port: number): string | undefined {
  const l = config.listen;
  const gateway = role === "gateway" || role === "all";
  const logic = role === "logic" || role === "all";
  const metricsDefault = { gateway: 9092, logic: 9091, task: 9090, all: 9090 }[role];
  if ((l.metricsPort ?? metricsDefault) === port) return "RESONANCE_METRICS_PORT";
  if (gateway && l.httpPort === port) return "RESONANCE_HTTP_PORT";
  if (gateway && l.pushPort === port) return "RESONANCE_PUSH_PORT";
  if (logic && l.logicPort === port) return "RESONANCE_LOGIC_PORT";
  return undefined;
}

/** "port 9090 is already in use (RESONANCE_METRICS_PORT) …" when a listener could not bind. */
function explainStartFailure(err: unknown, config: Config, role: Role): string {
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    const n = e as NodeJS.ErrnoException & { port?: number };
    if (n.code === "EADDRINUSE" && typeof n.port === "number") {
      const setting = portSetting(config, role, n.port);
      return `port ${n.port} is already in use${setting ? ` (${setting})` : ""}: is another Resonance running? Stop it, or set ${setting ?? "the port's setting"} to a free port`;
    }
  }
  return (err as Error).message;
}

async function runMigrate(config: Config): Promise<void> {
  const { createStorage } = await import("./infra/storage/index.js");
  const { migrate } = await import("./infra/storage/migrate.js");
  const { migrations } = await import("./logic/migrations.js");
  const log = await createCliLogger(config, "migrate");
  if (config.databaseUrl) {
    const { ensureDatabase } = await import("./infra/storage/create-database.js");
    await ensureDatabase(config.databaseUrl, log);
  }
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

/** Never fails `npm install`: without a template the first start initializes its database in place. */
async function runSetup(config: Config): Promise<void> {
  const log = await createCliLogger(config, "setup");
  const { defaultTemplateCache, ensureTemplate } = await import("./infra/storage/pglite.js");
  try {
    const dir = await ensureTemplate(defaultTemplateCache(), log);
    log.info({ template: dir }, "setup done: the CLI is compiled and the embedded database template is ready");
  } catch (err) {
    log.warn({ err }, "no embedded database template (a new data directory will be initialized when it is first used, ~10 s)");
  }
}

/** What a person needs after the start: where to connect, and how to chat. */
function banner(app: App, role: Role, pretty: boolean): void {
  const c = app.config;
  const shown = (host: string) => (host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host);
  const health = `http://${shown(c.listen.host)}:${app.healthPort}/readyz`;
  if (role === "logic" || role === "task") {
    if (pretty) process.stdout.write(`\nResonance ${role} is up. Health: ${health}\n\n`);
    else app.log.info({ health }, `Resonance ${role} is up`);
    return;
  }
  const port = app.gateway?.httpPort ?? c.listen.httpPort;
  const base = `http://${shown(c.listen.httpHost)}:${port}`;
  const chat = `npx resonance chat --user alice${port === 8080 ? "" : ` --url ${base}`}`;
  const urls = { api: `${base}/`, websocket: `ws://${shown(c.listen.httpHost)}:${port}/ws?token=<token>`, web: `${base}/`, health, chat };
  if (!pretty) return void app.log.info(urls, "Resonance is up");
  process.stdout.write(
    [
      "",
      `Resonance is up${role === "gateway" ? " (gateway)" : ""}.`,
      `  Web page    ${base}/`,
      `  API         ${base}/resonance.gateway.v1.AuthService/Login (Connect: JSON or protobuf over HTTP)`,
      `  WebSocket   ${urls.websocket}`,
      `  Health      ${health}   metrics: /metrics`,
      `  Chat        in another terminal: ${chat}`,
      `  Stop        Ctrl-C (graceful; a second Ctrl-C exits at once)`,
      ...(app.gateway?.notReadyReason ? [`  Not ready   ${app.gateway.notReadyReason}`] : []),
      "",
      "",
    ].join("\n"),
  );
}

async function runService(config: Config, role: Role): Promise<never> {
  const { App } = await import("./app.js");
  const pretty = isPretty(config);
  const log = await createCliLogger(config, role);
  let app: App;
  try {
    app = new App(config, role, log);
  } catch (err) {
    fail((err as Error).message, 2, err);
  }
  let signals = 0;
  let first: { signal: NodeJS.Signals; at: number } | undefined;
  const stop = (reason: string, code: number) => {
    void app.shutdown(reason, code).then(
      async (report) => {
        if (pretty) {
          const { formatReport } = await import("./observability/log.js");
          process.stdout.write(`${formatReport(report)}\n`);
        }
        process.exit(report.exitCode);
      },
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
    if (pretty) process.stdout.write("\n");
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
    const why = explainStartFailure(err, config, role);
    app.log.fatal({ err }, "startup failed");
    fail(`${role}: startup failed: ${why}`, 1, err);
  }
  void app.lost.then((err) => {
    app.log.error({ err }, "a dependency is gone for good");
    stop(`dependency lost: ${err.message}`, 1);
  });
  banner(app, role, pretty);
  return new Promise<never>(() => {});
}

async function runChatCommand(values: Record<string, string | boolean | undefined>): Promise<void> {
  const user = values.user as string | undefined;
  if (!user) throw new UsageError(`chat: --user NAME is required\n\n${commandHelp(COMMANDS.find((c) => c.name === "chat")!)}`);
  const { runChat } = await import("./client/chat-cli.js");
  const port = process.env.RESONANCE_HTTP_PORT ?? "8080";
  const password = values.password as string | undefined;
  const session = values.session as string | undefined;
  await runChat({
    url: (values.url as string | undefined) ?? `http://127.0.0.1:${port}`,
    user,
    ...(password ? { password } : {}),
    ...(session ? { session } : {}),
    input: process.stdin,
    output: process.stdout,
  }).catch((err: Error & { code?: string }) => fail(`chat: ${err.code ? `${err.code}: ` : ""}${err.message}`, 1, err));
  process.exit(0);
}

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  if (!command || command === "--help" || command === "-h") return void process.stdout.write(`${usage(version())}\n`);
  if (command === "--version" || command === "-v" || command === "version") return void process.stdout.write(`${version()}\n`);
  if (command === "help") {
    const topic = rest[0];
    const spec = COMMANDS.find((c) => c.name === topic);
    if (topic && !spec) throw new UsageError(`help: no command "${topic}"${suggest(topic)}`);
    return void process.stdout.write(`${spec ? commandHelp(spec) : usage(version())}\n`);
  }
  const spec = COMMANDS.find((c) => c.name === command);
  if (!spec) throw new UsageError(`unknown command "${command}"${suggest(command)} (resonance --help lists the commands)`);
  const values = commandArgs(spec, rest);
  if (spec.name === "chat") return runChatCommand(values);
  const config = loadConfig();
  switch (spec.name) {
    case "migrate":
      return runMigrate(config);
    case "setup":
      return runSetup(config);
    case "cluster": {
      const { runCluster } = await import("./cluster.js");
      const code = await runCluster(config, {
        gateways: values.gateways === undefined ? 2 : Number(values.gateways),
        services: values["no-services"] !== true,
        env: process.env,
        pretty: isPretty(config),
        out: process.stdout,
      });
      process.exit(code);
      break;
    }
    default:
      await runService(config, spec.name as Role);
  }
}

function suggest(name: string): string {
  const guess = closest(name, COMMANDS.map((c) => c.name));
  return guess ? `; did you mean "${guess}"?` : "";
}

main().catch((err: unknown) => {
  if (err instanceof UsageError) fail(err.message, 2);
  fail(err instanceof Error ? err.message : String(err), 1, err);
});
