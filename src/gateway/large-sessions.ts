import type { PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { Logger } from "../observability/log.js";

/** Asks logic which of `usernames` are members of which large sessions (only of `sessionId` when given). */
export type AskMemberships = (usernames: string[], sessionId?: string) => Promise<Array<{ username: string; sessionId: string }>>;

/** Users per LargeMemberships call (logic's cap). */
const PAGE = 5_000;

/**
 * Which users connected here are members of which large sessions, so a large session's message
 * (pushed once to every gateway, without recipients) reaches this gateway's connections of its
 * members. A user's large sessions are learned when their first socket here opens (before the
 * upgrade completes, like their route). A large session this gateway has not seen yet — one that
 * just crossed the fan-out limit, or a new big group — and any system message of one (membership
 * changes) make it ask again for all its users; pushes of that session wait for the answer, in order.
 */
export class LargeSessions {
  readonly #ask: AskMemberships;
  readonly #connected: () => Iterable<string>;
  readonly #isConnected: (username: string) => boolean;
  readonly #log: Logger;
  /** Session → members connected here (a user who left is pruned at the next push). */
  readonly #members = new Map<string, Set<string>>();
  /** Sessions whose members among every user here were asked for; pushes of others ask first. */
  readonly #complete = new Set<string>();
  /** Asks in flight per session; pushes of the session wait for them. */
  readonly #refreshing = new Map<string, Promise<void>>();
  /** Users being learned right now (not connected yet): a refresh asks for them too. */
  readonly #learning = new Map<string, number>();

  constructor(ask: AskMemberships, connected: () => Iterable<string>, isConnected: (username: string) => boolean, log: Logger) {
    this.#ask = ask;
    this.#connected = connected;
    this.#isConnected = isConnected;
    this.#log = log;
  }

  /** Sessions known here and memberships kept (for tests and metrics). */
  get size(): { sessions: number; memberships: number } {
    let memberships = 0;
    for (const m of this.#members.values()) memberships += m.size;
    return { sessions: this.#members.size, memberships };
  }

  /** Learns the large sessions of a user about to connect here; rejects if logic could not tell. */
  async learn(username: string): Promise<void> {
    this.#learning.set(username, (this.#learning.get(username) ?? 0) + 1);
    try {
      this.#add(await this.#ask([username]));
    } finally {
      const n = this.#learning.get(username)! - 1;
      if (n === 0) this.#learning.delete(username);
      else this.#learning.set(username, n);
    }
  }

  /**
   * Delivers a large session's message to the connections here of its members, through
   * `deliver`; resolves when done (after asking logic first when the session is new here or the
   * message is a membership change). Never rejects: if logic cannot tell, the members known
   * so far get it (the others catch it up by seq when they reconnect).
   */
  async push(message: PushMessage, deliver: (usernames: string[], message: PushMessage) => void): Promise<void> {
    const sessionId = message.sessionId;
    if (message.type === "system") this.#complete.delete(sessionId);
    let pending = this.#refreshing.get(sessionId);
    if (!pending && !this.#complete.has(sessionId)) {
      pending = this.#refresh(sessionId).finally(() => this.#refreshing.delete(sessionId));
      this.#refreshing.set(sessionId, pending);
    }
    if (pending) await pending;
    const members = this.#members.get(sessionId);
    if (!members) return;
    const here: string[] = [];
    for (const u of members) {
      if (this.#isConnected(u) || this.#learning.has(u)) here.push(u);
      else members.delete(u);
    }
    if (members.size === 0) this.#members.delete(sessionId);
    if (here.length > 0) deliver(here, message);
  }

  async #refresh(sessionId: string): Promise<void> {
    const users = new Set(this.#connected());
    for (const u of this.#learning.keys()) users.add(u);
    const list = [...users];
    try {
      for (let i = 0; i < list.length; i += PAGE) this.#add(await this.#ask(list.slice(i, i + PAGE), sessionId));
      this.#complete.add(sessionId);
    } catch (err) {
      this.#log.warn({ err, sessionId }, "asking logic for a large session's members failed; members not known here catch up on reconnect");
    }
  }

  #add(memberships: ReadonlyArray<{ username: string; sessionId: string }>): void {
    for (const { username, sessionId } of memberships) {
      let set = this.#members.get(sessionId);
      if (!set) this.#members.set(sessionId, (set = new Set()));
      set.add(username);
    }
  }
}
