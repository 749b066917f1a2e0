import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createApi } from "../src/client/api.js";
import { freePort } from "./support/processes.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const STACK_FRAME = /^\s+at .+:\d+:\d+\)?$/m;

/** A command of the README, run as a user would (through npm / npx), with its output collected. */
class Command {
  readonly proc: ChildProcess;
  out = "";
  stdout = "";
  readonly exited: Promise<number | null>;
  readonly #waiters = new Set<() => void>();
  constructor(cmd: string, args: string[], env: Record<string, string>) {
    // Its own process group, so the clean-up can stop npm and everything it started at once (the shutdown
    // tests signal the pid an operator would: see npm-signals.test.ts).
    this.proc = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"], detached: true });
    const add = (c: string, stdout: boolean) => {
      this.out += c;
      if (stdout) this.stdout += c;
      for (const w of this.#waiters) w();
    };
    this.proc.stdout!.setEncoding("utf8").on("data", (c: string) => add(c, true));
    this.proc.stderr!.setEncoding("utf8").on("data", (c: string) => add(c, false));
    this.exited = new Promise((r) => this.proc.once("exit", (code) => r(code)));
  }
  /** Signals the whole process group (npm and what it started). */
  kill(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.proc.pid!, signal);
    } catch {
      // Already gone.
    }
  }
  /** Resolves when the output matches `text`; rejects with the output if the command exits first. */
  waitFor(text: string | RegExp): Promise<void> {
    const has = () => (typeof text === "string" ? this.out.includes(text) : text.test(this.out));
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!has()) return;
        this.#waiters.delete(check);
        resolve();
      };
      this.#waiters.add(check);
      void this.exited.then((code) => {
        if (!has()) reject(new Error(`exited ${code} without "${String(text)}" in its output:\n${this.out}`));
      });
      check();
    });
  }
}

/** The CLI itself, without npm in between (quick: for the checks that are not README commands). */
const cli = (args: string[], env: Record<string, string> = {}) => new Command(process.execPath, ["bin/resonance.js", ...args], env);

describe("README quick start", () => {
  let dataDir: string;
  let server: Command;
  let env: Record<string, string>;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "resonance-quickstart-"));
    env = {
      RESONANCE_DATA_DIR: dataDir,
      RESONANCE_HTTP_PORT: String(await freePort()),
      RESONANCE_LOGIC_PORT: String(await freePort()),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
    };
    server = new Command("npm", ["start"], env);
    await server.waitFor("Resonance is up");
  });
  afterAll(async () => {
    server?.kill("SIGTERM");
    await server?.exited;
    await rm(dataDir, { recursive: true, force: true });
  });

  it("quickstart - npm start says where the API, the WebSocket and the web page are and how to chat, and serves there", async () => {
    // Not a terminal here: JSON lines, the start banner one of them.
    const banner = server.stdout
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, string>)
      .find((l) => l.msg === "Resonance is up")!;
    const base = `http://127.0.0.1:${env.RESONANCE_HTTP_PORT}`;
    expect(banner).toMatchObject({ api: `${base}/`, web: `${base}/`, websocket: `ws://127.0.0.1:${env.RESONANCE_HTTP_PORT}/ws?token=<token>` });
    expect(banner.chat).toBe(`npx resonance chat --user alice --url ${base}`);
    const ready = await fetch(`http://127.0.0.1:${env.RESONANCE_METRICS_PORT}/readyz`);
    expect(ready.status).toBe(200);
  });

  it("quickstart - two terminals: npx resonance chat --user alice / bob talk in the Resonance Room, then one to one", async () => {
    const alice = new Command("npx", ["--no-install", "resonance", "chat", "--user", "alice"], env);
    const bob = new Command("npx", ["--no-install", "resonance", "chat", "--user", "bob"], env);
    await alice.waitFor("alice in Resonance Room");
    await bob.waitFor("bob in Resonance Room");
    expect(alice.out).toContain("registered new user alice");
    alice.proc.stdin!.write("hello from alice\n");
    await bob.waitFor(/alice: hello from alice/);
    bob.proc.stdin!.write("hi alice\n");
    await alice.waitFor(/bob: hi alice/);
    // Alice opens the one-to-one chat; bob sees it by her name, once.
    alice.proc.stdin!.write("/open @bob\npsst\n");
    await bob.waitFor(/\(alice\) alice: psst/);
    bob.proc.stdin!.write("/list\n");
    await bob.waitFor(/single:alice:bob\s+alice/);
    bob.proc.stdin!.write("/quit\n");
    alice.proc.stdin!.end("/quit\n");
    expect(await alice.exited).toBe(0);
    expect(await bob.exited).toBe(0);
    expect(bob.out.match(/psst/g)).toHaveLength(1);
    expect(bob.out).not.toMatch(/single:alice:bob\)/); // Never titled by its id when it has a name.
  });

  it("quickstart - names as the Go system shows them: the other member's nickname, the creator's in the first system message", async () => {
    const api = createApi(`http://127.0.0.1:${env.RESONANCE_HTTP_PORT}`);
    const carol = (await api.auth.register({ username: "carol", password: "pw-carol-1", nickname: "Carol C." })).accessToken;
    const dan = (await api.auth.register({ username: "dan", password: "pw-dan-1", nickname: "Dan D." })).accessToken;
    const asCarol = createApi(`http://127.0.0.1:${env.RESONANCE_HTTP_PORT}`, { token: carol }).session;
    const asDan = createApi(`http://127.0.0.1:${env.RESONANCE_HTTP_PORT}`, { token: dan }).session;
    const { sessionId } = await asCarol.createSession({ members: ["dan"], type: 1 });
    const group = (await asCarol.createSession({ members: ["dan"], type: 2, name: "Crew" })).sessionId;
    const names = async (s: typeof asCarol) => Object.fromEntries((await s.getSessionList({})).sessions.map((x) => [x.sessionId, x.name]));
    expect(await names(asDan)).toMatchObject({ [sessionId]: "Carol C.", [group]: "Crew", "0": "Resonance Room" });
    expect(await names(asCarol)).toMatchObject({ [sessionId]: "Dan D." });
    const [first] = (await asDan.getHistoryMessages({ sessionId, limit: 1n, beforeSeq: 2n })).messages;
    expect(first).toMatchObject({ type: "system", content: "Carol C. started a chat", sessionMeta: { name: "Carol C.", type: 1 } });
  });

  it("quickstart - the CLI explains itself: --help for every command, --version, and refuses what it does not know by name", async () => {
    const pkg = JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { version: string };
    // All at once: none of these starts a server.
    const commands = ["all", "gateway", "logic", "task", "migrate", "cluster", "chat", "setup"];
    const [help, version, unknownOption, unknownCommand, badSetting, helpOf, ...perCommand] = [
      new Command("npx", ["--no-install", "resonance", "--help"], {}),
      cli(["--version"]),
      cli(["chat", "--user", "x", "--colour"]),
      cli(["gatewy"]),
      // A misspelled name is pointed out; a bad value stops the start before any socket opens.
      cli(["gateway"], { RESONANCE_HTTP_PROT: "8081", RESONANCE_HTTP_PORT: "not-a-port" }),
      cli(["help", "chat"]),
      ...commands.map((c) => cli([c, "--help"])),
    ];
    expect(await help.exited).toBe(0);
    expect(help.out).toContain("usage: resonance <command>");
    for (const c of commands) expect(help.out).toMatch(new RegExp(`^  ${c} `, "m"));
    expect(await version.exited).toBe(0);
    expect(version.out.trim()).toBe(pkg.version);
    expect(await unknownOption.exited).toBe(2);
    expect(unknownOption.out).toMatch(/chat: Unknown option '--colour'/);
    expect(await unknownCommand.exited).toBe(2);
    expect(unknownCommand.out).toContain('unknown command "gatewy"; did you mean "gateway"?');
    expect(await badSetting.exited).toBe(2);
    expect(badSetting.out).toContain("RESONANCE_HTTP_PROT is not a setting and is ignored; did you mean RESONANCE_HTTP_PORT?");
    expect(badSetting.out).toMatch(/RESONANCE_HTTP_PORT: /);
    expect(await helpOf.exited).toBe(0);
    expect(helpOf.out).toContain("usage: resonance chat --user NAME");
    for (const [i, c] of perCommand.entries()) {
      expect(await c.exited).toBe(0);
      expect(c.out).toContain(`usage: resonance ${commands[i]}`);
    }
    for (const c of [help, version, unknownOption, unknownCommand, badSetting, helpOf, ...perCommand]) expect(c.out).not.toMatch(STACK_FRAME);
  });

  it("quickstart - a second server on the same ports names the setting to change, in one line without a stack trace", async () => {
    const second = cli(["all"], { ...env, RESONANCE_DATA_DIR: join(dataDir, "second"), RESONANCE_LOG_FORMAT: "json" });
    expect(await second.exited).toBe(1);
    expect(second.out).toContain(`resonance: all: startup failed: port ${env.RESONANCE_METRICS_PORT} is already in use (RESONANCE_METRICS_PORT)`);
    expect(second.out).not.toMatch(STACK_FRAME);
    const debug = cli(["all"], { ...env, RESONANCE_DATA_DIR: join(dataDir, "second"), RESONANCE_LOG_LEVEL: "debug" });
    expect(await debug.exited).toBe(1);
    expect(debug.out).toMatch(STACK_FRAME);
  });

  it("quickstart - human logs when asked (as on a terminal): short lines, the banner, the shutdown report as a table", async () => {
    // A gateway alone starts in a moment (no database); the format is what a terminal gets.
    const port = await freePort();
    const gw = cli(["gateway"], {
      RESONANCE_LOG_FORMAT: "pretty",
      RESONANCE_HTTP_PORT: String(port),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
      RESONANCE_LOGIC_ADDRESSES: `127.0.0.1:${await freePort()}`,
    });
    await gw.waitFor(/Stop\s+Ctrl-C/);
    expect(gw.stdout).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: public HTTP and WebSocket listening \{"port":\d+\}$/m);
    expect(gw.stdout).toMatch(/^\[\d\d:\d\d:\d\d\] WARN: gateway not ready: cannot call logic at/m);
    expect(gw.stdout).toContain(`Web page    http://127.0.0.1:${port}/`);
    expect(gw.stdout).toContain(`WebSocket   ws://127.0.0.1:${port}/ws?token=<token>`);
    expect(gw.stdout).toContain(`Chat        in another terminal: npx resonance chat --user alice --url http://127.0.0.1:${port}`);
    expect(gw.stdout).not.toMatch(/^\{/m);
    gw.proc.kill("SIGINT");
    expect(await gw.exited).toBe(0);
    expect(gw.stdout).toMatch(/^shutdown \(signal SIGINT\): exit 0 after \d+ ms$/m);
    expect(gw.stdout).toMatch(/^ {2}gateway\.close-websockets\s+\d+\s+ok$/m);
  });

  it("quickstart - settings can come from a JSON file named by RESONANCE_CONFIG_FILE; a bad one is refused by name", async () => {
    const file = join(dataDir, "settings.json");
    await writeFile(file, JSON.stringify({ RESONANCE_SHUTDOWN_TIMEOUT: "never", RESONANCE_SHUTDOWN_TIMOUT: "5s" }));
    const bad = new Command("npx", ["--no-install", "resonance", "migrate"], { RESONANCE_CONFIG_FILE: file, RESONANCE_DATA_DIR: join(dataDir, "m") });
    expect(await bad.exited).not.toBe(0);
    expect(bad.out).toContain("RESONANCE_SHUTDOWN_TIMEOUT");
    expect(bad.out).toContain("RESONANCE_SHUTDOWN_TIMOUT is not a setting and is ignored; did you mean RESONANCE_SHUTDOWN_TIMEOUT?");
    // The environment wins over the file.
    const ok = new Command("npx", ["--no-install", "resonance", "migrate"], {
      RESONANCE_CONFIG_FILE: file,
      RESONANCE_SHUTDOWN_TIMEOUT: "5s",
      RESONANCE_DATA_DIR: join(dataDir, "m"),
    });
    expect(await ok.exited).toBe(0);
    expect(ok.out).toContain("migrations applied");
  });

  it("quickstart - npm run bench -- --help and npm run bench:startup run as the README says", { timeout: 180_000 }, async () => {
    const bench = new Command("npm", ["run", "bench", "--", "--help"], {});
    const startup = new Command("npm", ["run", "bench:startup", "--", "--runs", "1", "--idle", "0"], {});
    expect(await bench.exited).toBe(0);
    expect(bench.out).toContain("bench/load.ts");
    expect(await startup.exited).toBe(0);
    expect(startup.out).toMatch(/fresh data directory\s*: ready in [\d.]+ s, CPU until ready [\d.]+ s, RSS after 0 s idle \d+ MiB/);
    expect(startup.out).toMatch(/existing data directory: ready in [\d.]+ s/);
  });
});
