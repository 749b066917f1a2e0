import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { UserSchema } from "../gen/resonance/common/v1/common_pb.js";
import { AuthService, ChatService, PresenceService, SessionService } from "../gen/resonance/logic/v1/logic_pb.js";
import type { Faults } from "../lifecycle/faults.js";
import type { RouteTable } from "../infra/routes/types.js";
import type { Metrics } from "../observability/metrics.js";
import { Tokens, hashPassword, verifyPassword } from "./auth.js";
import { LogicStore, SESSION_GROUP, SESSION_SINGLE, singleChatId } from "./store.js";

const USERNAME = /^[A-Za-z0-9_.-]{2,32}$/;
const MAX_GROUP_MEMBERS = 500;

export interface HandlerDeps {
  readonly store: LogicStore;
  readonly tokens: Tokens;
  readonly routes: RouteTable;
  readonly faults: Faults;
  readonly metrics: Metrics;
  readonly maxContentChars: number;
  /** Called after a message commit so the outbox relay publishes without waiting for its poll. */
  readonly onCommit: () => void;
}

let dummy: Promise<string> | undefined;
/** A hash of a random password, checked when the user does not exist so timing does not tell. */
const dummyHash = () => (dummy ??= hashPassword(crypto.randomUUID()));

function invalid(message: string): never {
  throw new ConnectError(message, Code.InvalidArgument);
}

function requireUsername(name: string, field = "username"): string {
  if (!USERNAME.test(name)) invalid(`${field}: 2-32 letters, digits, '_', '.' or '-'`);
  return name;
}

function clampLimit(limit: bigint, dflt: number, max: number): number {
  if (limit < 0n) invalid("limit must not be negative");
  if (limit === 0n) return dflt;
  return limit > BigInt(max) ? max : Number(limit);
}

/** Registers the logic gRPC services (protocol.md) on a router. */
export function logicRoutes(d: HandlerDeps) {
  const user = (u: { username: string; nickname: string; avatar_url: string }) =>
    create(UserSchema, { username: u.username, nickname: u.nickname, avatarUrl: u.avatar_url });

  return (router: ConnectRouter) => {
    router.service(AuthService, {
      async register(req) {
        await d.faults.at("logic.Register");
        const username = requireUsername(req.username);
        if (req.password.length < 6 || req.password.length > 256) invalid("password: 6-256 characters");
        const nickname = (req.nickname || username).trim().slice(0, 64) || username;
        const created = await d.store.createUser(username, nickname, await hashPassword(req.password));
        if (!created) throw new ConnectError(`user ${username} already exists`, Code.AlreadyExists);
        return { accessToken: await d.tokens.issue(username), user: user({ username, nickname, avatar_url: "" }) };
      },
      async login(req) {
        await d.faults.at("logic.Login");
        const row = USERNAME.test(req.username) ? await d.store.findUser(req.username) : undefined;
        // Same answer, and the same work (one KDF run), for an unknown user and a wrong password.
        const ok = await verifyPassword(req.password, row?.password_hash ?? (await dummyHash()));
        if (!row || !ok) throw new ConnectError("wrong username or password", Code.Unauthenticated);
        return { accessToken: await d.tokens.issue(row.username), user: user(row) };
      },
      async validateToken(req) {
        const claims = await d.tokens.verify(req.accessToken);
        if (!claims || (await d.store.isRevoked(claims.jti))) return { valid: false };
        const row = await d.store.findUser(claims.username);
        if (!row) return { valid: false };
        return { valid: true, username: row.username, user: user(row), expiresAt: BigInt(claims.expiresAt) };
      },
      async logout(req) {
        const claims = await d.tokens.verify(req.accessToken);
        if (claims) await d.store.revokeToken(claims.jti, claims.expiresAt);
        return { success: true };
      },
    });

    router.service(SessionService, {
      async getSessionList(req) {
        return { sessions: await d.store.sessionList(req.username) };
      },
      async createSession(req) {
        const creator = req.creatorUsername;
        const others = [...new Set(req.members.map((m) => requireUsername(m, "members")))].filter((m) => m !== creator);
        const existing = await d.store.existingUsers(others);
        const missing = others.filter((m) => !existing.has(m));
        if (missing.length > 0) throw new ConnectError(`unknown users: ${missing.join(", ")}`, Code.NotFound);
        if (req.type === SESSION_SINGLE) {
          if (others.length !== 1) invalid("a single chat has exactly one other member");
          const id = singleChatId(creator, others[0]!);
          const r = await d.store.createSession(id, "", SESSION_SINGLE, creator, others, (nickname) => `${nickname} started a chat`);
          if (r.created) d.onCommit();
          return { sessionId: r.sessionId };
        }
        if (req.type !== SESSION_GROUP) invalid("type must be 1 (single) or 2 (group)");
        if (others.length + 1 > MAX_GROUP_MEMBERS) invalid(`a group has at most ${MAX_GROUP_MEMBERS} members`);
        const name = req.name.trim().slice(0, 64) || [creator, ...others].join(", ").slice(0, 64);
        const r = await d.store.createSession(undefined, name, SESSION_GROUP, creator, others, (nickname) => `${nickname} created the group "${name}"`);
        d.onCommit();
        return { sessionId: r.sessionId };
      },
      async getHistoryMessages(req) {
        await d.store.requireMember(req.sessionId, req.username);
        if (req.beforeSeq < 0n) invalid("before_seq must not be negative");
        return { messages: await d.store.history(req.sessionId, req.beforeSeq, clampLimit(req.limit, 20, 100)) };
      },
      async getContactList(req) {
        return { contacts: await d.store.contacts(req.username) };
      },
      async searchUser(req) {
        const q = req.query.trim();
        if (q.length === 0) return { users: [] };
        if (q.length > 64) invalid("query: at most 64 characters");
        return { users: await d.store.searchUsers(q, 50) };
      },
      async updateReadPosition(req) {
        if (req.seqId < 0n) invalid("seq_id must not be negative");
        return { unreadCount: await d.store.updateReadPosition(req.sessionId, req.username, req.seqId) };
      },
      async pullInboxDelta(req) {
        if (req.cursorId < 0n) invalid("cursor_id must not be negative");
        const r = await d.store.inboxDelta(req.username, req.cursorId, clampLimit(req.limit, 100, 500));
        return { events: r.events, nextCursorId: r.next, hasMore: r.hasMore };
      },
    });

    router.service(ChatService, {
      async sendMessage(req) {
        await d.faults.at("logic.SendMessage");
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
            await d.store.createSession(sessionId, "", SESSION_SINGLE, from, [req.toUsername], `${from} started a chat`);
          }
        } else if (req.toUsername) {
          requireUsername(req.toUsername, "to_username");
        }
        // Membership is checked by the commit itself (permission_denied for a stranger).
        const r = await d.store.sendMessage({
          sessionId,
          from,
          to: req.toUsername,
          content: req.content,
          type,
          clientMsgId: req.clientMsgId || undefined,
        });
        if (r.created) {
          d.metrics.messagesCommitted.inc();
          d.onCommit();
        }
        return { msgId: r.msgId, seqId: r.seqId };
      },
    });

    router.service(PresenceService, {
      async syncStatus(req) {
        if (!req.gatewayId) invalid("gateway_id is required");
        const online = req.onlineBatch.map((u) => u.username);
        const offline = req.offlineBatch.map((u) => u.username);
        if (offline.length > 0) await d.routes.offline(req.gatewayId, offline);
        if (online.length > 0) await d.routes.online(req.gatewayId, online);
        return { seqId: req.seqId };
      },
    });
  };
}

