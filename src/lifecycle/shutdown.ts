import type { Logger } from "../observability/log.js";

/** One named step of a shutdown. `run` may return counts that go into the report. */
export interface Phase {
  readonly name: string;
  /** Time this phase may take; it never gets more than what is left of the overall budget. */
  readonly allowanceMs?: number;
  run(): Promise<void | Record<string, number>>;
}

export type PhaseOutcome = "ok" | "failed" | "timeout" | "running" | "skipped";

export interface PhaseResult {
  name: string;
  durationMs: number;
  outcome: PhaseOutcome;
  error?: string;
}

export interface ShutdownReport {
  reason: string;
  durationMs: number;
  exitCode: number;
  /** True when the overall deadline fired before every phase had finished. */
  deadlineExceeded: boolean;
  phases: PhaseResult[];
  counts: Record<string, number>;
}

export interface ShutdownOptions {
  readonly timeoutMs: number;
  readonly log: Logger;
  /** Exit code when every phase succeeds (1 for a shutdown caused by a crash). */
  readonly baseExitCode?: number;
}

const delay = (ms: number) =>
  new Promise<"timeout">((resolve) => {
    const t = setTimeout(() => resolve("timeout"), ms);
    t.unref();
  });

/**
 * The overall deadline keeps the process alive (it is not unref'd): a phase that hangs on a
 * promise with nothing else pending must still end in a report and exit code 1, never in a
 * silent exit.
 */
function deadlineTimer(ms: number): { fired: Promise<"deadline">; clear(): void } {
  let timer: NodeJS.Timeout | undefined;
  const fired = new Promise<"deadline">((resolve) => (timer = setTimeout(() => resolve("deadline"), ms)));
  return { fired, clear: () => clearTimeout(timer) };
}

/**
 * Runs the phases in order, each within its allowance, all within `timeoutMs`. The deadline
 * timer is armed before the first phase. A phase that fails or overruns its allowance is
 * recorded and the next phase still runs (later phases release resources); when the overall
 * deadline fires, the report names the phase still running and the shutdown stops there.
 * Resolves with the report (exit code 0 only if every phase was ok); never rejects.
 */
export async function runShutdown(reason: string, phases: readonly Phase[], opts: ShutdownOptions): Promise<ShutdownReport> {
  const started = performance.now();
  const deadline = started + opts.timeoutMs;
  const results: PhaseResult[] = phases.map((p) => ({ name: p.name, durationMs: 0, outcome: "skipped" }));
  const counts: Record<string, number> = {};
  let deadlineExceeded = false;
  const overall = deadlineTimer(opts.timeoutMs);

  for (const [i, phase] of phases.entries()) {
    const result = results[i]!;
    const left = deadline - performance.now();
    if (left <= 0) {
      deadlineExceeded = true;
      break;
    }
    const allowance = Math.min(phase.allowanceMs ?? left, left);
    // A phase whose allowance is the rest of the budget is cut by the deadline, however its
    // timer and the deadline's happen to fire (a timer may fire a little before its time).
    const toDeadline = allowance >= left;
    const t0 = performance.now();
    result.outcome = "running";
    opts.log.info({ phase: phase.name, allowanceMs: Math.round(allowance) }, "shutdown phase started");
    const run = phase.run().then(
      (c) => {
        if (c) for (const [k, v] of Object.entries(c)) counts[k] = (counts[k] ?? 0) + v;
        return "ok" as const;
      },
      (err: unknown) => {
        result.error = err instanceof Error ? err.message : String(err);
        return "failed" as const;
      },
    );
    const outcome = await Promise.race([run, delay(allowance), overall.fired]);
    result.durationMs = Math.round(performance.now() - t0);
    if (outcome === "deadline" || (outcome === "timeout" && (toDeadline || performance.now() >= deadline - 1))) {
      result.outcome = "running";
      deadlineExceeded = true;
      break;
    }
    result.outcome = outcome;
    if (outcome !== "ok") opts.log.warn({ phase: phase.name, outcome, error: result.error }, "shutdown phase did not finish cleanly");
  }

  overall.clear();
  const clean = !deadlineExceeded && results.every((r) => r.outcome === "ok");
  return {
    reason,
    durationMs: Math.round(performance.now() - started),
    exitCode: clean ? (opts.baseExitCode ?? 0) : 1,
    deadlineExceeded,
    phases: results,
    counts,
  };
}
