/**
 * Startup cost of `npm start` (standalone): time until the server says "Resonance is up", the CPU
 * it used until then, and its resident memory after it has idled; on a fresh data directory and
 * on an existing one, several times (a shared machine is noisy: the spread is part of the answer).
 *
 *   npm run bench:startup [-- --runs 5 --idle 10]
 *
 * It first runs `resonance setup` (what `npm install` runs: the compiled CLI and the template of
 * a new database) and reports how long that took; a fresh data directory starts from the template.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { freePort } from "../test/support/processes.js";

const { values } = parseArgs({ options: { idle: { type: "string", default: "10" }, runs: { type: "string", default: "3" } } });
const idleMs = Math.min(60, Number(values.idle)) * 1000;
const runs = Math.max(1, Math.min(20, Number(values.runs)));
const TICKS = 100; // USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s on Linux.

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024);
}

async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // utime + stime
}

interface Sample {
  readyS: number;
  cpuS: number;
  rssMiB: number;
}

async function once(dataDir: string): Promise<Sample> {
  const env = {
    ...process.env,
    RESONANCE_DATA_DIR: dataDir,
    RESONANCE_LOG_FORMAT: "json",
    RESONANCE_HTTP_PORT: String(await freePort()),
    RESONANCE_LOGIC_PORT: String(await freePort()),
    RESONANCE_PUSH_PORT: String(await freePort()),
    RESONANCE_METRICS_PORT: String(await freePort()),
  };
  const t0 = performance.now();
  // The server itself (not npm), so its memory is what is measured.
  const child = spawn(process.execPath, ["bin/resonance.js", "all"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  await new Promise<void>((resolve, reject) => {
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      if (out.includes('"msg":"Resonance is up"')) resolve();
    });
    child.stderr.on("data", (c: Buffer) => (out += c.toString()));
    child.once("exit", (code) => reject(new Error(`exited ${code}: ${out}`)));
  });
  const readyS = (performance.now() - t0) / 1000;
  const cpuS = await cpuSeconds(child.pid!);
  await new Promise((r) => setTimeout(r, idleMs));
  const rss = await rssMiB(child.pid!);
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
  return { readyS, cpuS, rssMiB: rss };
}

function spread(xs: number[], digits: number, unit: string): string {
  const s = [...xs].sort((a, b) => a - b);
  const f = (x: number) => x.toFixed(digits);
  return s.length === 1 ? `${f(s[0]!)} ${unit}` : `${f(s[Math.floor(s.length / 2)]!)} ${unit} (min ${f(s[0]!)}, max ${f(s.at(-1)!)})`;
}

function summary(label: string, samples: Sample[]): void {
  process.stdout.write(
    `${label}: ready in ${spread(samples.map((s) => s.readyS), 2, "s")}, CPU until ready ${spread(samples.map((s) => s.cpuS), 2, "s")}, ` +
      `RSS after ${idleMs / 1000} s idle ${spread(samples.map((s) => s.rssMiB), 0, "MiB")}\n`,
  );
}

const t0 = performance.now();
const setup = spawn(process.execPath, ["bin/resonance.js", "setup"], { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, RESONANCE_LOG_FORMAT: "json" } });
const setupCode = await new Promise<number | null>((r) => setup.once("exit", r));
if (setupCode !== 0) throw new Error(`resonance setup exited ${setupCode}`);
process.stdout.write(`setup (compiled CLI + database template; once, at npm install): ${((performance.now() - t0) / 1000).toFixed(2)} s\n`);

const fresh: Sample[] = [];
const existing: Sample[] = [];
for (let i = 0; i < runs; i++) {
  const dir = await mkdtemp(join(tmpdir(), "resonance-startup-"));
  try {
    const f = await once(dir);
    const e = await once(dir);
    fresh.push(f);
    existing.push(e);
    process.stdout.write(`run ${i + 1}/${runs}: fresh ${f.readyS.toFixed(2)} s ${f.rssMiB} MiB · existing ${e.readyS.toFixed(2)} s ${e.rssMiB} MiB\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
summary("fresh data directory   ", fresh);
summary("existing data directory", existing);
