import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { WebSocket } from "ws";
import { AckSchema, GoawaySchema, WsPacketSchema, type PushMessage, type WsPacket } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { SendMessageRequestSchema } from "../gen/resonance/logic/v1/logic_pb.js";
import type { Logger } from "../observability/log.js";
import { closeCodeLabel, type Metrics } from "../observability/metrics.js";
import type { ChatDispatcher } from "./chat-dispatcher.js";
import type { PresenceReporter } from "./presence.js";
import { ChatRate } from "./user-limits.js";

export const CLOSE = {
  goingAway: 1001,
  unsupported: 1003,
  policy: 1008,
  tooBig: 1009,
  tryAgainLater: 1013,
  rateLimited: 4429,
} as const;

export interface HubOptions {
  /** Most bytes a connection may have waiting to be written (our queue plus what is on its way to the socket). */
  readonly sendBufferBytes: number;
  readonly idleTimeoutMs: number;
  readonly pingIntervalMs: number;
  readonly chatRatePerSec: number;
  readonly chatBurst: number;
  /** Most chats of one connection waiting for their ack; beyond it a chat is answered `resource_exhausted` at once. */
  readonly chatWindow: number;
}

const PULSE = toBinary(WsPacketSchema, create(WsPacketSchema, { payload: { case: "pulse", value: {} } }));

/**
 * Bytes handed to a socket and not yet written out. Beyond it frames wait in the connection's own
 * queue, where they are counted against the send buffer: so a slow reader is found by its queue,
 * not after megabytes piled up inside the socket.
 */
const WRITE_WINDOW = 64 * 1024;
/** How long a closed connection has to answer the close frame before it is cut off. */
const CLOSE_WAIT_MS = 5_000;
const SLOW_CLOSE_WAIT_MS = 30_000;
/** Longest a rate-limit close waits for the acks of the chats already accepted. */
const ACKS_BEFORE_CLOSE_MS = 15_000;

/** One client's WebSocket. */
class Connection {
  readonly username: string;
  readonly token: string;
  readonly ws: WebSocket;
  lastSeen = Date.now();
  /** Frames waiting for the write window, and their bytes. */
  readonly out: Uint8Array[] = [];
  outBytes = 0;
  /** Bytes handed to the socket whose write has not completed. */
  writing = 0;
  /** Chats accepted (by client seq) whose ack has not been sent yet. */
  readonly unacked = new Map<string, number>();
  /** Chats of this connection with logic (through the dispatcher), not answered yet: the window. */
  chatsPending = 0;
  expiryTimer: NodeJS.Timeout | undefined;
  /** The server decided to close: frames from the client are dropped without work. */
  stopped = false;
  /** A close that waits for the acks of the chats accepted before it. */
  pendingClose: { code: number; reason: string; timer: NodeJS.Timeout } | undefined;
  /** The close frame is sent: nothing more goes out. */
  closing = false;
  /** The TCP socket is corked until the end of this tick (see `#write`). */
  corked = false;

  constructor(username: string, token: string, ws: WebSocket) {
    this.username = username;
    this.token = token;
    this.ws = ws;
  }
}

/**
 * The gateway's WebSocket connections: per-user sets, heartbeat, chat → logic → ack, pushes
 * with a bounded send queue per connection, and the shutdown drain (Goaway + 1001, spread).
 */
export class ConnectionHub {
  readonly #opts: HubOptions;
  readonly #chats: ChatDispatcher;
  readonly #presence: PresenceReporter;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #byUser = new Map<string, Set<Connection>>();
  readonly #all = new Set<Connection>();
  readonly #chatRate: ChatRate;
  #heartbeat: NodeJS.Timeout | undefined;
  #acceptChats = true;
  #chatsInFlight = 0;
  #chatsIdle: (() => void) | undefined;
  readonly counts = { slowConsumers: 0, chatsRefused: 0 };

  constructor(opts: HubOptions, chats: ChatDispatcher, presence: PresenceReporter, metrics: Metrics, log: Logger) {
    this.#opts = opts;
    this.#chats = chats;
    this.#presence = presence;
    this.#metrics = metrics;
    this.#log = log;
    this.#chatRate = new ChatRate({ perSec: opts.chatRatePerSec, burst: opts.chatBurst });
  }

  get size(): number {
    return this.#all.size;
  }

  users(): Iterable<string> {
    return this.#byUser.keys();
  }

  /** Closes (1008) the sockets opened with a token that was just revoked. */
  closeToken(token: string): void {
    for (const conn of this.#all) if (conn.token === token) this.#close(conn, CLOSE.policy, "token revoked");
  }

  /** Closes (1008) every socket of a user whose tokens were all revoked; resolves how many. */
  closeUser(username: string): number {
    const conns = [...(this.#byUser.get(username) ?? [])];
    for (const conn of conns) this.#close(conn, CLOSE.policy, "logged out everywhere");
    return conns.length;
  }

  /** True when the user has a connection here (and so is already a push target). */
  has(username: string): boolean {
    return this.#byUser.has(username);
  }

  start(): void {
    this.#heartbeat = setInterval(() => {
      this.#checkIdle();
      this.#chatRate.sweep();
    }, Math.min(this.#opts.pingIntervalMs / 2, this.#opts.idleTimeoutMs / 4));
    this.#heartbeat.unref();
  }

  /** Takes a freshly upgraded, authenticated socket. The user is a push target at once. */
  add(ws: WebSocket, principal: { username: string; token: string; expiresAt: number }, remoteIp: string): void {
    const { username, token, expiresAt: tokenExpiresAt } = principal;
    const conn = new Connection(username, token, ws);
    this.#all.add(conn);
    let set = this.#byUser.get(username);
    if (!set) {
      set = new Set();
      this.#byUser.set(username, set);
      this.#presence.online(username, remoteIp);
    }
    set.add(conn);
    this.#metrics.wsConnections.inc();
    const msLeft = tokenExpiresAt * 1000 - Date.now();
    if (tokenExpiresAt > 0 && msLeft < 2 ** 31 - 1) {
      conn.expiryTimer = setTimeout(() => this.#close(conn, CLOSE.policy, "token expired"), Math.max(0, msLeft));
      conn.expiryTimer.unref();
    }
    ws.on("message", (data, isBinary) => this.#onMessage(conn, data as Buffer, isBinary));
    ws.on("pong", () => (conn.lastSeen = Date.now()));
    ws.on("error", (err) => {
      // ws closes the socket itself after an error (e.g. 1009 for an oversized frame).
      const kind = /max payload/i.test(err.message) ? "oversized-frame" : "ws-error";
      this.#metrics.badInput.inc({ kind });
      this.#log.debug({ err, user: username }, "websocket error");
    });
    ws.on("close", (code) => this.#onClose(conn, code));
  }

  #onClose(conn: Connection, code: number): void {
    clearTimeout(conn.expiryTimer);
    clearTimeout(conn.pendingClose?.timer);
    conn.out.length = 0;
    conn.outBytes = 0;
    if (!this.#all.delete(conn)) return;
    this.#metrics.wsConnections.dec();
    this.#metrics.wsClosed.inc({ code: closeCodeLabel(code), reason: conn.closing ? "server" : "client" });
    const set = this.#byUser.get(conn.username);
    set?.delete(conn);
    if (set && set.size === 0) {
      this.#byUser.delete(conn.username);
      this.#presence.offline(conn.username);
    }
  }

  #onMessage(conn: Connection, data: Buffer, isBinary: boolean): void {
    conn.lastSeen = Date.now();
    if (conn.stopped) return; // Closing: whatever the client still sends is not worth any work.
    if (!isBinary) {
      this.#metrics.badInput.inc({ kind: "text-frame" });
      return this.#close(conn, CLOSE.unsupported, "binary WsPacket frames only");
    }
    let packet: WsPacket;
    try {
      packet = fromBinary(WsPacketSchema, data);
    } catch {
      this.#metrics.badInput.inc({ kind: "undecodable-frame" });
      return this.#close(conn, CLOSE.unsupported, "undecodable frame");
    }
    switch (packet.payload.case) {
      case "pulse":
        return void this.#send(conn, PULSE);
      case "chat":
        return void this.#chat(conn, packet);
      case "ack":
        return; // Push acks are informational: the inbox is the truth.
      default:
        this.#metrics.badInput.inc({ kind: "unknown-payload" });
        return this.#ack(conn, packet.seq, { error: "unknown or unsupported payload", errorCode: "invalid_argument" });
    }
  }

  /**
   * Takes a token from the user's chat bucket (shared by all of their connections here). An
   * accepted chat is remembered until its ack is sent, so a later rate-limit close waits for it.
   */
  #admit(conn: Connection, seq: string): "ok" | "limited" | "exceeded" {
    const verdict = this.#chatRate.take(conn.username);
    if (verdict === "ok") conn.unacked.set(seq, (conn.unacked.get(seq) ?? 0) + 1);
    return verdict;
  }

  /** Handles one chat: checks, then logic through the dispatcher, then the ack. Never rejects. */
  async #chat(conn: Connection, packet: WsPacket): Promise<void> {
    if (packet.payload.case !== "chat") return;
    const chat = packet.payload.value;
    const seq = packet.seq;
    if (!seq || seq.length > 128) {
      this.#metrics.badInput.inc({ kind: "chat-without-seq" });
      return this.#ack(conn, seq.slice(0, 128), { error: "seq: a client id of 1-128 characters is required", errorCode: "invalid_argument" });
    }
    if (!this.#acceptChats) {
      this.counts.chatsRefused++;
      return this.#ack(conn, seq, { error: "server is shutting down; resend after reconnecting", errorCode: "unavailable", sessionId: chat.sessionId });
    }
    // The window first: a chat refused for it spends no rate token.
    if (conn.chatsPending >= this.#opts.chatWindow) {
      this.#metrics.chatsShed.inc({ reason: "window" });
      return this.#ack(conn, seq, { error: `more than ${this.#opts.chatWindow} messages unacknowledged; wait for their acks`, errorCode: "resource_exhausted", sessionId: chat.sessionId });
    }
    const admitted = this.#admit(conn, seq);
    if (admitted !== "ok") {
      if (admitted === "exceeded") return this.#closeAfterAcks(conn, CLOSE.rateLimited, "rate limited");
      return this.#ack(conn, seq, { error: "too many messages; slow down", errorCode: "resource_exhausted", sessionId: chat.sessionId });
    }
    this.#metrics.messagesIn.inc();
    const started = performance.now();
    conn.chatsPending++;
    this.#chatsInFlight++;
    try {
      const r = await this.#chats.submit(
        create(SendMessageRequestSchema, {
          sessionId: chat.sessionId,
          fromUsername: conn.username,
          toUsername: chat.toUsername,
          content: chat.content,
          type: chat.type,
          timestamp: chat.timestamp,
          clientMsgId: seq,
        }),
      );
      if ("errorCode" in r) this.#ack(conn, seq, { error: r.error, errorCode: r.errorCode, sessionId: chat.sessionId });
      else {
        this.#ack(conn, seq, { msgId: r.msgId, seqId: r.seqId, sessionId: chat.sessionId });
        this.#metrics.ackLatency.observe((performance.now() - started) / 1000);
      }
    } finally {
      conn.chatsPending--;
      if (--this.#chatsInFlight === 0) this.#chatsIdle?.();
    }
  }

  #ack(conn: Connection, refSeq: string, ack: { msgId?: bigint; seqId?: bigint; sessionId?: string; error?: string; errorCode?: string }): void {
    const packet = create(WsPacketSchema, { seq: refSeq, payload: { case: "ack", value: create(AckSchema, { refSeq, ...ack }) } });
    this.#send(conn, toBinary(WsPacketSchema, packet));
    const n = conn.unacked.get(refSeq);
    if (n !== undefined) {
      if (n > 1) conn.unacked.set(refSeq, n - 1);
      else conn.unacked.delete(refSeq);
      if (conn.pendingClose) this.#finishPendingClose(conn);
    }
  }

  /**
   * Queues a frame. It goes to the socket at once while less than {@link WRITE_WINDOW} is on its
   * way there, else it waits in the connection's queue. A connection whose bytes waiting would pass
   * the send buffer is a slow consumer: its queue is dropped and it is closed (1013) and counted,
   * never silently skipped.
   */
  #send(conn: Connection, frame: Uint8Array): boolean {
    if (conn.closing || conn.ws.readyState !== conn.ws.OPEN) return false;
    if (conn.writing + conn.outBytes + frame.byteLength > this.#opts.sendBufferBytes) {
      this.counts.slowConsumers++;
      this.#metrics.wsLimited.inc({ limit: "send-buffer" });
      this.#log.warn({ user: conn.username, bytes: conn.writing + conn.outBytes }, "slow consumer disconnected");
      this.#close(conn, CLOSE.tryAgainLater, "slow consumer");
      return false;
    }
    if (conn.out.length === 0 && conn.writing < WRITE_WINDOW) this.#write(conn, frame);
    else {
      conn.out.push(frame);
      conn.outBytes += frame.byteLength;
    }
    return true;
  }

  #write(conn: Connection, frame: Uint8Array): void {
    conn.writing += frame.byteLength;
    // Frames written in one tick (the acks of a batch, pushes) leave in one writev, not one each.
    // ws exposes no cork of its own; its socket is `_socket` (ws corks around each frame too).
    const socket = (conn.ws as unknown as { _socket?: { cork(): void; uncork(): void } })._socket;
    if (socket && !conn.corked) {
      conn.corked = true;
      socket.cork();
      process.nextTick(() => {
        conn.corked = false;
        socket.uncork();
      });
    }
    conn.ws.send(frame, { binary: true }, () => {
      conn.writing -= frame.byteLength;
      this.#pump(conn);
    });
  }

  /** Moves queued frames to the socket while the write window has room. */
  #pump(conn: Connection): void {
    if (conn.closing || conn.ws.readyState !== conn.ws.OPEN) return;
    while (conn.out.length > 0 && conn.writing < WRITE_WINDOW) {
      const frame = conn.out.shift()!;
      conn.outBytes -= frame.byteLength;
      this.#write(conn, frame);
    }
    if (conn.pendingClose) this.#finishPendingClose(conn);
  }

  /** Hands every queued frame to the socket, window or not (before a close that should follow them). */
  #flush(conn: Connection): void {
    if (conn.ws.readyState !== conn.ws.OPEN) return;
    for (const frame of conn.out.splice(0)) this.#write(conn, frame);
    conn.outBytes = 0;
  }

  /** Delivers a message to every local connection of the given users; resolves the users with none here. */
  push(usernames: readonly string[], message: PushMessage): string[] {
    const frame = toBinary(WsPacketSchema, create(WsPacketSchema, { payload: { case: "push", value: message } }));
    const failed: string[] = [];
    for (const u of usernames) {
      const set = this.#byUser.get(u);
      let delivered = false;
      if (set) for (const conn of set) delivered = this.#send(conn, frame) || delivered;
      if (delivered) this.#metrics.messagesOut.inc();
      else failed.push(u);
    }
    return failed;
  }

  #checkIdle(): void {
    const now = Date.now();
    for (const conn of this.#all) {
      if (now - conn.lastSeen > this.#opts.idleTimeoutMs) {
        this.#log.debug({ user: conn.username }, "idle connection terminated");
        conn.ws.terminate();
      } else if (now - conn.lastSeen > this.#opts.pingIntervalMs / 2) {
        conn.ws.ping();
      }
    }
  }

  /**
   * Stops reading the connection at once and closes it once the chats it already had accepted are
   * acked and those acks are handed to the socket (at most {@link ACKS_BEFORE_CLOSE_MS} later).
   */
  #closeAfterAcks(conn: Connection, code: number, reason: string): void {
    if (conn.stopped) return;
    conn.stopped = true;
    if (code === CLOSE.rateLimited) this.#metrics.wsLimited.inc({ limit: "chat-rate" });
    const timer = setTimeout(() => {
      this.#flush(conn);
      this.#close(conn, code, reason);
    }, ACKS_BEFORE_CLOSE_MS);
    timer.unref();
    conn.pendingClose = { code, reason, timer };
    this.#finishPendingClose(conn);
  }

  #finishPendingClose(conn: Connection): void {
    const p = conn.pendingClose;
    if (!p || conn.unacked.size > 0 || conn.out.length > 0) return;
    clearTimeout(p.timer);
    conn.pendingClose = undefined;
    this.#close(conn, p.code, p.reason);
  }

  /** Closes now; frames still in the connection's queue are dropped (the close frame goes right after what the socket has). */
  #close(conn: Connection, code: number, reason: string): void {
    if (conn.closing) return;
    conn.stopped = true;
    conn.closing = true;
    clearTimeout(conn.pendingClose?.timer);
    conn.pendingClose = undefined;
    conn.out.length = 0;
    conn.outBytes = 0;
    conn.ws.close(code, reason);
    // A peer that never answers the close frame is cut off. A slow reader gets longer: the close
    // frame waits behind what its socket already holds (our own queue is dropped, so this costs
    // only the kernel's buffers), and a reader that catches up should see 1013, not a reset.
    setTimeout(() => conn.ws.terminate(), code === CLOSE.tryAgainLater ? SLOW_CLOSE_WAIT_MS : CLOSE_WAIT_MS).unref();
  }

  /** From now on chats are answered with `unavailable`; resolves when the chats in flight have their ack. */
  async finishChats(): Promise<void> {
    this.#acceptChats = false;
    if (this.#chatsInFlight > 0) await new Promise<void>((r) => (this.#chatsIdle = r));
  }

  /**
   * Sends every connection Goaway then close 1001, spread over `windowMs`, waits for the close
   * handshakes until `deadline` (epoch ms), then terminates what is left. Never rejects.
   */
  async closeAll(windowMs: number, deadline: number): Promise<{ wsClosedClean: number; wsTerminated: number }> {
    clearInterval(this.#heartbeat);
    const conns = [...this.#all];
    const closed = conns.map((c) => new Promise<boolean>((resolve) => c.ws.once("close", () => resolve(true))));
    // Closes go out in slices evenly across the window, at most one slice per 10 ms (so a big
    // gateway closes many sockets per slice).
    const perSlice = Math.ceil(conns.length / Math.max(1, Math.floor(windowMs / 10)));
    const slices = Math.ceil(conns.length / perSlice);
    const interval = slices > 1 ? windowMs / slices : 0;
    const hintMax = Math.max(100, Math.min(2_000, windowMs));
    for (const [i, conn] of conns.entries()) {
      if (i > 0 && i % perSlice === 0 && Date.now() + interval < deadline) await new Promise((r) => setTimeout(r, interval));
      const goaway = create(WsPacketSchema, {
        payload: { case: "goaway", value: create(GoawaySchema, { reconnectAfterMs: BigInt(Math.floor(Math.random() * hintMax)), reason: "server shutdown" }) },
      });
      // Acks and pushes still queued go first; the close follows them.
      this.#flush(conn);
      clearTimeout(conn.pendingClose?.timer);
      conn.pendingClose = undefined;
      if (conn.ws.readyState === conn.ws.OPEN) conn.ws.send(toBinary(WsPacketSchema, goaway));
      conn.stopped = true;
      conn.closing = true;
      conn.ws.close(CLOSE.goingAway, "server shutdown");
    }
    let timer: NodeJS.Timeout | undefined;
    const left = Math.max(0, deadline - Date.now());
    const results = await Promise.race([
      Promise.all(closed),
      new Promise<boolean[]>((r) => (timer = setTimeout(() => r([]), left))),
    ]);
    clearTimeout(timer);
    let clean = 0;
    let terminated = 0;
    if (results.length === conns.length) clean = conns.length;
    else {
      for (const c of conns) {
        if (c.ws.readyState === c.ws.CLOSED) clean++;
        else {
          c.ws.terminate();
          terminated++;
        }
      }
    }
    // Terminated sockets report their close (and so their user's offline) right after.
    if (terminated > 0) await Promise.race([Promise.all(closed), new Promise((r) => setTimeout(r, 200))]);
    return { wsClosedClean: clean, wsTerminated: terminated };
  }
}
