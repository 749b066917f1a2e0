import { pino, stdSerializers, type DestinationStream, type Logger } from "pino";

export type { Logger };

/** `json`: one JSON object per line (for machines); `pretty`: short human lines (for a terminal). */
export type LogFormat = "json" | "pretty";

export interface LoggerOptions {
  /** Where lines go (default: JSON on stdout); {@link prettyDestination} makes human lines. */
  readonly destination?: DestinationStream;
}

const REDACT = ["password", "token", "accessToken", "*.password", "*.token", "*.accessToken", "secret"];

/**
 * Errors as `{ type, message, code }`: a stack trace is only for whoever asked for it with
 * `debug` (or `trace`); at other levels it is noise to a reader and costs a line per frame.
 */
function errorSerializer(level: string): (err: Error) => object {
  const withStack = level === "debug" || level === "trace";
  return (err) => {
    const full = stdSerializers.err(err) as unknown as Record<string, unknown>;
    if (withStack) return full;
    const { stack: _stack, ...rest } = full;
    return rest;
  };
}

/**
 * Logs tagged with the service and instance; tokens, passwords and secrets are redacted. Returns
 * at once; never throws.
 */
export function createLogger(service: string, instance: string, level: string, opts: LoggerOptions = {}): Logger {
  const options = {
    level,
    base: { service, instance },
    redact: { paths: REDACT, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: errorSerializer(level) },
  };
  return opts.destination ? pino(options, opts.destination) : pino(options);
}

/**
 * A destination that prints each line to `output` (default stdout) as
 * `[12:00:01] INFO: message {"key":"value"}` (pino-pretty, in this thread, written synchronously
 * so nothing is lost at exit). Resolves once the formatter
 * is loaded; rejects only if it is not installed.
 */
export async function prettyDestination(colorize: boolean, output: NodeJS.WritableStream | number = 1): Promise<DestinationStream> {
  const { default: pretty } = await import("pino-pretty");
  return pretty({
    destination: output,
    colorize,
    singleLine: true,
    sync: true,
    translateTime: "SYS:HH:MM:ss",
    // The process and host are the reader's own; the shutdown report gets a table of its own.
    ignore: "pid,hostname,service,instance,report,part,component",
  });
}

/** The shutdown report as the CLI prints it: what {@link formatReport} reads. */
export interface ReportView {
  readonly reason: string;
  readonly durationMs: number;
  readonly exitCode: number;
  readonly deadlineExceeded: boolean;
  readonly phases: ReadonlyArray<{ readonly name: string; readonly durationMs: number; readonly outcome: string; readonly error?: string | undefined }>;
  readonly counts: Readonly<Record<string, number>>;
}

/**
 * The shutdown report as a small table for a terminal:
 *
 *     shutdown (signal SIGINT): exit 0 after 412 ms
 *       phase                       ms  outcome
 *       unready                      0  ok
 *       ...
 *       counts: httpCompleted 3 · wsClosedCleanly 2
 */
export function formatReport(r: ReportView): string {
  const width = Math.max(5, ...r.phases.map((p) => p.name.length));
  const lines = [
    `shutdown (${r.reason}): exit ${r.exitCode} after ${r.durationMs} ms${r.deadlineExceeded ? " — deadline exceeded" : ""}`,
    `  ${"phase".padEnd(width)}  ${"ms".padStart(6)}  outcome`,
    ...r.phases.map((p) => `  ${p.name.padEnd(width)}  ${String(p.durationMs).padStart(6)}  ${p.outcome}${p.error ? `: ${p.error}` : ""}`),
  ];
  const counts = Object.entries(r.counts).filter(([, n]) => n !== 0);
  lines.push(`  counts: ${counts.length > 0 ? counts.map(([k, n]) => `${k} ${n}`).join(" · ") : "all zero"}`);
  return lines.join("\n");
}
