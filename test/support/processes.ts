import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** A free TCP port on loopback (the OS picks it; tiny race accepted in tests). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A Resonance CLI process run by a test: its output is kept and parsed (JSON log lines). */
export class ServiceProcess {
  readonly role: string;
  readonly env: Record<string, string>;
  readonly proc: ChildProcess;
  readonly lines: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<Exit>;
  #waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];

  constructor(role: string, env: Record<string, string>) {
    this.role = role;
    this.env = env;
    // RESONANCE_TEST_NODE_ARGS adds node flags to every service process (e.g. --cpu-prof for profiling).
    const nodeArgs = (process.env.RESONANCE_TEST_NODE_ARGS ?? "").split(" ").filter(Boolean);
    // The same entry point as `npx resonance <role>`.
    this.proc = spawn(process.execPath, [...nodeArgs, "bin/resonance.js", role], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", RESONANCE_LOG_LEVEL: "info", ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let buf = "";
    this.proc.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.lines.push(line);
        let parsed: Record<string, unknown> | undefined;
        try {
          parsed = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        for (const w of [...this.#waiters]) {
          if (w.pred(parsed)) {
            this.#waiters.splice(this.#waiters.indexOf(w), 1);
            w.resolve(parsed);
          }
        }
      }
    });
    this.proc.stderr!.setEncoding("utf8").on("data", (c: string) => this.stderr.push(c));
    this.exited = new Promise((resolve) => this.proc.once("exit", (code, signal) => resolve({ code, signal })));
  }

  /** Every JSON log line so far. */
  logs(): Array<Record<string, unknown>> {
    return this.lines.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  /** Resolves with the first log line (past or future) matching `pred`; rejects after `timeoutMs` or if the process exits first. */
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const past = this.logs().find(pred);
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.role}: no matching log line within ${timeoutMs} ms\n${this.output()}`)), timeoutMs);
      this.#waiters.push({ pred, resolve: (l) => (clearTimeout(t), resolve(l)) });
      void this.exited.then((e) => {
        clearTimeout(t);
        reject(new Error(`${this.role} exited (${e.code ?? e.signal}) before the expected log line\n${this.output()}`));
      });
    });
  }

  /**
   * Waits until the process reaches the fault point `name` (its "fault injected" line; see
   * RESONANCE_FAULTS) and resolves with a check to call after looking at the process: it throws
   * unless the process is still held there (alive, and since then no phase started, no report,
   * no startup failure logged). So what the test saw is known to be the paused state, never a
   * later one that would make the check pass for the wrong reason.
   */
  async pausedAt(name: string, timeoutMs = 30_000): Promise<() => void> {
    await this.waitForLog((l) => l.fault === name, timeoutMs);
    const at = this.lines.findIndex((l) => l.includes(`"fault":"${name}"`));
    return () => {
      const movedOn = this.lines.slice(at + 1).find((l) => /"msg":"(shutdown phase started|shutdown report|startup failed)"/.test(l));
      if (!this.alive || movedOn) {
        throw new Error(`${this.role} was no longer paused at ${name} when the checks ended (${movedOn ?? "exited"}): lengthen the pause`);
      }
    };
  }

  /** Resolves when the process logged "started"; rejects with its output if it exits first. */
  async ready(timeoutMs = 60_000): Promise<this> {
    await this.waitForLog((l) => l.msg === "started", timeoutMs);
    return this;
  }

  /** The shutdown report, once the process logged it. */
  async report(timeoutMs = 60_000): Promise<ShutdownReportLine> {
    const line = await this.waitForLog((l) => l.msg === "shutdown report", timeoutMs);
    return line.report as ShutdownReportLine;
  }

  /** True until the process has exited. */
  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  kill(signal: NodeJS.Signals = "SIGTERM"): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
  }

  /** SIGKILL if still running; resolves when gone. */
  async stop(): Promise<Exit> {
    this.kill("SIGKILL");
    return this.exited;
  }

  output(): string {
    return [...this.lines.slice(-40), ...this.stderr.slice(-20)].join("\n");
  }
}

export interface ShutdownReportLine {
  reason: string;
  durationMs: number;
  exitCode: number;
  deadlineExceeded: boolean;
  phases: Array<{ name: string; durationMs: number; outcome: string; error?: string }>;
  counts: Record<string, number>;
}

/** What `eventually` treats as "not yet": every falsy value (false, 0, 0n, "", NaN, null, undefined). */
export type NotYet = false | 0 | 0n | "" | null | undefined;

/**
 * Polls `check` (every 25 ms) until it returns a truthy value and resolves with that value.
 * Falsy results (0, "", NaN included) and thrown errors count as "not yet". Rejects after
 * `timeoutMs` naming `what` and the last error seen.
 */
export async function eventually<T>(check: () => Promise<T | NotYet> | T | NotYet, timeoutMs = 10_000, what = "condition"): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
