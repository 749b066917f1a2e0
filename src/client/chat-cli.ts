import { createInterface } from "node:readline";
import { create } from "@bufbuild/protobuf";
import { PushMessageSchema, type PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { ResonanceClient } from "./client.js";
import { ResonanceError } from "./errors.js";

export interface ChatOptions {
  /** Gateway base URL, e.g. http://127.0.0.1:8080. */
  readonly url: string;
  readonly user: string;
  /** Default: `resonance-<user>` (a note says so). */
  readonly password?: string;
  /** "0" (the Resonance Room, default), a session id, or "@bob" for the single chat with bob. */
  readonly session?: string;
  readonly input: NodeJS.ReadableStream;
  readonly output: NodeJS.WritableStream;
  /** Aborting ends the chat like /quit. */
  readonly signal?: AbortSignal;
}

const HISTORY = 20n;
/** How long /quit or Ctrl-D waits for typed messages still unacknowledged. */
const FLUSH_MS = 5_000;

/**
 * A terminal chat: logs in (registering on first use), opens the session, prints its last 20
 * messages and then new ones as `[HH:MM:SS] alice: text` (messages of other sessions as a
 * one-line notice), and sends every typed line. `/quit`, end of input (Ctrl-D) or the signal
 * end it. Resolves when done, after the client is closed; rejects only if login or opening
 * the session fails (non-retryable). Never exits the process.
 */
export async function runChat(opts: ChatOptions): Promise<void> {
  const out = (line: string): void => void opts.output.write(`${line}\n`);
  // A demo default that passes the server's length rule; it is printed so nobody is surprised.
  // Only for a server on this machine: anyone could guess it.
  const host = new URL(opts.url).hostname;
  if (opts.password === undefined && !["127.0.0.1", "localhost", "[::1]", "::1"].includes(host)) {
    throw new ResonanceError("invalid_argument", `--password is required for a server that is not on this machine (${host})`);
  }
  const password = opts.password ?? `resonance-${opts.user}`;
  if (opts.password === undefined) out(`note: no --password given; using "${password}" as the password`);
  const client = new ResonanceClient({
    urls: [opts.url],
    username: opts.user,
    password,
    register: true,
    backlog: "skip", // The history below shows the recent past; the backlog would repeat it.
  });
  const printed = new Set<bigint>();
  let sessionId: string | undefined;
  const early: PushMessage[] = [];
  const show = (m: PushMessage): void => {
    if (sessionId === undefined) return void early.push(m);
    if (printed.has(m.msgId)) return;
    printed.add(m.msgId);
    if (m.sessionId === sessionId) out(formatMessage(m));
    else out(`(new message in ${m.sessionId} from ${m.fromUsername})`);
  };
  client.onMessage(show);
  let live = false;
  client.onClose(() => {
    if (live) out("-- connection lost; reconnecting");
  });
  client.onConnected(() => {
    if (live) out("-- reconnected");
  });
  const stop = (): void => void client.close();
  opts.signal?.addEventListener("abort", stop, { once: true });
  try {
    if (opts.signal?.aborted) return;
    await client.start();
    if (client.registered) out(`registered new user ${opts.user}`);
    const target = opts.session ?? "0";
    const peer = target.startsWith("@") ? target.slice(1) : undefined;
    sessionId = peer ? (await client.api.session.createSession({ members: [peer], type: 1 })).sessionId : target;
    const history = await client.api.session.getHistoryMessages({ sessionId, limit: HISTORY });
    out(`-- ${opts.user} in ${sessionId === "0" ? "the Resonance Room" : sessionId}; /quit or Ctrl-D to leave`);
    for (const m of history.messages) show(m);
    for (const m of early.splice(0)) show(m);
    live = true;
    await readLines(opts, async (line) => {
      const ack = await client.send({ sessionId: sessionId!, content: line, ...(peer ? { toUsername: peer } : {}) });
      // Our own line is shown once committed; the push of it (if any) is then a duplicate.
      show(create(PushMessageSchema, { msgId: ack.msgId, seqId: ack.seqId, sessionId: sessionId!, fromUsername: opts.user, content: line, type: "text", timestamp: BigInt(Math.floor(Date.now() / 1000)) }));
    }, (err, line) => out(`! not sent (${err.code}): ${err.message} — "${line}"`));
  } catch (err) {
    if (!opts.signal?.aborted) throw err; // Aborted while starting: a normal end.
  } finally {
    live = false;
    opts.signal?.removeEventListener("abort", stop);
    await client.close();
  }
}

/** `[HH:MM:SS] alice: text` in local time; system messages as `[HH:MM:SS] * text`. */
export function formatMessage(m: PushMessage): string {
  const time = new Date(Number(m.timestamp) * 1000).toTimeString().slice(0, 8);
  return m.type === "system" ? `[${time}] * ${m.content}` : `[${time}] ${m.fromUsername}: ${m.content}`;
}

/**
 * Feeds each non-empty line to `send` until /quit, end of input or abort; then waits (bounded)
 * for sends still in flight. A failed send is reported through `onError`, never thrown.
 */
async function readLines(
  opts: ChatOptions,
  send: (line: string) => Promise<void>,
  onError: (err: ResonanceError, line: string) => void,
): Promise<void> {
  const rl = createInterface({ input: opts.input, terminal: false });
  const inFlight = new Set<Promise<void>>();
  const onAbort = (): void => rl.close();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) rl.close();
  try {
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === "/quit") break;
      if (!line) continue;
      const p = send(line).catch((err: unknown) => onError(ResonanceError.from(err), line));
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p));
    }
  } finally {
    rl.close();
    opts.signal?.removeEventListener("abort", onAbort);
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, FLUSH_MS)));
  await Promise.race([Promise.all(inFlight), timeout]);
  clearTimeout(timer);
}
