import { describe, expect, it } from "vitest";
import {
  clockTicks,
  CpuAccount,
  microsPerMessage,
  parseMachineCpu,
  parseProcStat,
  parseUptime,
  pidsByName,
  readProcStat,
  uptimeTicks,
  type ProcStat,
} from "./proc.js";

// A real line (node, pid 4242) with 52 fields; utime=1500, stime=250, starttime=98765.
const LINE =
  "4242 (node) S 4000 4242 4000 34816 4242 4194304 51890 0 12 0 1500 250 0 0 20 0 11 0 98765 1234567890 45678 " +
  "18446744073709551615 1 1 0 0 0 0 0 16781312 134235650 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

describe("bench proc - /proc/<pid>/stat parsing", () => {
  it("reads pid, name, parent, CPU times and start time", () => {
    expect(parseProcStat(LINE)).toEqual({ pid: 4242, comm: "node", state: "S", ppid: 4000, utime: 1500, stime: 250, starttime: 98765 });
  });

  it("keeps a command name with spaces and parentheses whole (fields are found from the last ')')", () => {
    const s = parseProcStat(LINE.replace("(node)", "(postgres: 15/main: walwriter (x) )"));
    expect(s.comm).toBe("postgres: 15/main: walwriter (x) ");
    expect(s.utime).toBe(1500);
    expect(s.starttime).toBe(98765);
  });

  it("refuses text that is not a stat line", () => {
    expect(() => parseProcStat("")).toThrow();
    expect(() => parseProcStat("12 (x) S 1 2")).toThrow();
    expect(() => parseProcStat(LINE.replace(" 1500 ", " abc "))).toThrow(/field 14/);
  });

  it("parses /proc/uptime and the machine's cpu line", () => {
    expect(parseUptime("12345.67 23456.78\n")).toBe(12345.67);
    expect(() => parseUptime("")).toThrow();
    // user nice system idle iowait irq softirq steal guest guest_nice
    const m = parseMachineCpu("cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n");
    expect(m).toEqual({ busy: 100 + 5 + 50 + 3 + 2 + 1, total: 161 + 1000 + 20 });
    expect(() => parseMachineCpu("intr 1 2 3")).toThrow();
  });

  it("reads this process's own stat, and its CPU time agrees with process.cpuUsage()", () => {
    const hz = clockTicks();
    expect(hz).toBeGreaterThan(0);
    const before = readProcStat(process.pid)!;
    const usage0 = process.cpuUsage();
    expect(before.pid).toBe(process.pid);
    expect(before.starttime).toBeLessThanOrEqual(uptimeTicks());
    // Burn about 300 ms of CPU (CPU time, not wall time: the machine may be busy).
    let x = 0;
    while (process.cpuUsage(usage0).user < 300_000) x += Math.sqrt(x + 1);
    expect(x).toBeGreaterThan(0);
    const after = readProcStat(process.pid)!;
    const used = process.cpuUsage(usage0);
    const procMs = ((after.utime + after.stime - before.utime - before.stime) * 1000) / hz;
    const nodeMs = (used.user + used.system) / 1000;
    // Tick granularity (10 ms at 100 Hz) on both ends, plus other threads of this process.
    expect(procMs).toBeGreaterThan(nodeMs - 3 * (1000 / hz));
    expect(procMs).toBeLessThan(nodeMs + 200);
  });

  it("finds processes by name and reports a gone pid as undefined", () => {
    expect(pidsByName(readProcStat(process.pid)!.comm)).toContain(process.pid);
    expect(readProcStat(2 ** 30)).toBeUndefined();
  });
});

const stat = (pid: number, ticks: number, starttime = 10): ProcStat => ({ pid, comm: "p", state: "S", ppid: 1, utime: ticks, stime: 0, starttime });

describe("bench proc - CPU accounting over an interval", () => {
  it("counts end − start for processes present throughout", () => {
    const a = new CpuAccount(1000);
    a.sample([stat(1, 100), stat(2, 50)], "start");
    a.sample([stat(1, 150), stat(2, 60)], "middle");
    a.sample([stat(1, 300), stat(2, 70)], "end");
    expect(a.result(100)).toEqual({ cpuMs: (200 + 20) * 10, processes: 2, appeared: 0, vanished: 0, seenLate: 0 });
  });

  it("counts all the CPU of a process that started within the interval", () => {
    const a = new CpuAccount(1000);
    a.sample([stat(1, 100)], "start");
    a.sample([stat(1, 100), stat(3, 40, 1200)], "end");
    expect(a.result(100)).toMatchObject({ cpuMs: 400, processes: 2, appeared: 1 });
  });

  it("counts a vanished process up to its last sample, and says so", () => {
    const a = new CpuAccount(1000);
    a.sample([stat(1, 100), stat(2, 10)], "start");
    a.sample([stat(1, 110), stat(2, 30)], "middle");
    a.sample([stat(1, 120)], "end");
    expect(a.result(100)).toMatchObject({ cpuMs: (20 + 20) * 10, vanished: 1 });
  });

  it("counts an older process first seen after the start from its first sample", () => {
    const a = new CpuAccount(1000);
    a.sample([], "start");
    a.sample([stat(4, 500, 900)], "middle");
    a.sample([stat(4, 520, 900)], "end");
    expect(a.result(100)).toMatchObject({ cpuMs: 200, seenLate: 1, appeared: 0 });
  });

  it("treats a recycled pid (new start time) as a different process", () => {
    const a = new CpuAccount(1000);
    a.sample([stat(5, 300, 10)], "start");
    a.sample([stat(5, 350, 10)], "middle");
    a.sample([stat(5, 7, 1500)], "end");
    expect(a.result(100)).toMatchObject({ cpuMs: (50 + 7) * 10, processes: 2, appeared: 1, vanished: 1 });
  });

  it("refuses samples out of order and a result before the end", () => {
    const a = new CpuAccount(0);
    expect(() => a.sample([], "middle")).toThrow(/out of order/);
    a.sample([], "start");
    expect(() => a.result(100)).toThrow(/no end sample/);
    expect(() => a.sample([], "start")).toThrow(/out of order/);
    a.sample([], "end");
    expect(() => a.sample([], "end")).toThrow(/out of order/);
    expect(a.result(100).cpuMs).toBe(0);
  });

  it("divides CPU by messages, null without messages", () => {
    expect(microsPerMessage(1000, 4000)).toBe(250);
    expect(microsPerMessage(5, 0)).toBeNull();
  });
});
