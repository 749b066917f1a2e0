/**
 * The benchmark's result object and its plain-text rendering. Pure.
 */
import type { DriveResult } from "./drive.js";
import type { BenchOptions } from "./options.js";
import type { LatencySummary } from "./stats.js";

export interface ShutdownOutcome {
  readonly name: string;
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** Wall time from SIGTERM to the process's exit, as the bench saw it. */
  readonly sigtermToExitMs: number;
  /** From the process's "shutdown report" log line, when it logged one. */
  readonly report?: {
    readonly durationMs: number;
    readonly exitCode: number;
    readonly deadlineExceeded: boolean;
    readonly phases: ReadonlyArray<{ readonly name: string; readonly durationMs: number; readonly outcome: string }>;
  };
}

export interface BenchResult {
  readonly startedAt: string;
  readonly options: BenchOptions;
  /** e.g. "closed loop: 16 unacked per sender". */
  readonly load: string;
  readonly machine: { readonly cpus: number; readonly loadAverage1m: number };
  readonly ceiling?: DriveResult & { readonly what: string };
  readonly product: DriveResult & { readonly deployment: string; readonly setupMs: number; readonly pgNote?: string };
  /**
   * Present when messages were acked but not pushed within the grace period: each one looked up
   * in the database after the services stopped. `inInbox`: its receiver's inbox row exists (a
   * client gets it on its next inbox pull); `queued`: committed, no inbox row yet (still in the
   * outbox or the queue: delivered once the services run again); `missing`: no messages row at
   * all — acknowledged but not committed, a real loss.
   */
  readonly lostCheck?: {
    readonly notPushed: number;
    readonly checked: number;
    readonly inInbox: number;
    readonly queued: number;
    readonly missing: number;
  };
  /** Product acked/s ÷ ceiling acked/s. */
  readonly ratioToCeiling: number | null;
  readonly shutdown?: readonly ShutdownOutcome[];
}

const fmtMs = (x: number | null): string => (x === null ? "-" : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const lat = (s: LatencySummary): string => `${fmtMs(s.p50)} / ${fmtMs(s.p99)} / ${fmtMs(s.p999)}`;
const codes = (m: Record<string, number>): string =>
  Object.keys(m).length === 0 ? "none" : Object.entries(m).map(([k, v]) => `${k} ${v}`).join(", ");
const pad = (s: string, n: number): string => (s.length >= n ? s : s + " ".repeat(n - s.length));
const lpad = (s: string, n: number): string => (s.length >= n ? s : " ".repeat(n - s.length) + s);

function runLines(label: string, r: DriveResult): string[] {
  const c = r.client;
  const lines = [
    `${label}:`,
    `  acked ${c.ackedPerSec}/s, delivered ${c.deliveredPerSec}/s over ${c.measuredSeconds} s` +
      (c.notOffered > 0 || c.lateSends > 0 ? `; not offered (window full) ${c.notOffered}, late sends ${c.lateSends}` : ""),
    `  send→ack  p50 / p99 / p99.9 ms: ${lat(c.ackMs)}   (max ${fmtMs(c.ackMs.max)}, n ${c.ackMs.count})`,
    `  send→push p50 / p99 / p99.9 ms: ${lat(c.pushMs)}   (max ${fmtMs(c.pushMs.max)}, n ${c.pushMs.count})`,
    `  error acks (measured): ${codes(c.errors)}; whole run: sent ${c.totals.sent}, acked ${c.totals.ackedOk}, errors ${codes(c.totals.ackErrors)}, ` +
      `unacked ${c.totals.unacked}, lost ${c.totals.lost} (acked, no push within the grace period), duplicate pushes ${c.totals.duplicatePushes}` +
      (c.totals.deliveredWithoutOkAck ? `, pushed without a committed ack ${c.totals.deliveredWithoutOkAck}` : ""),
  ];
  if (Object.keys(c.closes).length > 0) lines.push(`  socket closes: ${codes(c.closes)}`);
  lines.push(`  CPU per acked message (${r.cpu.messages} acks over ${(r.cpu.intervalMs / 1000).toFixed(1)} s):`);
  for (const g of r.cpu.groups) {
    const churn = g.appeared || g.vanished || g.seenLate ? ` (${g.processes} processes: ${g.appeared} appeared, ${g.vanished} vanished, ${g.seenLate} seen late)` : "";
    const us = g.usPerMsg === null ? "-" : String(g.usPerMsg);
    lines.push(`    ${pad(g.name + (g.kind === "shared" ? " [shared]" : ""), 30)} ${lpad(us, 8)} µs   ${lpad(g.cores.toFixed(2), 5)} cores${churn}`);
  }
  lines.push(
    `    ${pad("total (without [shared])", 30)} ${lpad(String(r.cpu.totalUsPerMsg ?? "-"), 8)} µs   ${lpad(r.cpu.totalCores.toFixed(2), 5)} cores`,
    `    machine: ${r.cpu.machine.busyPercent}% busy of ${r.cpu.machine.cpus} cpus; ${r.cpu.machine.otherCores.toFixed(2)} cores used outside these groups (other users of the box, the bench parent)`,
  );
  return lines;
}

/** The human-readable report. */
export function formatReport(r: BenchResult): string {
  const o = r.options;
  const out = [
    `resonance bench · ${r.startedAt} · ${r.machine.cpus} cpus, load average ${r.machine.loadAverage1m.toFixed(2)}`,
    `${o.pairs} pairs · ${r.load} · ${o.seconds} s measured after ${o.warmup} s warm-up · ${o.contentBytes}-byte messages`,
    "",
  ];
  if (r.ceiling) out.push(...runLines(`ceiling — ${r.ceiling.what}`, r.ceiling), "");
  out.push(...runLines(`product — ${r.product.deployment} (setup ${(r.product.setupMs / 1000).toFixed(1)} s)`, r.product));
  if (r.product.pgNote) out.push(`  note: ${r.product.pgNote}`);
  if (r.lostCheck) {
    const l = r.lostCheck;
    out.push(
      `  acked, not pushed within the grace period (${(r.product.client.graceWaitedMs / 1000).toFixed(1)} s): ${l.notPushed}; ` +
        `looked up in the database after the services stopped: ${l.inInbox} in the receiver's inbox (next inbox pull gets them), ` +
        `${l.queued} committed but still queued for delivery, ${l.missing} NOT COMMITTED (lost)`,
    );
  }
  if (r.ratioToCeiling !== null) out.push("", `product / ceiling (acked/s): ${(r.ratioToCeiling * 100).toFixed(1)}%`);
  if (r.shutdown) {
    out.push("", "SIGTERM at the end of the measured interval, load still on:");
    for (const s of r.shutdown) {
      const rep = s.report
        ? `shutdown report ${s.report.durationMs} ms, exit ${s.report.exitCode}${s.report.deadlineExceeded ? ", DEADLINE EXCEEDED" : ""}; ` +
          s.report.phases.map((p) => `${p.name} ${p.durationMs} ms${p.outcome === "ok" ? "" : ` (${p.outcome})`}`).join(", ")
        : "no shutdown report logged";
      out.push(`  ${pad(s.name, 12)} exit ${s.exitCode ?? s.signal} after ${s.sigtermToExitMs} ms; ${rep}`);
    }
  }
  return out.join("\n") + "\n";
}
