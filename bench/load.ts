/**
 * `npm run bench`: the load benchmark. Starts a fresh deployment with the test harness (or uses
 * --urls), sets up sender/receiver pairs, and drives them with the lean load client in its own
 * process (bench/client.ts); first, with the same client and settings, a bare `ws` relay in its
 * own process (bench/relay.ts) as the ceiling. Reports throughput, latency percentiles, loss,
 * error codes and the CPU per message of every process. `--help` prints the usage (options.ts).
 * Bounded in count and time; loopback only.
 */
import { fork } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { cpus, loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import type { ServiceProcess } from "../test/support/processes.js";
import type { ClientResult } from "./client.js";
import { relayPairs, serviceName, setupPairs, startDeployment } from "./deploy.js";
import { drive, type DriveSettings } from "./drive.js";
import { parseOptions, USAGE, type BenchOptions } from "./options.js";
import { formatReport, type BenchResult, type ShutdownOutcome } from "./report.js";
import { runRollingRestart } from "./restart.js";

function settingsOf(o: BenchOptions): DriveSettings {
  return {
    window: o.window,
    rate: o.rate,
    warmupMs: o.warmup * 1000,
    measureMs: o.seconds * 1000,
    graceMs: o.grace * 1000,
    contentBytes: o.contentBytes,
  };
}

/** The ceiling: the same client and settings against a bare relay process. */
async function runCeiling(o: BenchOptions): Promise<NonNullable<BenchResult["ceiling"]>> {
  const relay = fork(fileURLToPath(new URL("./relay.ts", import.meta.url)), [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      relay.once("message", (m: { port: number }) => resolve(m.port));
      relay.once("exit", (code) => reject(new Error(`relay exited (${code}) before listening`)));
    });
    const result = await drive(relayPairs(port, o.pairs), settingsOf(o), [{ name: "ws relay", kind: "relay", pids: async () => [relay.pid!] }]);
    return { what: "bare ws relay (bench/relay.ts), same client and settings", ...result };
  } finally {
    relay.kill("SIGKILL");
  }
}

/** SIGTERM to every service at once; resolves with each one's exit and shutdown report (SIGKILL after 90 s). */
async function sigtermAll(services: readonly ServiceProcess[]): Promise<ShutdownOutcome[]> {
  const t0 = performance.now();
  for (const p of services) p.kill("SIGTERM");
  return Promise.all(
    services.map(async (p): Promise<ShutdownOutcome> => {
      let timer: NodeJS.Timeout | undefined;
      const exit = await Promise.race([p.exited, new Promise<null>((r) => (timer = setTimeout(() => r(null), 90_000)))]);
      clearTimeout(timer);
      if (!exit) p.kill("SIGKILL");
      const final = exit ?? (await p.exited);
      const line = p.logs().find((l) => l.msg === "shutdown report");
      const report = line?.report as ShutdownOutcome["report"] | undefined;
      return {
        name: serviceName(p),
        exitCode: final.code,
        signal: exit ? final.signal : "SIGKILL (no exit within 90 s)",
        sigtermToExitMs: Math.round(performance.now() - t0),
        ...(report
          ? {
              report: {
                durationMs: Math.round(report.durationMs),
                exitCode: report.exitCode,
                deadlineExceeded: report.deadlineExceeded,
                phases: report.phases.map((x) => ({ name: x.name, durationMs: Math.round(x.durationMs), outcome: x.outcome })),
              },
            }
          : {}),
      };
    }),
  );
}

async function runLoad(o: BenchOptions): Promise<BenchResult> {
  const startedAt = new Date().toISOString();
  const machine = { cpus: cpus().length, loadAverage1m: loadavg()[0]! };
  const load = o.rate > 0 ? `open loop: ${o.rate} msg/s offered in total, at most ${o.window} unacked per sender` : `closed loop: ${o.window} unacked per sender`;
  // The ceiling runs first, before the deployment exists, so idle services do not share its CPU.
  const ceiling = o.ceiling ? await runCeiling(o) : undefined;
  const deployment = await startDeployment(o);
  let shutdown: ShutdownOutcome[] | undefined;
  try {
    const setupStarted = performance.now();
    const pairs = await setupPairs(deployment.urls, o.pairs);
    const setupMs = Math.round(performance.now() - setupStarted);
    const atEnd = o.sigtermAfter ? async () => void (shutdown = await sigtermAll(deployment.services)) : undefined;
    const product = await drive(pairs, settingsOf(o), deployment.cpuGroups, atEnd);
    // Acked but never pushed: look each one up in its receiver's inbox once the services are down.
    const lost = product.client.lostMessages;
    let lostCheck: BenchResult["lostCheck"];
    if (lost.msgIds.length > 0 && deployment.lookUp && pairs.every((p) => p.receiver)) {
      await deployment.stopServices();
      const entries = lost.msgIds.map((msgId, i) => ({ owner: pairs[lost.pairs[i]!]!.receiver!, msgId }));
      const found = await deployment.lookUp(entries);
      lostCheck = {
        notPushed: product.client.totals.lost,
        checked: entries.length,
        inInbox: found.inInbox,
        queued: found.committed - found.inInbox,
        missing: entries.length - found.committed,
      };
    }
    const ratio = ceiling && ceiling.client.ackedPerSec > 0 ? product.client.ackedPerSec / ceiling.client.ackedPerSec : null;
    return {
      startedAt,
      options: o,
      load,
      machine,
      ...(ceiling ? { ceiling: { ...ceiling, client: trimLost(ceiling.client) } } : {}),
      product: { deployment: deployment.description, setupMs, ...(deployment.pgNote ? { pgNote: deployment.pgNote } : {}), ...product, client: trimLost(product.client) },
      ...(lostCheck ? { lostCheck } : {}),
      ratioToCeiling: ratio === null ? null : Math.round(ratio * 10_000) / 10_000,
      ...(shutdown ? { shutdown } : {}),
    };
  } finally {
    await deployment.stop();
  }
}

/** The result object keeps the first 20 lost messages, not all of them. */
function trimLost(c: ClientResult): ClientResult {
  return { ...c, lostMessages: { msgIds: c.lostMessages.msgIds.slice(0, 20), pairs: c.lostMessages.pairs.slice(0, 20) } };
}

const json = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v), 2);

async function main(): Promise<void> {
  let o: BenchOptions;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message} (see npm run bench -- --help)\n`);
    process.exit(2);
  }
  if (o.help) {
    process.stdout.write(USAGE);
    return;
  }
  if (o.restart.length > 0) {
    const r = await runRollingRestart(o);
    process.stdout.write(json(r) + "\n");
    if (o.json) await writeFile(o.json, json({ startedAt: new Date().toISOString(), options: o, ...r }) + "\n");
    return;
  }
  const r = await runLoad(o);
  process.stdout.write("\n" + formatReport(r));
  if (o.json) {
    await writeFile(o.json, json(r) + "\n");
    process.stdout.write(`result written to ${o.json}\n`);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
