import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventually, freePort } from "./support/processes.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The process group of a live process (undefined once it is gone or a zombie), read from /proc. */
async function groupOf(pid: number): Promise<number | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // The fields after the command name (which may hold spaces): state ppid pgrp ...
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return state === "Z" ? undefined : Number(pgrp);
  } catch {
    return undefined;
  }
}

/** Pids of the live processes in process group `pgid`. */
async function membersOf(pgid: number): Promise<number[]> {
  const pids = (await readdir("/proc")).filter((d) => /^\d+$/.test(d)).map(Number);
  const found: number[] = [];
  for (const pid of pids) if ((await groupOf(pid)) === pgid) found.push(pid);
  return found;
}

/**
 * A README command run the way a process manager runs it: in a process group of its own (so a
 * test failure can clean up), signalled by the test at the command's own pid or at the group.
 */
class Launched {
  readonly proc: ChildProcess;
  out = "";
  readonly exited: Promise<number | null>;

  constructor(cmd: string, args: string[], env: Record<string, string>) {
    this.proc = spawn(cmd, args, { cwd: ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"], detached: true });
    this.proc.stdout!.setEncoding("utf8").on("data", (c: string) => (this.out += c));
    this.proc.stderr!.setEncoding("utf8").on("data", (c: string) => (this.out += c));
    this.exited = new Promise((r) => this.proc.once("exit", (code) => r(code)));
  }

  get pid(): number {
    return this.proc.pid!;
  }

  /** Resolves when the output contains `text`; rejects with the output if the command exits first. */
  async waitFor(text: string, ms = 90_000): Promise<void> {
    await eventually(() => {
      if (this.out.includes(text)) return true;
      if (this.proc.exitCode !== null) throw new Error(`exited (${this.proc.exitCode}) without "${text}":\n${this.out}`);
      return false;
    }, ms, `"${text}" in the output`);
  }

  /** The parsed `shutdown report` log line, if printed. */
  report(): { reason: string; exitCode: number } | undefined {
    for (const line of this.out.split("\n")) {
      if (!line.includes('"shutdown report"')) continue;
      return (JSON.parse(line) as { report: { reason: string; exitCode: number } }).report;
    }
    return undefined;
  }

  /** Last resort for a failed test: SIGKILL to whatever is left of the group. */
  killGroup(): void {
    try {
      process.kill(-this.pid, "SIGKILL");
    } catch {
      // Nothing left.
    }
  }
}

describe("npm start and npx pass signals on", () => {
  let dataDir: string;
  let env: Record<string, string>;
  const launched: Launched[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), "resonance-npm-signals-"));
    env = {
      RESONANCE_DATA_DIR: dataDir,
      RESONANCE_HTTP_PORT: String(await freePort()),
      RESONANCE_LOGIC_PORT: String(await freePort()),
      RESONANCE_PUSH_PORT: String(await freePort()),
      RESONANCE_METRICS_PORT: String(await freePort()),
      RESONANCE_WS_DRAIN_WINDOW: "200ms",
    };
  });
  afterAll(async () => {
    for (const l of launched) l.killGroup();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Starts the command, waits until the server is up, and returns it with the server's pid. */
  async function up(cmd: string, args: string[]): Promise<{ l: Launched; server: number }> {
    const l = new Launched(cmd, args, env);
    launched.push(l);
    await l.waitFor("Resonance is up");
    // The server is the node process in the group other than npm itself (npx has a shell in between).
    const members = await membersOf(l.pid);
    const comms = await Promise.all(members.map((p) => readFile(`/proc/${p}/comm`, "utf8").then((c) => c.trim(), () => "")));
    const server = members.find((p, i) => p !== l.pid && comms[i] === "node");
    expect(server, `a node server in the group of ${cmd} (${members.map((p, i) => `${p}:${comms[i]}`).join(" ")})`).toBeDefined();
    return { l, server: server! };
  }

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`npm-signals - ${signal} to npm's own pid: the server shuts down with its report, npm exits 0, nothing is left`, async () => {
      const { l, server } = await up("npm", ["start"]);
      process.kill(l.pid, signal);
      expect(await l.exited).toBe(0);
      expect(l.report()).toMatchObject({ reason: `signal ${signal}`, exitCode: 0 });
      await eventually(async () => (await membersOf(l.pid)).length === 0, 10_000, "the process group to be empty");
      expect(await groupOf(server)).toBeUndefined();
    });
  }

  it("npm-signals - Ctrl-C to the whole group (npm and the server both get SIGINT) is one graceful stop, not a forced exit", async () => {
    const { l } = await up("npm", ["start"]);
    process.kill(-l.pid, "SIGINT");
    expect(await l.exited).toBe(0);
    expect(l.report()).toMatchObject({ reason: "signal SIGINT", exitCode: 0 });
    expect(l.out).not.toContain("second signal");
    await eventually(async () => (await membersOf(l.pid)).length === 0, 10_000, "the process group to be empty");
  });

  it("npm-signals - SIGTERM to npx's pid: its shell dies, the server sees its parent gone and shuts down gracefully", async () => {
    const { l, server } = await up("npx", ["--no-install", "resonance", "all"]);
    process.kill(l.pid, "SIGTERM");
    await l.exited;
    // npx does not wait for the server; the server's output still reaches our pipe.
    await l.waitFor('"shutdown report"', 30_000);
    expect(l.report()).toMatchObject({ reason: "parent process exited", exitCode: 0 });
    await eventually(async () => (await groupOf(server)) === undefined, 30_000, "the server to exit");
    await eventually(async () => (await membersOf(l.pid)).length === 0, 10_000, "the process group to be empty");
  });
});
