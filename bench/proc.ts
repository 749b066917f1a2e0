/**
 * CPU time of processes, read from Linux /proc: `/proc/<pid>/stat` (utime + stime, in clock ticks,
 * all threads of the process) and `/proc/uptime`. The parsing and the accounting are pure; the
 * readers are synchronous and cheap (a few small files), used outside the hot path.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";

/** The fields of `/proc/<pid>/stat` the benchmark uses. Times are in clock ticks. */
export interface ProcStat {
  readonly pid: number;
  /** The executable name (field 2, without the parentheses; may contain spaces). */
  readonly comm: string;
  readonly state: string;
  readonly ppid: number;
  /** User and system CPU time of the process (all its threads), in ticks. */
  readonly utime: number;
  readonly stime: number;
  /** When the process started, in ticks after boot. */
  readonly starttime: number;
}

/**
 * Parses the text of `/proc/<pid>/stat`. The command name may contain spaces and parentheses, so
 * the fields after it are found from the last `)`. Throws on text that is not a stat line.
 */
export function parseProcStat(text: string): ProcStat {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) throw new Error("not a /proc/<pid>/stat line");
  const pid = Number(text.slice(0, open).trim());
  const comm = text.slice(open + 1, close);
  // Fields from 3 (state) on; field n is rest[n - 3].
  const rest = text.slice(close + 2).trim().split(/\s+/);
  if (rest.length < 20 || !Number.isInteger(pid)) throw new Error("not a /proc/<pid>/stat line");
  const num = (field: number): number => {
    const v = Number(rest[field - 3]);
    if (!Number.isFinite(v)) throw new Error(`/proc/<pid>/stat: field ${field} is not a number`);
    return v;
  };
  return { pid, comm, state: rest[0]!, ppid: num(4), utime: num(14), stime: num(15), starttime: num(22) };
}

/** The stat of a live process, or undefined when it is gone (or unreadable). */
export function readProcStat(pid: number): ProcStat | undefined {
  try {
    return parseProcStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

/** The stats of the given pids that are still alive. */
export function readProcStats(pids: Iterable<number>): ProcStat[] {
  const out: ProcStat[] = [];
  for (const pid of pids) {
    const s = readProcStat(pid);
    if (s) out.push(s);
  }
  return out;
}

/** Every process visible in /proc. */
export function listProcesses(): ProcStat[] {
  const pids = readdirSync("/proc").filter((d) => /^\d+$/.test(d)).map(Number);
  return readProcStats(pids);
}

/** The pids of the processes whose executable name is exactly `comm` (like `pidof`). */
export function pidsByName(comm: string): number[] {
  return listProcesses().filter((p) => p.comm === comm).map((p) => p.pid);
}

let ticksPerSecond: number | undefined;

/** Clock ticks per second (`getconf CLK_TCK`, 100 on most Linux systems). */
export function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** Parses `/proc/uptime` ("12345.67 23456.78") into seconds since boot. */
export function parseUptime(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)(?:\s|$)/.exec(text);
  if (!m) throw new Error("not a /proc/uptime line");
  return Number(m[1]);
}

/** Now, in clock ticks after boot (the unit of `starttime`). */
export function uptimeTicks(): number {
  return parseUptime(readFileSync("/proc/uptime", "utf8")) * clockTicks();
}

/** What a group of processes used between the start and the end sample. */
export interface CpuUse {
  /** CPU time (user + system), milliseconds. */
  readonly cpuMs: number;
  /** Distinct processes counted. */
  readonly processes: number;
  /** Processes that started after the start sample (all their CPU counts). */
  readonly appeared: number;
  /** Processes gone before the end sample: their CPU after the last sample is missing. */
  readonly vanished: number;
  /** Processes first seen after the start sample although older: their CPU before that sample is missing. */
  readonly seenLate: number;
}

interface Entry {
  baseline: number;
  last: number;
  seenAtEnd: boolean;
}

/**
 * CPU accounting for a group of processes whose members may come and go (e.g. PostgreSQL
 * backends): feed it a start sample, any number of middle samples and an end sample. A process
 * present at the start counts end − start; one that started within the interval counts all its
 * CPU; one that vanished counts up to its last sample; one first seen late but older than the
 * interval counts from its first sample. Pure: the caller reads /proc.
 */
export class CpuAccount {
  readonly #startUptime: number;
  readonly #entries = new Map<string, Entry>();
  #phase: "new" | "running" | "done" = "new";
  #appeared = 0;
  #seenLate = 0;

  /** @param startUptimeTicks when the start sample is taken, in ticks after boot. */
  constructor(startUptimeTicks: number) {
    this.#startUptime = startUptimeTicks;
  }

  /** Records a sample; `kind` "start" must come first and "end" last. Throws when out of order. */
  sample(stats: readonly ProcStat[], kind: "start" | "middle" | "end"): void {
    if (this.#phase === "done" || (kind === "start") !== (this.#phase === "new")) {
      throw new Error(`CpuAccount: a ${kind} sample is out of order`);
    }
    for (const s of stats) {
      // pid + starttime: a recycled pid is a different process.
      const key = `${s.pid}@${s.starttime}`;
      const ticks = s.utime + s.stime;
      const e = this.#entries.get(key);
      if (e) {
        e.last = Math.max(e.last, ticks);
      } else if (kind === "start") {
        this.#entries.set(key, { baseline: ticks, last: ticks, seenAtEnd: false });
      } else if (s.starttime >= this.#startUptime) {
        this.#appeared++;
        this.#entries.set(key, { baseline: 0, last: ticks, seenAtEnd: false });
      } else {
        this.#seenLate++;
        this.#entries.set(key, { baseline: ticks, last: ticks, seenAtEnd: false });
      }
      if (kind === "end") this.#entries.get(key)!.seenAtEnd = true;
    }
    this.#phase = kind === "end" ? "done" : "running";
  }

  /** The totals; call after the end sample. `hz` is clock ticks per second. */
  result(hz: number): CpuUse {
    if (this.#phase !== "done") throw new Error("CpuAccount: no end sample yet");
    let ticks = 0;
    let vanished = 0;
    for (const e of this.#entries.values()) {
      ticks += e.last - e.baseline;
      if (!e.seenAtEnd) vanished++;
    }
    return {
      cpuMs: (ticks * 1000) / hz,
      processes: this.#entries.size,
      appeared: this.#appeared,
      vanished,
      seenLate: this.#seenLate,
    };
  }
}

/** CPU microseconds per message, or null when no message was counted. */
export function microsPerMessage(cpuMs: number, messages: number): number | null {
  return messages > 0 ? Math.round((cpuMs * 1000) / messages) : null;
}

/** The whole machine's CPU time since boot, from the first line of `/proc/stat`, in ticks. */
export interface MachineCpu {
  /** user + nice + system + irq + softirq + steal. */
  readonly busy: number;
  /** busy + idle + iowait. */
  readonly total: number;
}

/** Parses the aggregate `cpu` line of `/proc/stat`. Throws when there is none. */
export function parseMachineCpu(procStat: string): MachineCpu {
  const line = procStat.split("\n").find((l) => /^cpu\s/.test(l));
  if (!line) throw new Error("no cpu line in /proc/stat");
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = user + nice + system + irq + softirq + steal;
  return { busy, total: busy + idle + iowait };
}

/** The machine's CPU time now. */
export function readMachineCpu(): MachineCpu {
  return parseMachineCpu(readFileSync("/proc/stat", "utf8"));
}
