import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  ChatRequestSchema,
  WsPacketSchema,
  type Ack,
  type Goaway,
  type PushMessage,
  type WsPacket,
} from "../gen/resonance/gateway/v1/gateway_pb.js";
import { GatewaySocket, type CloseInfo } from "./connection.js";
import { SeenMessages } from "./dedup.js";
import { equalJitter, fullJitter, isRetryableCode, ResonanceError } from "./errors.js";
import { buildApi, wsUrlOf, type ResonanceApi } from "./http-api.js";
import { Outbox } from "./outbox.js";
import { randomId, sleep, type ClientPlatform } from "./platform.js";
import type { ClientStats, MessageSource, ResonanceClientOptions, SendInput } from "./types.js";

/** Sessions listed in one SyncSessions call (the server's cap); older ones start from the read position. */
const MAX_KNOWN_SESSIONS = 1_000;
/** Messages per GetHistoryMessages page while catching up a large session (the server's cap). */
const HISTORY_PAGE = 100n;

type Listener<A extends unknown[]> = (...args: A) => void;

/**
 * The Resonance client SDK on any platform (see `ResonanceClient` in client.ts for Node and
 * browser.ts for browsers): login/register or a given token, one WebSocket at a time with
 * automatic reconnection, inbox catch-up, exactly-once delivery of messages to `onMessage`
 * (deduplicated by session and seq), and sends that are acked once committed. Retryable
 * conditions (shutdowns, network loss, rate limiting, retryable ack codes) are handled inside
 * and never surfaced; only non-retryable errors reach the application.
 */
export class ClientCore {
  readonly username: string;
  readonly #opts: ResonanceClientOptions;
  readonly #platform: ClientPlatform;
  readonly #apis: readonly ResonanceApi[];
  readonly #seen: SeenMessages;
  readonly #outbox: Outbox;
  readonly #abort = new AbortController();
  readonly #stats: ClientStats = {
    acked: 0, pushesReceived: 0, deltaReceived: 0, historyReceived: 0, duplicatesDropped: 0, reconnects: 0, closeCodes: {},
    cleanCloses: 0, uncleanCloses: 0, nonRetryableErrors: 0, reconnectDelaysMs: [], goaways: 0,
  };
  readonly #listeners = {
    message: new Set<Listener<[PushMessage, MessageSource]>>(),
    raw: new Set<Listener<[PushMessage, MessageSource]>>(),
    goaway: new Set<Listener<[Goaway]>>(),
    close: new Set<Listener<[CloseInfo]>>(),
    error: new Set<Listener<[ResonanceError]>>(),
    connected: new Set<Listener<[]>>(),
    authExpired: new Set<Listener<[]>>(),
    waiting: new Set<Listener<[number]>>(),
  };
  #token: string | undefined;
  #registered = false;
  #urlIndex = 0;
  #socket: GatewaySocket | undefined;
  #gen = 0;
  #ready = false;
  #everReady = false;
  #closed = false;
  #starting: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #loop: Promise<void> | undefined;
  /** Delay decided by the last close, used by the connect loop's next wait. */
  #nextDelayMs: number | undefined;
  #attempt = 0;
  #rateLimitStrikes = 0;
  #expired = false;
  #wake: AbortController | undefined;
  #waitingUntil: number | undefined;
  #closedAt: number | undefined;
  #readyAt = 0;
  #cursor = 0n;
  #pullChain: Promise<void> = Promise.resolve();
  #pushesSincePull = 0;
  /** Per session, the highest seq delivered (or skipped): where a large session's catch-up starts. */
  readonly #known = new Map<string, bigint>();
  /** Pushes that arrived while catching up after a (re)connect; delivered, in seq order per session, once caught up. */
  #held: PushMessage[] | undefined;

  /** Does no I/O; see `start()`. Needs `password` or `token`. */
  constructor(opts: ResonanceClientOptions, platform: ClientPlatform) {
    if (opts.urls.length === 0) throw new TypeError("ResonanceClient: at least one gateway URL is required");
    if (opts.password === undefined && opts.token === undefined) throw new TypeError("ResonanceClient: a password or a token is required");
    this.#opts = opts;
    this.#platform = platform;
    this.username = opts.username;
    this.#token = opts.password === undefined ? opts.token : undefined;
    // With a given token, any call it no longer opens means the session is over.
    const watchToken: Interceptor = (next) => async (req) => {
      try {
        return await next(req);
      } catch (err) {
        if (this.#tokenOnly && ConnectError.from(err).code === Code.Unauthenticated) this.#expire();
        throw err;
      }
    };
    this.#apis = opts.urls.map((u) =>
      buildApi(platform, u, { token: () => this.#token, binary: opts.binary ?? false, interceptors: [watchToken] }),
    );
    this.#seen = new SeenMessages(opts.dedup);
    this.#outbox = new Outbox(
      (frame) => (this.#ready && this.#socket?.sendFrame(frame) ? this.#gen : undefined),
      { baseMs: 250, maxMs: opts.reconnect?.maxMs ?? 10_000, detach: (t) => platform.detach(t) },
      {
        onAcked: () => void this.#stats.acked++,
        onRejected: (err) => {
          if (err.code !== "cancelled") this.#stats.nonRetryableErrors++;
        },
      },
    );
  }

  /** True while a connection is open and caught up (sends go out at once). */
  get connected(): boolean {
    return this.#ready;
  }

  /** The current access token (undefined before login or after a 1008 until the next login). */
  get token(): string | undefined {
    return this.#token;
  }

  /** True once this client created the account (`register` option, user did not exist). */
  get registered(): boolean {
    return this.#registered;
  }

  /** Typed HTTP clients for the gateway currently in use, authenticated with the current token. */
  get api(): ResonanceApi {
    return this.#apis[this.#urlIndex]!;
  }

  /** The inbox cursor the next delta pull starts from. */
  get cursor(): bigint {
    return this.#cursor;
  }

  /**
   * Logs in (or registers), connects, pulls the inbox delta and emits what was not seen before.
   * Resolves when connected and caught up. Rejects on a non-retryable failure (wrong password),
   * on `startTimeoutMs`, or when closed meanwhile; a rejected start leaves the client closed.
   * Idempotent.
   */
  start(): Promise<void> {
    this.#starting ??= (async () => {
      if (this.#closed) throw closedError();
      this.#cursor = (await this.#opts.cursorStore?.load(this.username)) ?? 0n;
      const deadline = Date.now() + (this.#opts.startTimeoutMs ?? 30_000);
      this.#loop = this.#connectLoop(0, deadline).finally(() => (this.#loop = undefined));
      await this.#loop;
    })().catch(async (err: unknown) => {
      await this.close();
      throw ResonanceError.from(err);
    });
    return this.#starting;
  }

  /**
   * Sends a chat message. `seq` (the idempotency key) defaults to a random UUID; sending a seq
   * that is still pending returns the pending promise. Resolves with the Ack (msg_id, seq_id)
   * once committed — across any number of reconnects, resending the same seq. Rejects only
   * with a non-retryable ResonanceError (permission_denied, invalid_argument, ...) or
   * "cancelled" when the client is closed first — observe it: sends still pending at
   * `close()` reject, and an unobserved rejection is an unhandled rejection.
   */
  send(input: SendInput, seq: string = randomId()): Promise<Ack> {
    if (this.#closed) return Promise.reject(closedError());
    const chat = create(ChatRequestSchema, {
      sessionId: input.sessionId,
      content: input.content,
      type: input.type ?? "text",
      toUsername: input.toUsername ?? "",
      fromUsername: this.username,
      timestamp: BigInt(Math.floor(Date.now() / 1000)),
    });
    const frame = toBinary(WsPacketSchema, create(WsPacketSchema, { seq, payload: { case: "chat", value: chat } }));
    const limit = this.#opts.maxFrameBytes ?? 64 * 1024;
    if (frame.length > limit) {
      this.#stats.nonRetryableErrors++;
      return Promise.reject(new ResonanceError("invalid_argument", `message frame of ${frame.length} bytes exceeds ${limit}`));
    }
    return this.#outbox.add(seq, frame);
  }

  /** Every new message (never twice), from pushes and delta pulls. Returns an unsubscribe function. */
  onMessage(cb: (message: PushMessage, source: MessageSource) => void): () => void {
    return subscribe(this.#listeners.message, cb);
  }

  /**
   * Every message as it arrives, before deduplication: each push and each delta event, so a
   * message received twice is reported twice (for audits and tests; applications want
   * `onMessage`). Returns an unsubscribe function.
   */
  onRawMessage(cb: (message: PushMessage, source: MessageSource) => void): () => void {
    return subscribe(this.#listeners.raw, cb);
  }

  /** A Goaway from the server (a 1001 close follows; the client reconnects by itself). */
  onGoaway(cb: (goaway: Goaway) => void): () => void {
    return subscribe(this.#listeners.goaway, cb);
  }

  /** Every close of an open socket, including the final one from `close()`. */
  onClose(cb: (info: CloseInfo) => void): () => void {
    return subscribe(this.#listeners.close, cb);
  }

  /** Non-retryable problems not tied to a pending send: 1003/1009 closes, a login refused on reconnect (the client then closes). */
  onError(cb: (err: ResonanceError) => void): () => void {
    return subscribe(this.#listeners.error, cb);
  }

  /** Connected and caught up (after `start()` and after every reconnect). */
  onConnected(cb: () => void): () => void {
    return subscribe(this.#listeners.connected, cb);
  }

  /**
   * Only for a client started from a `token`: the server refused it (expired, revoked, logged
   * out elsewhere). Called once; the client is closed by then (pending sends rejected with
   * "cancelled"). Log in again and start a new client.
   */
  onAuthExpired(cb: () => void): () => void {
    return subscribe(this.#listeners.authExpired, cb);
  }

  /**
   * While waiting to (re)connect: when the next attempt starts (epoch ms). Undefined while
   * connected, during an attempt, and once closed.
   */
  get nextAttemptAt(): number | undefined {
    return this.#waitingUntil;
  }

  /** A wait before the next (re)connection attempt begins; the argument is `nextAttemptAt`. */
  onWaiting(cb: (nextAttemptAt: number) => void): () => void {
    return subscribe(this.#listeners.waiting, cb);
  }

  /** Ends the wait before the next reconnection attempt (a "retry now" button). No-op otherwise. */
  retryNow(): void {
    this.#wake?.abort();
  }

  /**
   * Revokes the token on the server (best effort: a failure is ignored, the token then expires
   * by itself) and closes the client. Resolves when both are done; never rejects.
   */
  async logout(): Promise<void> {
    if (this.#token && !this.#closed) await this.api.auth.logout({}).catch(() => {});
    await this.close();
  }

  /** A snapshot of the counters. */
  stats(): ClientStats {
    const s = this.#stats;
    return { ...s, closeCodes: { ...s.closeCodes }, reconnectDelaysMs: [...s.reconnectDelaysMs] };
  }

  /**
   * Stops everything: timers, reconnects, the socket (closed with 1000, handshake awaited,
   * bounded). Pending sends reject with code "cancelled". Idempotent; never rejects.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#ready = false;
      this.#abort.abort();
      this.#waitingUntil = undefined;
      this.#outbox.rejectAll(closedError());
      await this.#socket?.close(1000, "client closed");
    })();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Connects, retrying retryable failures with backoff, round-robin over the URLs, until
   * connected and caught up. Without a deadline a non-retryable failure closes the client.
   */
  async #connectLoop(firstDelayMs: number, deadline?: number): Promise<void> {
    let delay = firstDelayMs;
    while (true) {
      if (delay > 0) await this.#wait(delay);
      if (this.#closed) throw closedError();
      try {
        await this.#connectOnce();
        return;
      } catch (err) {
        const e = ResonanceError.from(err);
        if (this.#expired || (this.#tokenOnly && e.code === "unauthenticated")) {
          this.#expire();
          throw tokenRefused(e);
        }
        if (this.#closed) throw closedError();
        if (!isRetryableCode(e.code)) {
          if (deadline !== undefined) throw e;
          this.#emit(this.#listeners.error, e);
          await this.close();
          return;
        }
        this.#urlIndex = (this.#urlIndex + 1) % this.#apis.length;
        delay = this.#nextDelayMs ?? this.#backoff();
        this.#nextDelayMs = undefined;
        if (deadline !== undefined && Date.now() + delay > deadline) throw e;
      }
    }
  }

  async #connectOnce(): Promise<void> {
    const api = this.api;
    let fresh = false;
    if (!this.#token) {
      await this.#login(api);
      fresh = true;
    }
    let socket: GatewaySocket;
    this.#held = [];
    try {
      socket = await this.#openSocket(api);
    } catch (err) {
      if (fresh || (await this.#upgradeFailure(api, err)) !== "unauthenticated") throw err;
      if (this.#tokenOnly) throw tokenRefused(err);
      this.#token = undefined; // Expired or revoked: one fresh login, then the upgrade again.
      await this.#login(api);
      socket = await this.#openSocket(api);
    }
    try {
      const emit = this.#everReady || this.#opts.backlog !== "skip";
      await this.#pull(emit);
      await this.#catchUpLarge(emit);
    } catch (err) {
      this.#held = undefined; // Caught up again on the next attempt: they are fetched again.
      void socket.close(1000, "catch-up failed");
      const e = ResonanceError.from(err);
      if (e.code !== "unauthenticated") throw e;
      if (this.#tokenOnly) throw tokenRefused(e);
      this.#token = undefined; // Expired between upgrade and pull: log in on the next attempt.
      throw new ResonanceError("unavailable", "token refused while catching up", { cause: e });
    }
    if (this.#socket !== socket || !socket.isOpen) {
      this.#held = undefined;
      throw new ResonanceError("unavailable", "connection lost while catching up");
    }
    if (this.#closed) throw closedError();
    this.#releaseHeld();
    this.#ready = true;
    this.#readyAt = Date.now();
    this.#attempt = 0;
    if (this.#everReady) this.#stats.reconnects++;
    if (this.#closedAt !== undefined) this.#stats.reconnectDelaysMs.push(Date.now() - this.#closedAt);
    this.#closedAt = undefined;
    this.#everReady = true;
    this.#outbox.resendAll();
    this.#emit(this.#listeners.connected);
  }

  /**
   * Why an upgrade failed: its code, or — where the platform hides a 401 (browsers) — the
   * answer of a cheap authenticated call, which tells a refused token from a gateway away.
   */
  async #upgradeFailure(api: ResonanceApi, err: unknown): Promise<string> {
    const code = ResonanceError.from(err).code;
    if (code !== "unavailable" || this.#platform.seesUpgradeStatus || !this.#token) return code;
    try {
      await api.session.pullInboxDelta({ cursorId: this.#cursor, limit: 1n });
      return code;
    } catch (probe) {
      return ResonanceError.from(probe).code === "unauthenticated" ? "unauthenticated" : code;
    }
  }

  /** Waits before the next attempt; `retryNow()` or `close()` end the wait early. */
  async #wait(ms: number): Promise<void> {
    const wake = new AbortController();
    const stop = (): void => wake.abort();
    this.#abort.signal.addEventListener("abort", stop, { once: true });
    this.#wake = wake;
    this.#waitingUntil = Date.now() + ms;
    this.#emit(this.#listeners.waiting, this.#waitingUntil);
    try {
      await sleep(ms, wake.signal);
    } finally {
      this.#abort.signal.removeEventListener("abort", stop);
      this.#wake = undefined;
      this.#waitingUntil = undefined;
    }
  }

  /** The given token was refused: report it once and close. */
  #expire(): void {
    if (this.#expired || this.#closed) return;
    this.#expired = true;
    void this.close();
    this.#emit(this.#listeners.authExpired);
  }

  get #tokenOnly(): boolean {
    return this.#opts.password === undefined;
  }

  async #openSocket(api: ResonanceApi): Promise<GatewaySocket> {
    const gen = ++this.#gen;
    const pulseIntervalMs = this.#opts.pulseIntervalMs ?? 30_000;
    const socket = await GatewaySocket.open(this.#platform, wsUrlOf(api.baseUrl, this.#token ?? ""), {
      pulseIntervalMs,
      deadAfterMs: this.#opts.deadAfterMs ?? Math.max(75_000, pulseIntervalMs * 2.5),
      handshakeTimeoutMs: this.#opts.handshakeTimeoutMs ?? 10_000,
      onPacket: (p) => this.#onPacket(p, gen),
      onClose: (info) => this.#onSocketClose(info, gen),
    });
    if (this.#closed) {
      await socket.close(1000, "client closed");
      throw closedError();
    }
    this.#socket = socket;
    return socket;
  }

  /** Login, or with `register`: login → register on not_found/unauthenticated → login on already_exists. */
  async #login(api: ResonanceApi): Promise<void> {
    const { username, password } = this.#opts;
    if (password === undefined) throw tokenRefused(undefined); // Started from a token: nothing to log in with.
    try {
      this.#token = (await api.auth.login({ username, password })).accessToken;
      return;
    } catch (err) {
      const e = ResonanceError.from(err);
      if (!this.#opts.register || (e.code !== "not_found" && e.code !== "unauthenticated")) throw e;
    }
    try {
      this.#token = (await api.auth.register({ username, password, nickname: this.#opts.nickname ?? "" })).accessToken;
      this.#registered = true;
    } catch (err) {
      if (ResonanceError.from(err).code !== "already_exists") throw ResonanceError.from(err);
      // Registered meanwhile by another client of the same user; a wrong password fails here.
      this.#token = (await api.auth.login({ username, password })).accessToken;
    }
  }

  #onPacket(packet: WsPacket, gen: number): void {
    switch (packet.payload.case) {
      case "push":
        this.#stats.pushesReceived++;
        if (this.#held && gen === this.#gen) {
          this.#held.push(packet.payload.value);
          return;
        }
        this.#deliver(packet.payload.value, "push", true);
        if (this.#ready && this.#opts.refreshCursorEvery !== 0 && ++this.#pushesSincePull >= (this.#opts.refreshCursorEvery ?? 1000)) {
          this.#pushesSincePull = 0;
          this.#pull(true).catch(() => {}); // Only keeps the cursor near; the next reconnect pulls anyway.
        }
        return;
      case "ack":
        this.#outbox.handleAck(packet.payload.value, gen);
        return;
      case "goaway":
        this.#stats.goaways++;
        this.#emit(this.#listeners.goaway, packet.payload.value);
        return;
      default:
        return; // Pulse answers: the socket already noted the peer is alive.
    }
  }

  #onSocketClose(info: CloseInfo, gen: number): void {
    const s = this.#stats;
    s.closeCodes[info.code] = (s.closeCodes[info.code] ?? 0) + 1;
    if (info.wasClean) s.cleanCloses++;
    else s.uncleanCloses++;
    const current = gen === this.#gen;
    const wasReady = current && this.#ready;
    if (current) {
      this.#socket = undefined;
      this.#ready = false;
    }
    this.#emit(this.#listeners.close, info);
    if (this.#closed || !current) return;
    if (wasReady) this.#closedAt = Date.now();
    if (wasReady && Date.now() - this.#readyAt > 60_000) this.#rateLimitStrikes = 0;
    let delay: number;
    if (info.code === 1001 && info.goaway) {
      delay = Math.random() * Number(info.goaway.reconnectAfterMs);
    } else if (info.code === 4429) {
      delay = equalJitter(this.#rateLimitStrikes++, this.#opts.reconnect?.rateLimitedMs ?? 2_000, Math.max(30_000, this.#opts.reconnect?.maxMs ?? 0));
    } else {
      if (info.code === 1008 && this.#tokenOnly) return this.#expire();
      if (info.code === 1008) this.#token = undefined; // Token expired or revoked: log in again.
      if (info.code === 1003 || info.code === 1009) {
        const err = this.#outbox.rejectCulprit(gen, info.code);
        this.#emit(this.#listeners.error, new ResonanceError("internal", `the gateway refused a frame from this client (close ${info.code} ${info.reason})`, { cause: err }));
      }
      delay = this.#backoff();
    }
    if (this.#loop) {
      this.#nextDelayMs = delay; // An attempt is in flight (catching up); it will retry with this delay.
      return;
    }
    this.#urlIndex = (this.#urlIndex + 1) % this.#apis.length; // Any gateway will do: round-robin.
    this.#loop = this.#connectLoop(delay).finally(() => (this.#loop = undefined));
    this.#loop.catch(() => {}); // Closed meanwhile; nothing to report.
  }

  /** Pulls the inbox delta from the cursor until `has_more` is false; serialized. */
  #pull(emit: boolean): Promise<void> {
    const run = async (): Promise<void> => {
      const api = this.api;
      const limit = BigInt(this.#opts.deltaPageSize ?? 500);
      this.#pushesSincePull = 0;
      while (true) {
        const r = await api.session.pullInboxDelta({ cursorId: this.#cursor, limit });
        for (const ev of r.events) {
          if (!ev.message) continue;
          this.#stats.deltaReceived++;
          this.#deliver(ev.message, "delta", emit);
        }
        if (r.nextCursorId > this.#cursor) {
          this.#cursor = r.nextCursorId;
          await this.#opts.cursorStore?.save(this.username, this.#cursor);
        }
        if (!r.hasMore || r.events.length === 0) return;
      }
    };
    const p = this.#pullChain.then(run, run);
    this.#pullChain = p.catch(() => {});
    return p;
  }

  /**
   * Catches up the large sessions (no inbox rows) that moved past what this client has: asks
   * which (SyncSessions), then pages through each one's messages by seq. With `emit` false
   * (`backlog: "skip"` on the first start) it only notes where they are. A server without
   * SyncSessions has no large sessions to catch up.
   */
  async #catchUpLarge(emit: boolean): Promise<void> {
    const api = this.api;
    const known = [...this.#known].slice(-MAX_KNOWN_SESSIONS).map(([sessionId, seqId]) => ({ sessionId, seqId }));
    let moved;
    try {
      moved = (await api.session.syncSessions({ known })).moved;
    } catch (err) {
      if (ResonanceError.from(err).code === "unimplemented") return;
      throw err;
    }
    for (const m of moved) {
      let after = m.afterSeq;
      const had = this.#known.get(m.sessionId);
      if (had !== undefined && had > after) after = had;
      if (!emit) {
        this.#note(m.sessionId, m.maxSeqId);
        continue;
      }
      while (after < m.maxSeqId) {
        const page = await api.session.getHistoryMessages({ sessionId: m.sessionId, afterSeq: after, limit: HISTORY_PAGE });
        for (const message of page.messages) {
          this.#stats.historyReceived++;
          this.#deliver(message, "history", true);
        }
        const last = page.messages.at(-1);
        if (!last || last.seqId <= after) break;
        after = last.seqId;
      }
    }
  }

  /** Delivers the pushes held while catching up: per session in seq order, sessions in order of first arrival. */
  #releaseHeld(): void {
    const held = this.#held ?? [];
    this.#held = undefined;
    const bySession = new Map<string, PushMessage[]>();
    for (const m of held) {
      const list = bySession.get(m.sessionId);
      if (list) list.push(m);
      else bySession.set(m.sessionId, [m]);
    }
    for (const list of bySession.values()) {
      list.sort((a, b) => (a.seqId < b.seqId ? -1 : a.seqId > b.seqId ? 1 : 0));
      for (const m of list) this.#deliver(m, "push", true);
    }
  }

  #note(sessionId: string, seqId: bigint): void {
    if (seqId > (this.#known.get(sessionId) ?? 0n)) this.#known.set(sessionId, seqId);
  }

  #deliver(message: PushMessage, source: MessageSource, emit: boolean): void {
    this.#note(message.sessionId, message.seqId);
    this.#emit(this.#listeners.raw, message, source);
    if (!this.#seen.add(message)) {
      this.#stats.duplicatesDropped++;
      return;
    }
    if (emit) this.#emit(this.#listeners.message, message, source);
  }

  #backoff(): number {
    return fullJitter(this.#attempt++, this.#opts.reconnect?.baseMs ?? 200, this.#opts.reconnect?.maxMs ?? 10_000);
  }

  /** Calls listeners; one that throws is reported as an uncaught exception, not swallowed. */
  #emit<A extends unknown[]>(listeners: Set<Listener<A>>, ...args: A): void {
    for (const cb of listeners) {
      try {
        cb(...args);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}

function subscribe<T>(set: Set<T>, cb: T): () => void {
  set.add(cb);
  return () => void set.delete(cb);
}

function tokenRefused(cause: unknown): ResonanceError {
  return new ResonanceError("unauthenticated", "the token was refused (expired or revoked): log in again", { cause });
}

function closedError(): ResonanceError {
  return new ResonanceError("cancelled", "client closed");
}
