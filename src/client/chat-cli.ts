import { clearLine, createInterface, cursorTo, type Interface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { PushMessageSchema, type PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { ResonanceClient } from "./client.js";
import { isRetryableCode, ResonanceError } from "./errors.js";

export interface ChatOptions {
  /** Gateway base URL, e.g. http://127.0.0.1:8080. */
  readonly url: string;
  readonly user: string;
  /** Default: `resonance-<user>` (a note says so). */
  readonly password?: string;
  /** "0" (the Resonance Room, default), a session id, or "@bob" for the one-to-one chat with bob. */
  readonly session?: string;
  readonly input: NodeJS.ReadableStream;
  readonly output: NodeJS.WritableStream;
  /** Aborting ends the chat like /quit. */
  readonly signal?: AbortSignal;
  /** Wait between reachability checks while the server does not answer (default 2 s). */
  readonly retryMs?: number;
}

const HISTORY = 20n;
/** How long /quit or Ctrl-D waits for typed messages still unacknowledged. */
const FLUSH_MS = 5_000;
const ROOM = "0";
const PREVIEW = 80;

const HELP = `commands:
  /list          your chats (the current one is marked *)
  /open @user    the one-to-one chat with user (made if new)
  /open ID       a chat by its id (or by its name) from /list
  /help          this text
  /quit          leave (Ctrl-D too)
anything else is sent to the current chat (start a line with // to send one starting with /)`;

/** `[HH:MM:SS] alice: text` in local time; system messages as `[HH:MM:SS] * text`. */
export function formatMessage(m: PushMessage): string {
  const time = new Date(Number(m.timestamp) * 1000).toTimeString().slice(0, 8);
  return m.type === "system" ? `[${time}] * ${m.content}` : `[${time}] ${m.fromUsername}: ${m.content}`;
}

/**
 * A terminal chat: logs in (registering on first use), opens the session, prints its last 20
 * messages and then new ones, each once; messages of other chats show as one line tagged with
 * the chat's name. On a terminal the input line is edited in raw mode (readline: arrows,
 * history, no 4 KiB line limit) and arriving messages print above it. Commands: see `/help`.
 * While the server does not answer it says "cannot reach <url>, retrying" and keeps trying.
 * Resolves after /quit, end of input or the signal, with the client closed; rejects only when
 * logging in or opening the first chat fails for good (wrong password, a misconfigured server).
 * Never exits the process.
 */
export async function runChat(opts: ChatOptions): Promise<void> {
  const tty = (opts.input as NodeJS.ReadStream).isTTY === true && (opts.output as NodeJS.WriteStream).isTTY === true;
  let rl: Interface | undefined;
  const out = (line: string): void => {
    if (rl && tty) {
      // Above the line being typed, which is then drawn again as it was.
      clearLine(opts.output, 0);
      cursorTo(opts.output, 0);
      opts.output.write(`${line}\n`);
      rl.prompt(true);
    } else opts.output.write(`${line}\n`);
  };
  // A demo default that passes the server's length rule; it is printed so nobody is surprised.
  // Only for a server on this machine: anyone could guess it.
  const host = new URL(opts.url).hostname;
  if (opts.password === undefined && !["127.0.0.1", "localhost", "[::1]", "::1"].includes(host)) {
    throw new ResonanceError("invalid_argument", `--password is required for a server that is not on this machine (${host})`);
  }
  const password = opts.password ?? `resonance-${opts.user}`;
  if (opts.password === undefined) out(`note: no --password given; using "${password}" as the password`);
  const makeClient = (): ResonanceClient =>
    new ResonanceClient({
      urls: [opts.url],
      username: opts.user,
      password,
      register: true,
      backlog: "skip", // The history below shows the recent past; the backlog would repeat it.
      startTimeoutMs: 3_000,
    });
  let client = makeClient();

  const names = new Map<string, string>([[ROOM, "Resonance Room"]]);
  const nameOf = (id: string): string => names.get(id) ?? id;
  const printed = new Set<bigint>();
  let current: { id: string; peer: string | undefined; readSeq: bigint } | undefined;
  const early: PushMessage[] = [];
  const show = (m: PushMessage): void => {
    if (current === undefined) return void early.push(m);
    if (printed.has(m.msgId)) return;
    printed.add(m.msgId);
    const mine = m.fromUsername === opts.user;
    // A new chat announces itself: its first system message carries the name its other members
    // show (the creator's nickname). The creator opens it with /open, which prints it there.
    if (m.type === "system" && mine && m.sessionId !== current.id) return;
    if (m.sessionMeta?.name && !names.has(m.sessionId)) names.set(m.sessionId, m.sessionMeta.name);
    if (m.sessionId === current.id) {
      if (m.seqId > current.readSeq) current.readSeq = m.seqId;
      return out(formatMessage(m));
    }
    const text = m.content.length > PREVIEW ? `${m.content.slice(0, PREVIEW)}…` : m.content;
    out(`  (${nameOf(m.sessionId)}) ${m.type === "system" ? "* " : `${m.fromUsername}: `}${text}   [/open ${m.sessionId}]`);
  };

  const retryMs = opts.retryMs ?? 2_000;
  let live = false;
  let outage: Promise<void> | undefined;
  /** While disconnected: says once that the server does not answer. */
  const watchOutage = (): void => {
    outage ??= (async () => {
      let said = false;
      while (live && !client.connected && !opts.signal?.aborted) {
        const reachable = await fetch(opts.url, { signal: AbortSignal.timeout(2_000) }).then(
          (r) => (void r.body?.cancel(), true),
          () => false,
        );
        if (!reachable && !said) {
          out(`-- cannot reach ${opts.url}, retrying`);
          said = true;
        }
        await sleep(retryMs, undefined, { signal: opts.signal }).catch(() => undefined);
      }
    })().finally(() => (outage = undefined));
  };
  const listen = (c: ResonanceClient): void => {
    c.onMessage(show);
    c.onClose(() => {
      if (!live) return;
      out("-- connection lost; reconnecting");
      watchOutage();
    });
    c.onConnected(() => {
      if (live) out("-- reconnected");
    });
    c.onError((err) => out(`! ${err.code}: ${err.message}`));
  };
  listen(client);
  const stop = (): void => void client.close();
  opts.signal?.addEventListener("abort", stop, { once: true });

  const refreshNames = async (): Promise<Array<{ id: string; name: string; unread: bigint }>> => {
    const { sessions } = await client.api.session.getSessionList({});
    for (const s of sessions) if (s.name) names.set(s.sessionId, s.name);
    return sessions.map((s) => ({ id: s.sessionId, name: s.name || s.sessionId, unread: s.unreadCount }));
  };

  /** Makes `target` (an id, a name from /list, or @user) the current chat and prints its recent history. */
  const open = async (target: string): Promise<void> => {
    const peer = target.startsWith("@") ? target.slice(1) : undefined;
    let id = target;
    if (peer) id = (await client.api.session.createSession({ members: [peer], type: 1 })).sessionId;
    else if (!names.has(id)) {
      const byName = [...names].find(([, n]) => n.toLowerCase() === target.toLowerCase());
      if (byName) id = byName[0];
    }
    await refreshNames().catch(() => undefined); // Names are a nicety: ids do when the list fails.
    const history = await client.api.session.getHistoryMessages({ sessionId: id, limit: HISTORY });
    current = { id, peer, readSeq: 0n };
    out(`-- ${opts.user} in ${nameOf(id)}${id === nameOf(id) ? "" : ` (${id})`}; /help for commands, /quit to leave`);
    for (const m of history.messages) printed.delete(m.msgId); // Shown again in the chat just opened.
    for (const m of history.messages) show(m);
    for (const m of early.splice(0)) show(m);
    await markRead();
  };

  /** What was printed of the current chat counts as read (for /list and the other clients). */
  const markRead = async (): Promise<void> => {
    const c = current;
    if (c && c.readSeq > 0n) await client.api.session.updateReadPosition({ sessionId: c.id, seqId: c.readSeq }).catch(() => undefined);
  };

  try {
    // Until the server answers (or says no for good): "cannot reach …, retrying".
    let said = false;
    for (;;) {
      if (opts.signal?.aborted) return;
      try {
        await client.start();
        break;
      } catch (err) {
        if (opts.signal?.aborted) return;
        const e = ResonanceError.from(err);
        if (!isRetryableCode(e.code)) throw e;
        if (!said) out(`-- cannot reach ${opts.url}, retrying`);
        said = true;
        await sleep(retryMs, undefined, { signal: opts.signal }).catch(() => undefined);
        // A failed start() leaves its client closed: the next attempt needs a new one.
        client = makeClient();
        listen(client);
      }
    }
    if (said) out(`-- connected to ${opts.url}`);
    if (client.registered) out(`registered new user ${opts.user}`);
    await open(opts.session ?? ROOM);
    live = true;
    await readLines(
      opts,
      tty,
      (i) => (rl = i),
      async (line) => {
        if (line.startsWith("/") && !line.startsWith("//")) return command(line);
        const text = line.startsWith("//") ? line.slice(1) : line;
        const chat = current!;
        const ack = await client.send({ sessionId: chat.id, content: text, ...(chat.peer ? { toUsername: chat.peer } : {}) });
        // Our own line is shown once committed; the push of it (if any) is then a duplicate.
        show(create(PushMessageSchema, { msgId: ack.msgId, seqId: ack.seqId, sessionId: chat.id, fromUsername: opts.user, content: text, type: "text", timestamp: BigInt(Math.floor(Date.now() / 1000)) }));
      },
      (err, line) => out(`! not sent (${err.code}): ${err.message} — "${line.length > PREVIEW ? `${line.slice(0, PREVIEW)}…` : line}"`),
    );
  } catch (err) {
    if (!opts.signal?.aborted) throw err; // Aborted while starting: a normal end.
  } finally {
    live = false;
    opts.signal?.removeEventListener("abort", stop);
    await client.close();
  }

  /** A line starting with "/". Resolves when done; failures are printed, not thrown. */
  async function command(line: string): Promise<void> {
    const [name, ...args] = line.split(/\s+/);
    try {
      switch (name) {
        case "/help":
          return out(HELP);
        case "/list": {
          await markRead();
          const list = await refreshNames();
          const width = Math.max(...list.map((s) => s.id.length));
          out(list.map((s) => `${s.id === current?.id ? "*" : " "} ${s.id.padEnd(width)}  ${s.name}${s.unread > 0n ? `  (${s.unread} unread)` : ""}`).join("\n"));
          return;
        }
        case "/open":
          if (!args[0]) return out("usage: /open @user | /open ID (see /list)");
          return await open(args.join(" "));
        default:
          return out(`unknown command ${name}; /help lists them (start with // to send a line beginning with /)`);
      }
    } catch (err) {
      const e = ResonanceError.from(err);
      out(`! ${name}: ${e.code}: ${e.message}`);
    }
  }
}

/**
 * Feeds each non-empty line to `handle` until /quit, end of input or abort; commands run one at a
 * time, in order, and sends go out without waiting for each other. Then waits (bounded) for
 * sends still in flight. A failed send is reported through `onError`, never thrown.
 */
async function readLines(
  opts: ChatOptions,
  tty: boolean,
  onInterface: (rl: Interface) => void,
  handle: (line: string) => Promise<void>,
  onError: (err: ResonanceError, line: string) => void,
): Promise<void> {
  // On a terminal readline switches it to raw mode and edits the line itself.
  const rl = createInterface({ input: opts.input, output: tty ? opts.output : undefined, terminal: tty, prompt: "> " });
  onInterface(rl);
  const inFlight = new Set<Promise<void>>();
  let commands = Promise.resolve();
  const onAbort = (): void => rl.close();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) rl.close();
  if (tty) rl.prompt();
  try {
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === "/quit") break;
      if (line) {
        const run = (): Promise<void> => handle(line).catch((err: unknown) => onError(ResonanceError.from(err), line));
        // Commands (and so /open) take effect before the lines typed after them are sent.
        const p = line.startsWith("/") && !line.startsWith("//") ? (commands = commands.then(run)) : commands.then(run);
        inFlight.add(p);
        void p.finally(() => inFlight.delete(p));
      }
      if (tty) rl.prompt();
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
