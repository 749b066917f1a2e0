import type { ParseArgsConfig } from "node:util";

/** One `resonance` command: what `--help` prints and which options it takes. */
export interface CommandSpec {
  readonly name: string;
  readonly summary: string;
  readonly usage: string;
  readonly details: string;
  readonly options: NonNullable<ParseArgsConfig["options"]>;
}

const HELP = { help: { type: "boolean", short: "h" } } as const;

const SETTINGS_NOTE = `Settings come from RESONANCE_* environment variables (README: "Settings"), or from a JSON
file named by RESONANCE_CONFIG_FILE (environment variables win).`;

const SERVICE_DETAILS = (what: string, settings: string) => `${what}

Useful settings: ${settings}.
SIGTERM or Ctrl-C shuts it down gracefully and prints the shutdown report.
${SETTINGS_NOTE}`;

/** Every command, in the order `resonance --help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [
  {
    name: "all",
    summary: "gateway, logic and task in one process (what `npm start` runs)",
    usage: "resonance all",
    details: SERVICE_DETAILS(
      "Runs the three services in one process. Without infrastructure URLs it needs nothing else:\nPGlite saved in RESONANCE_DATA_DIR (./data), an in-process queue, in-memory presence and\nregistry. Migrations are applied on start. The services call each other in process; without\netcd no internal port is opened.",
      "RESONANCE_HTTP_PORT (8080), RESONANCE_DATA_DIR, RESONANCE_LOG_FORMAT",
    ),
    options: HELP,
  },
  {
    name: "gateway",
    summary: "the public HTTP API and WebSocket server",
    usage: "resonance gateway",
    details: SERVICE_DETAILS(
      "Serves the public API and /ws on RESONANCE_HTTP_PORT and the internal PushService. Finds logic\ninstances in etcd (or RESONANCE_LOGIC_ADDRESSES); it is ready only while it can call one.",
      "RESONANCE_HTTP_PORT, RESONANCE_PUSH_PORT, RESONANCE_ETCD_ENDPOINTS, RESONANCE_INTERNAL_SECRET",
    ),
    options: HELP,
  },
  {
    name: "logic",
    summary: "auth, sessions, messages, presence and the outbox relay",
    usage: "resonance logic",
    details: SERVICE_DETAILS(
      "Needs a migrated database (run `resonance migrate` first).",
      "RESONANCE_DATABASE_URL, RESONANCE_TOKEN_SECRET, RESONANCE_LOGIC_PORT, RESONANCE_INTERNAL_SECRET",
    ),
    options: HELP,
  },
  {
    name: "task",
    summary: "delivery: inbox rows and pushes to gateways",
    usage: "resonance task",
    details: SERVICE_DETAILS("Consumes the queue, writes inbox rows, pushes to the gateways.", "RESONANCE_NATS_URL, RESONANCE_DATABASE_URL, RESONANCE_REDIS_URL"),
    options: HELP,
  },
  {
    name: "migrate",
    summary: "create the database if missing, apply migrations, exit",
    usage: "resonance migrate",
    details: `Applies the schema migrations this build needs and exits. With RESONANCE_DATABASE_URL it first
creates that database when it does not exist; without it, it migrates the PGlite database in
RESONANCE_DATA_DIR.
${SETTINGS_NOTE}`,
    options: HELP,
  },
  {
    name: "cluster",
    summary: "a local cluster in one command: logic, task and two gateways",
    usage: "resonance cluster [--gateways N] [--no-services]",
    details: `Runs a cluster on this machine: makes sure PostgreSQL, Redis, NATS and etcd run
(scripts/dev-services.sh), creates the database, makes the secrets once (kept in
RESONANCE_DATA_DIR/cluster.env and reused), migrates, then starts logic, task and the gateways
under RESONANCE_NAMESPACE (default "local") and prints their URLs. Ctrl-C stops them all.

Options:
  --gateways N     how many gateways (default 2): HTTP ports from RESONANCE_HTTP_PORT (8080) up
  --no-services    do not run scripts/dev-services.sh (the servers run already, or elsewhere)
${SETTINGS_NOTE}`,
    options: { ...HELP, gateways: { type: "string" }, "no-services": { type: "boolean" } },
  },
  {
    name: "chat",
    summary: "the terminal chat client",
    usage: "resonance chat --user NAME [--password P] [--url URL] [--session ID|@user]",
    details: `Logs in as NAME (registering it on first use) and chats in the Resonance Room, or in the
session given. Without --password the password is resonance-NAME (only for a server on this
machine). In the chat, /help lists the commands (/list, /open @user, /open ID, /quit).

Options:
  --user NAME        who you are (required)
  --password P       your password (default: resonance-NAME)
  --url URL          the gateway (default http://127.0.0.1:RESONANCE_HTTP_PORT, i.e. :8080)
  --session ID       start in this session: an id from /list, or @user for a one-to-one chat`,
    options: { ...HELP, user: { type: "string" }, password: { type: "string" }, url: { type: "string" }, session: { type: "string" } },
  },
  {
    name: "setup",
    summary: "prepare this installation (`npm install` runs it)",
    usage: "resonance setup",
    details: `Compiles the CLI to JavaScript and makes the template of the embedded database, both kept
under node_modules/.cache/resonance, so that the first \`npm start\` is quick. Safe to run again.`,
    options: HELP,
  },
];

/** `resonance --help`. */
export function usage(version: string): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `resonance ${version}: an instant-messaging backend

usage: resonance <command> [options]

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n")}

  help [command]  this text, or a command's own (also: resonance <command> --help)
  --version       the version

${SETTINGS_NOTE}`;
}

/** `resonance help <command>` and `resonance <command> --help`. */
export function commandHelp(spec: CommandSpec): string {
  return `usage: ${spec.usage}\n\n${spec.summary}.\n\n${spec.details}`;
}

/** Levenshtein distance, for "did you mean". */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** The known name closest to `name`, if one is close enough to be a likely typo. */
export function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(name.length / 4)) ? best : undefined;
}

/**
 * One warning per `RESONANCE_*` name in `names` that is not a setting (`known`), naming the
 * closest setting when there is one. Names under `RESONANCE_TEST_` belong to the test suite.
 */
export function unknownSettingWarnings(names: Iterable<string>, known: readonly string[]): string[] {
  const warnings: string[] = [];
  for (const name of names) {
    if (!name.startsWith("RESONANCE_") || known.includes(name) || name.startsWith("RESONANCE_TEST_")) continue;
    const guess = closest(name, known);
    warnings.push(`${name} is not a setting and is ignored${guess ? `; did you mean ${guess}?` : ` (README: "Settings" lists them)`}`);
  }
  return warnings;
}
