import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { UserSchema } from "../gen/resonance/common/v1/common_pb.js";
import { AuthService, ChatService, PresenceService, SessionService, type SendMessageRequest } from "../gen/resonance/logic/v1/logic_pb.js";
import type { LimitStore } from "../infra/limits/types.js";
import type { Faults } from "../lifecycle/faults.js";
import type { RouteTable } from "../infra/routes/types.js";
import type { Metrics } from "../observability/metrics.js";
import { Tokens, hashPassword, verifyPassword, type KdfQueue } from "./auth.js";
import type { Revocation } from "./revoke.js";
import type { GroupCommit } from "./group-commit.js";
import { LogicStore, SESSION_GROUP, SESSION_SINGLE, singleChatId, type CommitOutcome, type NewMessage } from "./store.js";
import {
  MAX_PASSWORD_CHARS,
  checkUsername as requireUsername,
  checkName,
  checkNotNegative,
  checkPassword,
  checkQuery,
  checkSessionId,
  clampLimit,
  invalid,
  isUsername,
  listSome,
} from "./validate.js";

const MAX_GROUP_MEMBERS = 500;
/** Chats in one SendMessages call. */
export const MAX_CHAT_BATCH = 512;
/** Sessions a client may list in one SyncSessions call. */
export const MAX_KNOWN_SESSIONS = 1_000;
/** Users in one LargeMemberships call (a gateway asks in pages of this). */
export const MAX_MEMBERSHIP_USERS = 5_000;
/** Gateway instance ids (RESONANCE_INSTANCE_ID). */
const GATEWAY_ID = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * Failed logins per account (any spelling of the name): 5 free, then a block of 1 s doubling
 * with each further failure, at most 60 s; forgotten 15 minutes after the last failure. A
 * blocked attempt costs no password check. (A guesser gets about one try a minute per account;
 * the owner is never locked out for longer than that.)
 */
export const LOGIN_BACKOFF = { free: 5, baseMs: 1_000, maxMs: 60_000, forgetMs: 15 * 60_000 } as const;
/** Groups a user may create: 20 at once, then one more every 3 minutes. */
export const GROUP_CREATION = { perSec: 1 / 180, burst: 20 } as const;

export interface HandlerDeps {
  readonly store: LogicStore;
  readonly tokens: Tokens;
  readonly routes: RouteTable;
  readonly faults: Faults;
  readonly metrics: Metrics;
  readonly maxContentChars: number;
  /** Per-account and per-user limits, shared by every logic instance. */
  readonly limits: LimitStore;
  /** Where password hashing waits its turn (bounded: sheds with resource_exhausted). */
  readonly kdf: KdfQueue;
  /** Tells every gateway about revoked tokens; resolves when they answered or failed, never rejects. */
  readonly revoked: (r: Revocation) => Promise<unknown>;
  /** Called after a session is created so the outbox relay publishes its system message without waiting for its poll. */
  readonly onCommit: () => void;
  /** Where chats are committed (group commit; the relay publishes what it commits). */
  readonly commits: GroupCommit;
}

let dummy: Promise<string> | undefined;
/** A hash of a random password, checked when the user does not exist so timing does not tell. */
const dummyHash = () => (dummy ??= hashPassword(crypto.randomUUID()));

const wrongLogin = () => new ConnectError("wrong username or password", Code.Unauthenticated);

/** Registers the logic gRPC services (protocol.md) on a router. */
export function logicRoutes(d: HandlerDeps) {
  const user = (u: { username: string; nickname: string; avatar_url: string }) =>
    create(UserSchema, { username: u.username, nickname: u.nickname, avatarUrl: u.avatar_url });

  return (router: ConnectRouter) => {
    router.service(AuthService, {
      async register(req) {
        await d.faults.at("logic.Register");
        const username = requireUsername(req.username);
        checkPassword(req.password);
        const nickname = checkName(req.nickname, "nickname") || username;
        const hash = await d.kdf.run(() => hashPassword(req.password));
        const created = await d.store.createUser(username, nickname, hash);
        if (!created) throw new ConnectError(`user ${username} already exists`, Code.AlreadyExists);
        return { accessToken: await d.tokens.issue(username), user: user({ username, nickname, avatar_url: "" }) };
      },
      async login(req) {
        await d.faults.at("logic.Login");
        if (req.password.length > MAX_PASSWORD_CHARS) invalid(`password: at most ${MAX_PASSWORD_CHARS} characters`);
        // No account has a name of another shape: nothing to check, nothing to count.
        if (!isUsername(req.username)) throw wrongLogin();
        const key = `login:${req.username.toLowerCase()}`;
        const wait = await d.limits.blockedFor(key);
        if (wait > 0) {
          d.metrics.logins.inc({ outcome: "backoff" });
          throw new ConnectError(`too many failed logins for this account; try again in ${Math.ceil(wait / 1000)} s`, Code.ResourceExhausted);
        }
        const row = await d.store.findLogin(req.username);
        // Same answer, and the same work (one KDF run), for an unknown user and a wrong password.
        const stored = row?.password_hash ?? (await d.kdf.run(dummyHash));
        const ok = await d.kdf.run(() => verifyPassword(req.password, stored)).catch((err: unknown) => {
          d.metrics.logins.inc({ outcome: "shed" });
          throw err;
        });
        if (!row || !ok) {
          d.metrics.logins.inc({ outcome: "wrong" });
          await d.limits.fail(key, LOGIN_BACKOFF);
          throw wrongLogin();
        }
        d.metrics.logins.inc({ outcome: "ok" });
        await d.limits.clear(key);
        return { accessToken: await d.tokens.issue(row.username), user: user(row) };
      },
      async validateToken(req) {
        const claims = await d.tokens.verify(req.accessToken);
        if (!claims || (await d.store.isRevoked(claims.jti))) return { valid: false };
        const row = await d.store.findUser(claims.username);
        if (!row || claims.issuedAtMs < Number(row.tokens_valid_after)) return { valid: false };
        return { valid: true, username: row.username, user: user(row), expiresAt: BigInt(claims.expiresAt) };
      },
      async logout(req) {
        const claims = await d.tokens.verify(req.accessToken);
        if (claims) {
          await d.store.revokeToken(claims.jti, claims.expiresAt);
          await d.revoked({ accessTokens: [req.accessToken] });
        }
        return { success: true };
      },
      async logoutAll(req) {
        const claims = await d.tokens.verify(req.accessToken);
        if (!claims) throw new ConnectError("missing, invalid or expired token", Code.Unauthenticated);
        await d.store.revokeAllTokens(claims.username, Date.now());
        await d.revoked({ usernames: [claims.username] });
        return { success: true };
      },
    });

    router.service(SessionService, {
      async getSessionList(req) {
        return { sessions: await d.store.sessionList(requireUsername(req.username)) };
      },
      async createSession(req) {
        const creator = requireUsername(req.creatorUsername, "creator_username");
        // Everything that needs no database is checked first, the member count before anything else.
        if (req.type !== SESSION_SINGLE && req.type !== SESSION_GROUP) invalid("type must be 1 (single) or 2 (group)");
        if (req.members.length > MAX_GROUP_MEMBERS) invalid(`members: at most ${MAX_GROUP_MEMBERS}`);
        const me = creator.toLowerCase();
        const named = [...new Map(req.members.map((m) => [requireUsername(m, "members").toLowerCase(), m])).values()];
        const others = named.filter((m) => m.toLowerCase() !== me);
        if (req.type === SESSION_SINGLE && others.length !== 1) invalid("a single chat has exactly one other member");
        if (others.length + 1 > MAX_GROUP_MEMBERS) invalid(`a group has at most ${MAX_GROUP_MEMBERS} members`);
        const name = req.type === SESSION_GROUP ? checkName(req.name, "name") : "";
        const found = await d.store.resolveUsers(others);
        const missing = others.filter((m) => !found.has(m));
        if (missing.length > 0) throw new ConnectError(`unknown users: ${listSome(missing)}`, Code.NotFound);
        // The budget is spent only by a request that can succeed (a refused one costs one lookup).
        if (req.type === SESSION_GROUP) {
          const t = await d.limits.take(`group:${me}`, GROUP_CREATION);
          if (!t.allowed) {
            throw new ConnectError(`too many groups created; try again in ${Math.ceil(t.retryAfterMs / 1000)} s`, Code.ResourceExhausted);
          }
        }
        const members = others.map((m) => found.get(m)!);
        if (req.type === SESSION_SINGLE) {
          const id = singleChatId(creator, members[0]!);
          const r = await d.store.createSession(id, "", SESSION_SINGLE, creator, members, (nickname) => `${nickname} started a chat`);
          if (r.created) d.onCommit();
          return { sessionId: r.sessionId };
        }
        const groupName = name || [creator, ...members].join(", ").slice(0, 64);
        const r = await d.store.createSession(undefined, groupName, SESSION_GROUP, creator, members, (nickname) => `${nickname} created the group "${groupName}"`);
        d.onCommit();
        return { sessionId: r.sessionId };
      },
      async getHistoryMessages(req) {
        const username = requireUsername(req.username);
        const sessionId = checkSessionId(req.sessionId);
        const before = checkNotNegative(req.beforeSeq, "before_seq");
        const limit = clampLimit(req.limit, 20, 100);
        if (req.afterSeq !== undefined) {
          const after = checkNotNegative(req.afterSeq, "after_seq");
          if (before > 0n) invalid("before_seq and after_seq: at most one");
          await d.store.requireMember(sessionId, username);
          return { messages: await d.store.historyAfter(sessionId, after, limit) };
        }
        await d.store.requireMember(sessionId, username);
        return { messages: await d.store.history(sessionId, before, limit) };
      },
      async getContactList(req) {
        return { contacts: await d.store.contacts(requireUsername(req.username)) };
      },
      async searchUser(req) {
        const q = checkQuery(req.query);
        if (q.length === 0) return { users: [] };
        return { users: await d.store.searchUsers(q, 50) };
      },
      async updateReadPosition(req) {
        const username = requireUsername(req.username);
        const sessionId = checkSessionId(req.sessionId);
        const seq = checkNotNegative(req.seqId, "seq_id");
        return { unreadCount: await d.store.updateReadPosition(sessionId, username, seq) };
      },
      async pullInboxDelta(req) {
        const username = requireUsername(req.username);
        const cursor = checkNotNegative(req.cursorId, "cursor_id");
        const r = await d.store.inboxDelta(username, cursor, clampLimit(req.limit, 100, 500));
        return { events: r.events, nextCursorId: r.next, hasMore: r.hasMore };
      },
      async syncSessions(req) {
        const username = requireUsername(req.username);
        if (req.known.length > MAX_KNOWN_SESSIONS) invalid(`known: at most ${MAX_KNOWN_SESSIONS} sessions`);
        const known = new Map<string, bigint>();
        for (const k of req.known) known.set(checkSessionId(k.sessionId, "known.session_id"), checkNotNegative(k.seqId, "known.seq_id"));
        const moved = await d.store.movedLargeSessions(username, known);
        return { moved: moved.map((m) => ({ sessionId: m.sessionId, afterSeq: m.afterSeq, maxSeqId: m.maxSeqId })) };
      },
      async largeMemberships(req) {
        if (req.usernames.length > MAX_MEMBERSHIP_USERS) invalid(`usernames: at most ${MAX_MEMBERSHIP_USERS}`);
        const usernames = req.usernames.map((u) => requireUsername(u, "usernames"));
        const sessionId = req.sessionId ? checkSessionId(req.sessionId) : undefined;
        if (usernames.length === 0) return { memberships: [] };
        return { memberships: await d.store.largeMemberships(usernames, sessionId) };
      },
    });

    /**
     * Validates one chat and names its session (creating the one-to-one chat when only
     * to_username is given); rejects with a ConnectError for a bad one.
     */
    async function prepare(req: SendMessageRequest): Promise<NewMessage> {
      const from = requireUsername(req.fromUsername, "from_username");
      if (req.content.length === 0) invalid("content is empty");
      if (req.content.length > d.maxContentChars) invalid(`content: at most ${d.maxContentChars} characters`);
      if (req.clientMsgId.length > 128) invalid("client_msg_id: at most 128 characters");
      const type = req.type || "text";
      if (type.length > 32 || type === "system") invalid("type: not allowed");
      let sessionId = req.sessionId;
      if (!sessionId) {
        if (!req.toUsername) invalid("session_id or to_username is required");
        sessionId = singleChatId(from, requireUsername(req.toUsername, "to_username"));
        if (!(await d.store.isMember(sessionId, from))) {
          const exists = await d.store.existingUsers([req.toUsername]);
          if (!exists.has(req.toUsername)) throw new ConnectError(`unknown user ${req.toUsername}`, Code.NotFound);
          const r = await d.store.createSession(sessionId, "", SESSION_SINGLE, from, [req.toUsername], `${from} started a chat`);
          if (r.created) d.onCommit();
        }
      } else if (req.toUsername) {
        requireUsername(req.toUsername, "to_username");
      }
      // Membership is checked by the commit itself, per message.
      return { sessionId, from, to: req.toUsername, content: req.content, type, clientMsgId: req.clientMsgId || undefined };
    }

    /** Commits prepared chats together (group commit): one outcome each, in order. */
    async function commit(messages: readonly NewMessage[]): Promise<CommitOutcome[]> {
      const outcomes = await d.commits.submit(messages);
      const created = outcomes.filter((o) => !(o instanceof ConnectError) && o.created).length;
      if (created > 0) d.metrics.messagesCommitted.inc(created);
      return outcomes;
    }

    router.service(ChatService, {
      async sendMessage(req) {
        await d.faults.at("logic.SendMessage");
        const [outcome] = await commit([await prepare(req)]);
        if (outcome instanceof ConnectError) throw outcome;
        return { msgId: outcome!.msgId, seqId: outcome!.seqId };
      },
      async sendMessages(req) {
        await d.faults.at("logic.SendMessages");
        if (req.items.length > MAX_CHAT_BATCH) invalid(`items: at most ${MAX_CHAT_BATCH}`);
        // Each item is checked on its own; the valid ones are committed together.
        const prepared = await Promise.all(
          req.items.map((item) =>
            prepare(item).catch((err: unknown) => {
              if (err instanceof ConnectError) return err;
              throw err; // not the item's fault: the whole call fails
            }),
          ),
        );
        const valid = prepared.filter((p): p is NewMessage => !(p instanceof ConnectError));
        const committed = await commit(valid);
        let next = 0;
        const results = prepared.map((p) => {
          const o = p instanceof ConnectError ? p : committed[next++]!;
          if (o instanceof ConnectError) return { errorCode: o.code, errorMessage: o.rawMessage.slice(0, 200) };
          return { msgId: o.msgId, seqId: o.seqId };
        });
        return { results };
      },
    });

    router.service(PresenceService, {
      async syncStatus(req) {
        if (!GATEWAY_ID.test(req.gatewayId)) invalid("gateway_id: 1-64 letters, digits, '_', '.' or '-'");
        const online = req.onlineBatch.map((u) => requireUsername(u.username, "online_batch.username"));
        const offline = req.offlineBatch.map((u) => requireUsername(u.username, "offline_batch.username"));
        if (offline.length > 0) await d.routes.offline(req.gatewayId, offline);
        if (online.length > 0) await d.routes.online(req.gatewayId, online);
        return { seqId: req.seqId };
      },
    });
  };
}

