import { EventEmitter } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { WebSocket, WebSocketServer } from "ws";
import {
  AckSchema,
  AuthService,
  GoawaySchema,
  InboxEventSchema,
  PushMessageSchema,
  SessionService,
  WsPacketSchema,
  type Ack,
  type ChatRequest,
  type PushMessage,
  type WsPacket,
} from "../gen/resonance/gateway/v1/gateway_pb.js";

/*
 * A tiny in-memory gateway for the client's own unit tests: the real wire protocol (Connect
 * HTTP + WsPacket frames over `ws`) over a toy backend. Not a Resonance implementation.
 */

interface InboxRow {
  readonly id: bigint;
  readonly owner: string;
  readonly message: PushMessage;
}

/** State shared by any number of FakeGateways: users, tokens, sessions, messages, inboxes. */
export class FakeBackend {
  readonly users = new Map<string, string>();
  readonly tokens = new Map<string, string>();
  readonly inbox: InboxRow[] = [];
  /** Session id → members; "0" (the room) implicitly holds every user. */
  readonly sessions = new Map<string, Set<string>>();
  readonly gateways = new Set<FakeGateway>();
  readonly #seqs = new Map<string, bigint>();
  readonly #committed = new Map<string, Ack>();
  #msgId = 0n;
  #inboxId = 0n;
  #tokenId = 0;

  issueToken(user: string): string {
    const token = `t${++this.#tokenId}-${user}`;
    this.tokens.set(token, user);
    return token;
  }

  membersOf(sessionId: string): string[] {
    return sessionId === "0" ? [...this.users.keys()] : [...(this.sessions.get(sessionId) ?? [])];
  }

  /**
   * Commits a message once per (sender, seq), writes inbox rows for every member, and (unless
   * `push` is false) pushes it to every connection of every member on every gateway.
   */
  commit(from: string, chat: Pick<ChatRequest, "sessionId" | "content"> & Partial<ChatRequest>, seq: string, push = true): Ack {
    const key = `${from}\u0000${seq}`;
    const done = this.#committed.get(key);
    if (done) return done;
    const seqId = (this.#seqs.get(chat.sessionId) ?? 0n) + 1n;
    this.#seqs.set(chat.sessionId, seqId);
    const message = create(PushMessageSchema, {
      msgId: ++this.#msgId,
      seqId,
      sessionId: chat.sessionId,
      fromUsername: from,
      toUsername: chat.toUsername ?? "",
      content: chat.content,
      type: chat.type || "text",
      timestamp: BigInt(Math.floor(Date.now() / 1000)),
    });
    const members = this.membersOf(chat.sessionId);
    for (const owner of members) this.inbox.push({ id: ++this.#inboxId, owner, message });
    if (push) for (const g of this.gateways) g.push(members, message);
    const ack = create(AckSchema, { refSeq: seq, msgId: message.msgId, seqId, sessionId: chat.sessionId });
    this.#committed.set(key, ack);
    return ack;
  }
}

export interface ReceivedChat {
  readonly user: string;
  readonly seq: string;
  readonly chat: ChatRequest;
  readonly ws: WebSocket;
}

/**
 * Events: "connection" (user, ws), "chat" (ReceivedChat), "pull" (user, cursor), "pulse" (user),
 * "socket-close" (user, code).
 */
export class FakeGateway extends EventEmitter {
  readonly backend: FakeBackend;
  readonly chats: ReceivedChat[] = [];
  readonly pulls: Array<{ user: string; cursor: bigint }> = [];
  /** Consumed in order by the next chats: answered with this error instead of committing. */
  readonly ackErrors: Array<{ code: string; error: string }> = [];
  /** When set, new chats are recorded but never answered (to test resends of in-flight chats). */
  holdChats = false;
  /** When set, upgrades are refused with this HTTP status. */
  refuseUpgrades: number | undefined;
  readonly #server: http.Server;
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  readonly #sockets = new Map<WebSocket, string>();

  private constructor(backend: FakeBackend) {
    super();
    this.backend = backend;
    const handler = connectNodeAdapter({ routes: (router) => this.#routes(router) });
    this.#server = http.createServer(handler);
    this.#server.on("upgrade", (req, socket, head) => this.#upgrade(req, socket, head));
  }

  /** Listens on 127.0.0.1, an ephemeral port. */
  static async start(backend = new FakeBackend()): Promise<FakeGateway> {
    const g = new FakeGateway(backend);
    await new Promise<void>((resolve) => g.#server.listen(0, "127.0.0.1", resolve));
    backend.gateways.add(g);
    return g;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  /** Open sockets, optionally of one user. */
  sockets(user?: string): WebSocket[] {
    return [...this.#sockets].filter(([ws, u]) => ws.readyState === WebSocket.OPEN && (!user || u === user)).map(([ws]) => ws);
  }

  send(ws: WebSocket, packet: WsPacket): void {
    ws.send(toBinary(WsPacketSchema, packet), { binary: true });
  }

  push(users: readonly string[], message: PushMessage): void {
    const packet = create(WsPacketSchema, { payload: { case: "push", value: message } });
    for (const [ws, u] of this.#sockets) if (users.includes(u) && ws.readyState === WebSocket.OPEN) this.send(ws, packet);
  }

  /** Goaway{hintMs} then close 1001 to every socket, like a draining gateway. */
  goawayAll(hintMs: number): void {
    const packet = create(WsPacketSchema, { payload: { case: "goaway", value: create(GoawaySchema, { reconnectAfterMs: BigInt(hintMs), reason: "server shutdown" }) } });
    for (const ws of this.sockets()) {
      this.send(ws, packet);
      ws.close(1001, "server shutdown");
    }
  }

  closeAll(code: number, reason = ""): void {
    for (const ws of this.sockets()) ws.close(code, reason);
  }

  terminateAll(): void {
    for (const ws of this.sockets()) ws.terminate();
  }

  async close(): Promise<void> {
    this.backend.gateways.delete(this);
    for (const ws of this.#sockets.keys()) ws.terminate();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #user(ctx: HandlerContext): string {
    const token = ctx.requestHeader.get("authorization")?.replace(/^Bearer /, "") ?? "";
    const user = this.backend.tokens.get(token);
    if (!user) throw new ConnectError("bad token", Code.Unauthenticated);
    return user;
  }

  #routes(router: ConnectRouter): void {
    const b = this.backend;
    router.service(AuthService, {
      login: (req) => {
        const pw = b.users.get(req.username);
        if (pw === undefined) throw new ConnectError("no such user", Code.NotFound);
        if (pw !== req.password) throw new ConnectError("wrong password", Code.Unauthenticated);
        return { accessToken: b.issueToken(req.username), user: { username: req.username } };
      },
      register: (req) => {
        if (b.users.has(req.username)) throw new ConnectError("taken", Code.AlreadyExists);
        b.users.set(req.username, req.password);
        return { accessToken: b.issueToken(req.username), user: { username: req.username } };
      },
    });
    router.service(SessionService, {
      pullInboxDelta: (req, ctx) => {
        const user = this.#user(ctx);
        this.pulls.push({ user, cursor: req.cursorId });
        this.emit("pull", user, req.cursorId);
        const limit = Number(req.limit || 100n);
        const rows = b.inbox.filter((r) => r.owner === user && r.id > req.cursorId);
        const page = rows.slice(0, limit);
        return {
          events: page.map((r) => create(InboxEventSchema, { inboxId: r.id, message: r.message })),
          nextCursorId: page.at(-1)?.id ?? req.cursorId,
          hasMore: rows.length > limit,
        };
      },
      getHistoryMessages: (req, ctx) => {
        this.#user(ctx);
        const all = b.inbox.filter((r, i, a) => r.message.sessionId === req.sessionId && a.findIndex((x) => x.message.msgId === r.message.msgId) === i);
        return { messages: all.slice(-Number(req.limit || 20n)).map((r) => r.message) };
      },
      createSession: (req, ctx) => {
        const user = this.#user(ctx);
        const members = [...new Set([user, ...req.members])].sort();
        for (const m of members) if (!b.users.has(m)) throw new ConnectError(`no user ${m}`, Code.NotFound);
        const id = req.type === 1 ? `single:${members.join(":")}` : `group:${b.sessions.size + 1}`;
        if (!b.sessions.has(id)) b.sessions.set(id, new Set(members));
        return { sessionId: id };
      },
    });
  }

  #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? "/", "http://x");
    const user = this.backend.tokens.get(url.searchParams.get("token") ?? "");
    const refuse = url.pathname !== "/ws" ? 404 : (this.refuseUpgrades ?? (user ? 0 : 401));
    if (refuse || !user) {
      socket.end(`HTTP/1.1 ${refuse} Refused\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      this.#sockets.set(ws, user);
      ws.on("error", () => {}); // Oversized or bad frames: ws closes with 1009/1002 by itself.
      ws.on("message", (data, isBinary) => this.#onFrame(ws, user, data as Buffer, isBinary));
      ws.on("close", (code) => {
        this.#sockets.delete(ws);
        this.emit("socket-close", user, code);
      });
      this.emit("connection", user, ws);
    });
  }

  #onFrame(ws: WebSocket, user: string, data: Buffer, isBinary: boolean): void {
    let packet: WsPacket;
    try {
      if (!isBinary) throw new Error("text");
      packet = fromBinary(WsPacketSchema, data);
    } catch {
      ws.close(1003, "undecodable frame");
      return;
    }
    if (packet.payload.case === "pulse") {
      this.emit("pulse", user);
      return this.send(ws, create(WsPacketSchema, { payload: { case: "pulse", value: {} } }));
    }
    if (packet.payload.case !== "chat") return;
    const received: ReceivedChat = { user, seq: packet.seq, chat: packet.payload.value, ws };
    this.chats.push(received);
    this.emit("chat", received);
    if (this.holdChats) return;
    const err = this.ackErrors.shift();
    const ack = err
      ? create(AckSchema, { refSeq: packet.seq, sessionId: received.chat.sessionId, error: err.error, errorCode: err.code })
      : this.backend.commit(user, received.chat, packet.seq);
    this.send(ws, create(WsPacketSchema, { seq: packet.seq, payload: { case: "ack", value: ack } }));
  }
}
