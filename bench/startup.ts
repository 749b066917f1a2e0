/**
 * Startup cost of `npm start` (standalone): time until it prints "Resonance is up", and its
 * resident memory after it has idled, on a fresh data directory and then on the same one again.
 *
 *   npm run bench:startup [-- --idle 10]
 */
import { spawn } from "node:child_process";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { freePort } from "../test/support/processes.js";

const { values } = parseArgs({ options: { idle: { type: "string", default: "10" } } });
const idleMs = Math.min(60, Number(values.idle)) * 1000;

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024);
}

async function once(dataDir: string, label: string): Promise<void> {
  const env = {
    ...process.env,
    RESONANCE_DATA_DIR: dataDir,
    RESONANCE_HTTP_PORT: String(await freePort()),
    RESONANCE_LOGIC_PORT: String(await freePort()),
    RESONANCE_PUSH_PORT: String(await freePort()),
    RESONANCE_METRICS_PORT: String(await freePort()),
  };
  const t0 = performance.now();
  // The server itself (not npm), so its memory is what is measured.
  const child = spawn(process.execPath, ["bin/resonance.js", "all"], { env, stdio: ["ignore", "ignore", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    let err = "";
    child.stderr.on("data", (c: Buffer) => {
      err += c.toString();
      if (err.includes("Resonance is up")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`exited ${code}: ${err}`)));
  });
  const readyS = (performance.now() - t0) / 1000;
  await new Promise((r) => setTimeout(r, idleMs));
  const rss = await rssMiB(child.pid!);
  child.kill("SIGTERM");
  await new Promise((r) => child.once("exit", r));
  process.stdout.write(`${label}: ready in ${readyS.toFixed(2)} s, RSS after ${idleMs / 1000} s idle: ${rss} MiB\n`);
}

const dir = await mkdtemp(join(tmpdir(), "resonance-startup-"));
try {
  await once(dir, "fresh data directory   ");
  await once(dir, "existing data directory");
  await once(dir, "existing data directory");
} finally {
  await rm(dir, { recursive: true, force: true });
}
