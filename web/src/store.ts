import { createApi, ResonanceClient, ResonanceError, randomId, type CursorStore } from "../../src/client/browser.js";
import type { PushMessage, SessionInfo } from "../../src/gen/resonance/gateway/v1/gateway_pb.js";
import { clearLocal, loadSaved, saveSession, type SavedSession } from "./storage.js";

/*
 * The page's state and the only place that talks to the SDK. Packet handling (sending,
 * resending with the same seq, dedup, inbox catch-up) is the SDK's; this keeps what the
 * screens show: sessions, the messages loaded per chat, and sends in progress.
 */

export const HISTORY_PAGE = 30;

export type SendStatus = "sent" | "pending" | "failed";

export interface Message {
  /** `s:<seq>` once committed, `p:<client seq>` while pending or failed. */
  readonly key: string;
  readonly sessionId: string;
  /** 0 until committed. */
  readonly seqId: bigint;
  readonly from: string;
  readonly content: string;
  readonly type: string;
  /** Unix seconds. */
  readonly timestamp: number;
  readonly status: SendStatus;
  /** The idempotency key of a message sent from this page. */
  readonly clientSeq?: string;
  readonly error?: string;
}

export interface Session {
  readonly id: string;
  readonly name: string;
  /** 1 one-to-one, 2 group. */
  readonly type: number;
  readonly lastSeq: bigint;
  readonly lastReadSeq: bigint;
  readonly unread: number;
  readonly preview: { readonly from: string; readonly content: string; readonly type: string } | undefined;
  /** Unix seconds of the last message (0: none). */
  readonly activity: number;
}

export interface Chat {
  /** Ascending seq; pending and failed sends last, in the order they were made. */
  readonly messages: readonly Message[];
  readonly loaded: boolean;
  readonly loadingOlder: boolean;
  readonly hasOlder: boolean;
}

export type Connection =
  | { readonly state: "connecting" }
  | { readonly state: "online" }
  | { readonly state: "waiting"; readonly retryAt: number }
  | { readonly state: "offline" };

export interface State {
  readonly me: SavedSession["user"] | undefined;
  readonly connection: Connection;
  readonly sessions: readonly Session[];
  readonly sessionsLoaded: boolean;
  readonly chats: Readonly<Record<string, Chat>>;
  readonly activeId: string | undefined;
  /** Shown on the login screen (e.g. the session expired). */
  readonly notice: string | undefined;
}

const EMPTY_CHAT: Chat = { messages: [], loaded: false, loadingOlder: false, hasOlder: true };

const INITIAL: State = {
  me: undefined,
  connection: { state: "connecting" },
  sessions: [],
  sessionsLoaded: false,
  chats: {},
  activeId: undefined,
  notice: undefined,
};

/** The inbox cursor survives reloads (per user) so a reload catches up from where it was. */
const cursorStore: CursorStore = {
  load: (user) => {
    const v = localStorage.getItem(`resonance.cursor.${user}`);
    return v ? BigInt(v) : undefined;
  },
  save: (user, cursor) => localStorage.setItem(`resonance.cursor.${user}`, cursor.toString()),
};

/** Sorts by last activity, newest first; sessions without messages by name. */
function byActivity(a: Session, b: Session): number {
  return b.activity - a.activity || a.name.localeCompare(b.name);
}

/** The API's name; a one-to-one chat without one is named after the other member (`single:<a>:<b>`). */
function nameOf(s: SessionInfo, me: string | undefined): string {
  if (s.name) return s.name;
  const single = /^single:([^:]+):([^:]+)$/.exec(s.sessionId);
  return single ? (single[1] === me ? single[2]! : single[1]!) : s.sessionId;
}

function sessionOf(s: SessionInfo, me: string | undefined): Session {
  const last = s.lastMessage;
  const lastSeq = last?.seqId ?? 0n;
  return {
    id: s.sessionId,
    name: nameOf(s, me),
    type: s.type,
    lastSeq,
    lastReadSeq: s.lastReadSeq,
    unread: Number(s.unreadCount),
    preview: last ? { from: last.fromUsername, content: last.content, type: last.type } : undefined,
    activity: last ? Number(last.timestamp) : 0,
  };
}

function messageOf(m: PushMessage): Message {
  return {
    key: `s:${m.seqId}`,
    sessionId: m.sessionId,
    seqId: m.seqId,
    from: m.fromUsername,
    content: m.content,
    type: m.type || "text",
    timestamp: Number(m.timestamp),
    status: "sent",
  };
}

/** Committed messages by seq, then pending/failed ones in their own order. */
function sortMessages(list: Message[]): Message[] {
  const sent = list.filter((m) => m.seqId > 0n).sort((a, b) => (a.seqId < b.seqId ? -1 : a.seqId > b.seqId ? 1 : 0));
  return [...sent, ...list.filter((m) => m.seqId === 0n)];
}

export class Store {
  #state: State = INITIAL;
  readonly #listeners = new Set<() => void>();
  #client: ResonanceClient | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #reading = new Map<string, bigint>();

  get state(): State {
    return this.#state;
  }

  /** Calls `cb` after every change; returns the unsubscribe function. */
  subscribe(cb: () => void): () => void {
    this.#listeners.add(cb);
    return () => void this.#listeners.delete(cb);
  }

  #set(patch: Partial<State>): void {
    this.#state = { ...this.#state, ...patch };
    for (const cb of this.#listeners) cb();
  }

  #setChat(id: string, update: (chat: Chat) => Chat): void {
    const chat = this.#state.chats[id] ?? EMPTY_CHAT;
    this.#set({ chats: { ...this.#state.chats, [id]: update(chat) } });
  }

  #setSession(id: string, update: (s: Session) => Session): void {
    this.#set({ sessions: this.#state.sessions.map((s) => (s.id === id ? update(s) : s)).sort(byActivity) });
  }

  /** The SDK client of the signed-in user (undefined on the login screen). */
  get client(): ResonanceClient | undefined {
    return this.#client;
  }

  /** Resumes a saved session, if this browser has one. */
  resume(): void {
    const saved = loadSaved();
    if (saved) this.#start(saved);
  }

  /** Signs in (or registers) over HTTP; only the token is kept, never the password. Rejects with a ResonanceError. */
  async login(username: string, password: string, register: { nickname: string } | undefined): Promise<void> {
    const api = createApi(location.origin);
    try {
      const r = register
        ? await api.auth.register({ username, password, nickname: register.nickname })
        : await api.auth.login({ username, password });
      const saved: SavedSession = {
        token: r.accessToken,
        user: { username: r.user?.username ?? username, nickname: r.user?.nickname || username },
      };
      saveSession(saved);
      this.#start(saved);
    } catch (err) {
      throw ResonanceError.from(err);
    }
  }

  #start(saved: SavedSession): void {
    const hadCursor = cursorStore.load(saved.user.username) !== undefined;
    const client = new ResonanceClient({
      urls: [location.origin],
      username: saved.user.username,
      token: saved.token,
      cursorStore,
      // A first start only sets the cursor: history comes per chat, from GetHistoryMessages.
      backlog: hadCursor ? "emit" : "skip",
      startTimeoutMs: Number.POSITIVE_INFINITY,
    });
    this.#client = client;
    this.#set({ ...INITIAL, me: saved.user, connection: { state: navigator.onLine ? "connecting" : "offline" } });
    client.onMessage((m) => this.#incoming(m));
    client.onConnected(() => {
      this.#set({ connection: { state: "online" } });
      void this.refreshSessions();
    });
    client.onClose(() => {
      if (this.#client === client) this.#set({ connection: { state: navigator.onLine ? "connecting" : "offline" } });
    });
    client.onWaiting((retryAt) => this.#set({ connection: navigator.onLine ? { state: "waiting", retryAt } : { state: "offline" } }));
    client.onAuthExpired(() => {
      if (this.#client === client) this.#endLocal("Your session has expired. Please sign in again.");
    });
    client.start().catch((err: unknown) => {
      if (this.#client === client && ResonanceError.from(err).code !== "unauthenticated") this.#set({ notice: ResonanceError.from(err).message });
    });
  }

  /** The page went online/offline (browser events). */
  setOnline(online: boolean): void {
    if (!this.#client) return;
    if (!online) return this.#set({ connection: { state: "offline" } });
    // The socket may have outlived a short outage; otherwise try at once instead of after the backoff.
    this.#set({ connection: { state: this.#client.connected ? "online" : "connecting" } });
    this.#client.retryNow();
  }

  /** Skips the wait before the next reconnection attempt. */
  retryNow(): void {
    this.#client?.retryNow();
  }

  /** Signs out: forgets everything this page stored and revokes the token. Never rejects. */
  async logout(): Promise<void> {
    const client = this.#client;
    this.#forget(undefined);
    await client?.logout();
  }

  /** Back to the sign-in form, e.g. when the token was refused. */
  #endLocal(notice: string | undefined): void {
    const client = this.#client;
    this.#forget(notice);
    void client?.close();
  }

  #forget(notice: string | undefined): void {
    this.#client = undefined; // From now on its late events are ignored.
    clearLocal();
    clearTimeout(this.#refreshTimer);
    this.#reading.clear();
    this.#set({ ...INITIAL, notice });
  }

  /** Reloads the session list (names, unread counts, previews). Never rejects. */
  async refreshSessions(): Promise<void> {
    const client = this.#client;
    if (!client) return;
    try {
      const r = await client.api.session.getSessionList({});
      if (client !== this.#client) return;
      const me = this.#state.me?.username;
      this.#set({ sessions: r.sessions.map((x) => sessionOf(x, me)).sort(byActivity), sessionsLoaded: true });
      this.#markReadIfVisible();
    } catch {
      // Offline or reconnecting: the next connect refreshes again.
    }
  }

  #refreshSoon(): void {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = setTimeout(() => void this.refreshSessions(), 150);
  }

  #incoming(m: PushMessage): void {
    const msg = messageOf(m);
    const me = this.#state.me?.username;
    if (!this.#state.sessions.some((s) => s.id === m.sessionId)) this.#refreshSoon(); // A chat new to this page.
    this.#setSession(m.sessionId, (s) =>
      m.seqId <= s.lastSeq
        ? s
        : {
            ...s,
            lastSeq: m.seqId,
            unread: Math.max(0, Number(m.seqId - s.lastReadSeq)),
            preview: { from: msg.from, content: msg.content, type: msg.type },
            activity: Math.max(s.activity, msg.timestamp),
          },
    );
    const chat = this.#state.chats[m.sessionId];
    if (chat?.loaded) {
      this.#setChat(m.sessionId, (c) => {
        if (c.messages.some((x) => x.seqId === msg.seqId)) return c;
        // Our own message, seen before its ack (a delta after a reconnect): it is the pending one.
        const i = msg.from === me ? c.messages.findIndex((x) => x.status !== "sent" && x.content === msg.content) : -1;
        const list = [...c.messages];
        if (i >= 0) list[i] = { ...msg, clientSeq: list[i]!.clientSeq };
        else list.push(msg);
        return { ...c, messages: sortMessages(list) };
      });
    }
    this.#markReadIfVisible();
  }

  /** Opens a chat: loads its newest page the first time, marks it read. */
  open(id: string | undefined): void {
    this.#set({ activeId: id });
    if (id === undefined) return;
    if (!this.#state.chats[id]?.loaded) void this.loadOlder(id);
    this.#markReadIfVisible();
  }

  /** Loads the page of history before the oldest message loaded (the newest page first). Never rejects. */
  async loadOlder(id: string): Promise<void> {
    const client = this.#client;
    const chat = this.#state.chats[id] ?? EMPTY_CHAT;
    if (!client || chat.loadingOlder || (chat.loaded && !chat.hasOlder)) return;
    this.#setChat(id, (c) => ({ ...c, loadingOlder: true }));
    const oldest = chat.messages.find((m) => m.seqId > 0n)?.seqId ?? 0n;
    try {
      const r = await client.api.session.getHistoryMessages({ sessionId: id, limit: BigInt(HISTORY_PAGE), beforeSeq: chat.loaded ? oldest : 0n });
      if (client !== this.#client) return;
      const older = r.messages.map(messageOf);
      this.#setChat(id, (c) => {
        const have = new Set(c.messages.map((m) => m.key));
        const list = sortMessages([...older.filter((m) => !have.has(m.key)), ...c.messages]);
        const first = list.find((m) => m.seqId > 0n)?.seqId ?? 0n;
        return { messages: list, loaded: true, loadingOlder: false, hasOlder: older.length === HISTORY_PAGE && first > 1n };
      });
      this.#markReadIfVisible();
    } catch {
      this.#setChat(id, (c) => ({ ...c, loadingOlder: false }));
    }
  }

  /** Sends a message: shown at once as pending, then sent (or failed, with the reason). */
  send(sessionId: string, content: string): void {
    const me = this.#state.me;
    if (!me || !this.#client || content.trim() === "") return;
    const seq = randomId();
    const msg: Message = {
      key: `p:${seq}`,
      sessionId,
      seqId: 0n,
      from: me.username,
      content,
      type: "text",
      timestamp: Math.floor(Date.now() / 1000),
      status: "pending",
      clientSeq: seq,
    };
    this.#setChat(sessionId, (c) => ({ ...c, messages: [...c.messages, msg] }));
    this.#transmit(sessionId, content, seq);
  }

  /** Sends a failed message again with the same idempotency key (never a second copy). */
  retry(sessionId: string, clientSeq: string): void {
    const m = this.#state.chats[sessionId]?.messages.find((x) => x.clientSeq === clientSeq && x.status === "failed");
    if (!m) return;
    this.#replacePending(sessionId, clientSeq, (x) => ({ ...x, status: "pending", error: undefined }));
    this.#transmit(sessionId, m.content, clientSeq);
  }

  #transmit(sessionId: string, content: string, seq: string): void {
    const client = this.#client;
    if (!client) return;
    client.send({ sessionId, content }, seq).then(
      (ack) => {
        if (client !== this.#client) return;
        this.#setChat(sessionId, (c) => {
          const mine = c.messages.find((x) => x.clientSeq === seq);
          if (!mine || mine.status === "sent") return c;
          // Already shown from a push or the delta: keep that one.
          const list = c.messages.some((x) => x.seqId === ack.seqId && x !== mine)
            ? c.messages.filter((x) => x !== mine)
            : c.messages.map((x) => (x === mine ? { ...x, key: `s:${ack.seqId}`, seqId: ack.seqId, status: "sent" as const } : x));
          return { ...c, messages: sortMessages(list) };
        });
        this.#markReadIfVisible();
      },
      (err: unknown) => {
        if (client !== this.#client) return;
        const e = ResonanceError.from(err);
        this.#replacePending(sessionId, seq, (x) => ({ ...x, status: "failed", error: describeError(e) }));
      },
    );
  }

  #replacePending(sessionId: string, seq: string, update: (m: Message) => Message): void {
    this.#setChat(sessionId, (c) => ({ ...c, messages: c.messages.map((x) => (x.clientSeq === seq && x.status !== "sent" ? update(x) : x)) }));
  }

  /** Creates (or finds) the one-to-one chat with `username` and opens it. Rejects with a ResonanceError. */
  async startChat(username: string): Promise<void> {
    await this.#create([username], "", 1);
  }

  /** Creates a group chat and opens it. Rejects with a ResonanceError. */
  async createGroup(name: string, members: readonly string[]): Promise<void> {
    await this.#create([...members], name, 2);
  }

  async #create(members: string[], name: string, type: number): Promise<void> {
    const client = this.#client;
    if (!client) return;
    try {
      const r = await client.api.session.createSession({ members, name, type });
      await this.refreshSessions();
      this.open(r.sessionId);
    } catch (err) {
      throw ResonanceError.from(err);
    }
  }

  /** Users whose username or nickname matches. Rejects with a ResonanceError. */
  async searchUsers(query: string): Promise<Array<{ username: string; nickname: string }>> {
    const client = this.#client;
    if (!client) return [];
    try {
      const r = await client.api.session.searchUser({ query });
      return r.users.map((u) => ({ username: u.username, nickname: u.nickname })).filter((u) => u.username !== this.#state.me?.username);
    } catch (err) {
      throw ResonanceError.from(err);
    }
  }

  /** The open chat is on screen: moves its read position to its newest message. */
  markReadIfVisible(): void {
    this.#markReadIfVisible();
  }

  #markReadIfVisible(): void {
    const id = this.#state.activeId;
    const client = this.#client;
    if (!id || !client || document.visibilityState !== "visible" || !this.#state.chats[id]?.loaded) return;
    const session = this.#state.sessions.find((s) => s.id === id);
    const newest = this.#state.chats[id]!.messages.reduce((max, m) => (m.seqId > max ? m.seqId : max), session?.lastSeq ?? 0n);
    if (newest === 0n || (session && newest <= session.lastReadSeq) || (this.#reading.get(id) ?? 0n) >= newest) return;
    this.#reading.set(id, newest);
    client.api.session.updateReadPosition({ sessionId: id, seqId: newest }).then(
      (r) => {
        if (client !== this.#client) return;
        this.#setSession(id, (s) => ({ ...s, lastReadSeq: newest > s.lastReadSeq ? newest : s.lastReadSeq, unread: Number(r.unreadCount) }));
      },
      () => this.#reading.delete(id), // Tried again on the next change.
    );
  }
}

/** A short sentence for an error a person can act on. */
export function describeError(e: ResonanceError): string {
  switch (e.code) {
    case "unauthenticated":
      return "Wrong username or password.";
    case "not_found":
      return "No such user.";
    case "already_exists":
      return "That username is taken.";
    case "resource_exhausted":
      return "Too many attempts. Wait a moment and try again.";
    case "unavailable":
    case "deadline_exceeded":
    case "unknown":
      return "Cannot reach the server. Check the connection and try again.";
    case "permission_denied":
      return "You are not a member of this chat.";
    case "cancelled":
      return "Not sent (signed out).";
    default:
      return e.message || e.code;
  }
}
