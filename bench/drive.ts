/**
 * One load run: forks the load client (bench/client.ts) in its own process, hands it the pairs,
 * and samples the CPU of every process group from /proc at the start and end of the measured
 * interval (the client tells when they are), plus once a second for groups whose members come
 * and go.
 */
import { fork, type ChildProcess } from "node:child_process";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import type { ClientPlan, ClientResult, FromChild, PairPlan } from "./client.js";
import type { CpuGroup } from "./deploy.js";
import { clockTicks, CpuAccount, microsPerMessage, readMachineCpu, readProcStats, uptimeTicks, type CpuUse, type MachineCpu } from "./proc.js";

export interface GroupCpu extends CpuUse {
  readonly name: string;
  readonly kind: CpuGroup["kind"];
  /** CPU µs per committed ack of the measured interval. */
  readonly usPerMsg: number | null;
  /** Average cores used over the interval. */
  readonly cores: number;
}

export interface CpuReport {
  readonly intervalMs: number;
  /** Messages the per-message figures divide by: committed acks in the measured interval. */
  readonly messages: number;
  readonly groups: readonly GroupCpu[];
  /** Every group except the shared servers. */
  readonly totalUsPerMsg: number | null;
  readonly totalCores: number;
  readonly totalWithSharedUsPerMsg: number | null;
  readonly machine: {
    readonly cpus: number;
    readonly busyPercent: number;
    /** Busy CPU of the whole machine not in any group (other users of the box, the bench's own parent process). */
    readonly otherCores: number;
  };
}

export interface DriveSettings {
  readonly window: number;
  readonly rate: number;
  readonly warmupMs: number;
  readonly measureMs: number;
  readonly graceMs: number;
  readonly contentBytes: number;
}

export interface DriveResult {
  readonly client: ClientResult;
  readonly cpu: CpuReport;
}

/** Keeps the group accounts and the machine counters for one measured interval. */
class CpuSampler {
  readonly #groups: readonly CpuGroup[];
  #accounts: CpuAccount[] = [];
  #machine0: MachineCpu | undefined;
  #machine1: MachineCpu | undefined;
  #t0 = 0;
  #t1 = 0;
  #busy: Promise<void> = Promise.resolve();

  constructor(groups: readonly CpuGroup[]) {
    this.#groups = groups;
  }

  /** Pid lists first (async), then every /proc read in one synchronous pass, so the groups are read at one instant. */
  async #sample(kind: "start" | "middle" | "end"): Promise<void> {
    const pids = await Promise.all(this.#groups.map((g) => g.pids().catch(() => [] as number[])));
    if (kind === "start") {
      const up = uptimeTicks();
      this.#accounts = this.#groups.map(() => new CpuAccount(up));
      this.#machine0 = readMachineCpu();
      this.#t0 = performance.now();
    }
    pids.forEach((list, i) => this.#accounts[i]!.sample(readProcStats(list), kind));
    if (kind === "end") {
      this.#machine1 = readMachineCpu();
      this.#t1 = performance.now();
    }
  }

  /** Samples are serialized: a slow pid query never lets a middle sample land after the end. */
  sample(kind: "start" | "middle" | "end"): Promise<void> {
    this.#busy = this.#busy.then(() => this.#sample(kind));
    return this.#busy;
  }

  report(messages: number): CpuReport {
    const hz = clockTicks();
    const intervalMs = this.#t1 - this.#t0;
    const groups = this.#accounts.map((a, i): GroupCpu => {
      const use = a.result(hz);
      const g = this.#groups[i]!;
      return { name: g.name, kind: g.kind, ...use, usPerMsg: microsPerMessage(use.cpuMs, messages), cores: round2(use.cpuMs / intervalMs) };
    });
    const own = groups.filter((g) => g.kind !== "shared").reduce((s, g) => s + g.cpuMs, 0);
    const all = groups.reduce((s, g) => s + g.cpuMs, 0);
    const m0 = this.#machine0!;
    const m1 = this.#machine1!;
    const busyMs = ((m1.busy - m0.busy) * 1000) / hz;
    const totalMs = ((m1.total - m0.total) * 1000) / hz;
    return {
      intervalMs: Math.round(intervalMs),
      messages,
      groups,
      totalUsPerMsg: microsPerMessage(own, messages),
      totalCores: round2(own / intervalMs),
      totalWithSharedUsPerMsg: microsPerMessage(all, messages),
      machine: {
        cpus: cpus().length,
        busyPercent: totalMs > 0 ? Math.round((busyMs / totalMs) * 100) : 0,
        otherCores: round2(Math.max(0, busyMs - all) / intervalMs),
      },
    };
  }
}

/** The longest the client waits for pushes after the load, however long they keep trickling in. */
const GRACE_CAP_MS = 120_000;

const round2 = (x: number): number => Math.round(x * 100) / 100;

/** Messages from the child, awaited by type; "failed" or an exit rejects every wait. */
class ChildInbox {
  readonly #queue: FromChild[] = [];
  #waiter: (() => void) | undefined;
  #error: Error | undefined;

  constructor(child: ChildProcess) {
    child.on("message", (m: FromChild) => {
      if (m.type === "failed") this.#error = new Error(`load client failed: ${m.error}`);
      else this.#queue.push(m);
      this.#waiter?.();
    });
    child.once("exit", (code, signal) => {
      this.#error ??= new Error(`load client exited (${code ?? signal})`);
      this.#waiter?.();
    });
  }

  /** Resolves with the next message of `type` (earlier ones of other types are dropped); rejects after `timeoutMs`. */
  async next<T extends FromChild["type"]>(type: T, timeoutMs: number): Promise<Extract<FromChild, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.#queue.findIndex((m) => m.type === type);
      if (i >= 0) return this.#queue.splice(i, 1)[0] as Extract<FromChild, { type: T }>;
      if (this.#error) throw this.#error;
      if (Date.now() >= deadline) throw new Error(`load client: no "${type}" within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.#waiter = () => (clearTimeout(t), resolve());
      });
      this.#waiter = undefined;
    }
  }
}

/**
 * Drives `pairs` with a fresh load client process and measures the CPU of `groups` (plus the
 * client's). `atMeasureEnd`, if given, runs right after the end sample while the client keeps
 * offering load (hold); the client stops when it resolves. Kills the client on failure.
 */
export async function drive(
  pairs: readonly PairPlan[],
  s: DriveSettings,
  groups: readonly CpuGroup[],
  atMeasureEnd?: () => Promise<void>,
): Promise<DriveResult> {
  const nodeArgs = (process.env.BENCH_CLIENT_NODE_ARGS ?? "").split(" ").filter(Boolean);
  const child = fork(fileURLToPath(new URL("./client.ts", import.meta.url)), [], {
    execArgv: ["--import", "tsx", ...nodeArgs],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const inbox = new ChildInbox(child);
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const sampler = new CpuSampler([...groups, { name: "load client", kind: "client", pids: async () => (child.pid ? [child.pid] : []) }]);
  let ticker: NodeJS.Timeout | undefined;
  try {
    const plan: ClientPlan = {
      pairs,
      window: s.window,
      rate: s.rate,
      warmupMs: s.warmupMs,
      measureMs: s.measureMs,
      hold: atMeasureEnd !== undefined,
      drainMs: 10_000,
      graceMs: s.graceMs,
      graceCapMs: GRACE_CAP_MS,
      contentBytes: s.contentBytes,
    };
    child.send({ type: "plan", plan });
    await inbox.next("ready", 120_000 + pairs.length * 200);
    child.send({ type: "go" });
    await inbox.next("measure-start", s.warmupMs + 30_000);
    await sampler.sample("start");
    ticker = setInterval(() => void sampler.sample("middle").catch(() => {}), 1_000);
    await inbox.next("measure-end", s.measureMs + 30_000);
    clearInterval(ticker);
    await sampler.sample("end");
    if (atMeasureEnd) {
      await atMeasureEnd();
      child.send({ type: "stop" });
    }
    const { result } = await inbox.next("result", 10_000 + GRACE_CAP_MS + 30_000);
    await exited;
    return { client: result, cpu: sampler.report(result.acked) };
  } finally {
    clearInterval(ticker);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}
