import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./support/processes.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A command of the README, run as a user would (through npm / npx), with its output collected. */
class Command {
  readonly proc: ChildProcess;
  out = "";
  readonly exited: Promise<number | null>;
  constructor(cmd: string, args: string[], env: Record<string, string>) {
    // Its own process group: npm does not pass signals on to the node process it starts.
    this.proc = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"], detached: true });
    this.proc.stdout!.setEncoding("utf8").on("data", (c: string) => (this.out += c));
    this.proc.stderr!.setEncoding("utf8").on("data", (c: string) => (this.out += c));
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
  /** Resolves when the output contains `text`; rejects after `ms` with the output so far. */
  async waitFor(text: string | RegExp, ms = 60_000): Promise<void> {
    const end = Date.now() + ms;
    const has = () => (typeof text === "string" ? this.out.includes(text) : text.test(this.out));
    while (!has()) {
      if (Date.now() > end || this.proc.exitCode !== null) throw new Error(`no "${String(text)}" in output:\n${this.out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

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

  it("quickstart - npm start prints where to connect and serves on the port", async () => {
    expect(server.out).toContain(`http://127.0.0.1:${env.RESONANCE_HTTP_PORT}`);
    const ready = await fetch(`http://127.0.0.1:${env.RESONANCE_METRICS_PORT}/readyz`);
    expect(ready.status).toBe(200);
  });

  it("quickstart - two terminals: npx resonance chat --user alice / bob talk in the Resonance Room", async () => {
    const alice = new Command("npx", ["--no-install", "resonance", "chat", "--user", "alice"], env);
    const bob = new Command("npx", ["--no-install", "resonance", "chat", "--user", "bob"], env);
    await alice.waitFor("in the Resonance Room");
    await bob.waitFor("in the Resonance Room");
    expect(alice.out).toContain("registered new user alice");
    alice.proc.stdin!.write("hello from alice\n");
    await bob.waitFor(/alice: hello from alice/);
    bob.proc.stdin!.write("hi alice\n/quit\n");
    await alice.waitFor(/bob: hi alice/);
    alice.proc.stdin!.end("/quit\n");
    expect(await alice.exited).toBe(0);
    expect(await bob.exited).toBe(0);
  });

  it("quickstart - the CLI explains itself and refuses bad settings by name", async () => {
    const help = new Command("npx", ["--no-install", "resonance", "--help"], {});
    expect(await help.exited).toBe(0);
    expect(help.out).toContain("usage: resonance <command>");
    const bench = new Command("npm", ["run", "bench", "--", "--help"], {});
    expect(await bench.exited).toBe(0);
    expect(bench.out).toContain("bench/load.ts");
    const startup = new Command("npm", ["run", "bench:startup", "--", "--idle", "0"], {});
    expect(await startup.exited).toBe(0);
    expect(startup.out).toMatch(/fresh data directory\s*: ready in [\d.]+ s/);
    const bad = new Command("npx", ["--no-install", "resonance", "gateway"], { RESONANCE_HTTP_PORT: "not-a-port" });
    expect(await bad.exited).not.toBe(0);
    expect(bad.out).toContain("RESONANCE_HTTP_PORT");
  });

  it("quickstart - settings can come from a JSON file named by RESONANCE_CONFIG_FILE; a bad one is refused by name", async () => {
    const file = join(dataDir, "settings.json");
    await writeFile(file, JSON.stringify({ RESONANCE_SHUTDOWN_TIMEOUT: "never" }));
    const bad = new Command("npx", ["--no-install", "resonance", "migrate"], { RESONANCE_CONFIG_FILE: file, RESONANCE_DATA_DIR: join(dataDir, "m") });
    expect(await bad.exited).not.toBe(0);
    expect(bad.out).toContain("RESONANCE_SHUTDOWN_TIMEOUT");
    // The environment wins over the file.
    const ok = new Command("npx", ["--no-install", "resonance", "migrate"], {
      RESONANCE_CONFIG_FILE: file,
      RESONANCE_SHUTDOWN_TIMEOUT: "5s",
      RESONANCE_DATA_DIR: join(dataDir, "m"),
    });
    expect(await ok.exited).toBe(0);
    expect(ok.out).toContain("migrations applied");
  });
});
