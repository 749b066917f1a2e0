import { Code, ConnectError, createContextKey, type Client, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { AuthService, SessionService } from "../gen/resonance/gateway/v1/gateway_pb.js";
import * as logic from "../gen/resonance/logic/v1/logic_pb.js";
import type { TokenValidator } from "./auth-cache.js";
import { bearerOf } from "./auth-cache.js";
import { boundError } from "./connect-handler.js";
import type { LogicClient } from "./logic-client.js";

const userKey = createContextKey<string>("");
const tokenKey = createContextKey<string>("");

/** Logic's responses have the same fields as the public ones: drop the type name to reuse them. */
async function same<T extends { $typeName: string }>(p: Promise<T>): Promise<Omit<T, "$typeName">> {
  const { $typeName: _, ...fields } = await p;
  return fields;
}

/**
 * The public HTTP API (Connect protocol, JSON and binary): each method authenticates the
 * caller and forwards to logic with the caller's username, never a username from the request.
 */
export function publicRoutes(
  l: LogicClient,
  tokens: TokenValidator,
  onLogout: (token: string) => void,
  onLogoutAll: (username: string) => void,
) {
  const authenticate: Interceptor = (next) => async (req) => {
    const open = req.service.typeName === AuthService.typeName && req.method.name !== "Logout" && req.method.name !== "LogoutAll";
    if (!open) {
      const principal = await tokens.validate(bearerOf(req.header));
      if (!principal) throw new ConnectError("missing, invalid or expired token (send Authorization: Bearer <token>)", Code.Unauthenticated);
      req.contextValues.set(userKey, principal.username);
      req.contextValues.set(tokenKey, principal.token);
    }
    try {
      return await next(req);
    } catch (err) {
      // Whatever failed, the client gets a short message (never its own input echoed back at length).
      throw err instanceof ConnectError ? boundError(err) : err;
    }
  };

  const auth = <T extends { $typeName: string }>(fn: (c: Client<typeof logic.AuthService>) => Promise<T>, idempotent = true) =>
    same(l.call(logic.AuthService, fn, idempotent));
  const session = <T extends { $typeName: string }>(fn: (c: Client<typeof logic.SessionService>) => Promise<T>, idempotent = true) =>
    same(l.call(logic.SessionService, fn, idempotent));

  const routes = (router: ConnectRouter) => {
    router.service(AuthService, {
      login: (req) => auth((c) => c.login({ username: req.username, password: req.password })),
      register: (req) => auth((c) => c.register({ username: req.username, password: req.password, nickname: req.nickname }), false),
      // The caller's own token (from the Authorization header) is revoked; the body's field is unused.
      logout: async (_req, ctx) => {
        const token = ctx.values.get(tokenKey);
        const r = await auth((c) => c.logout({ accessToken: token }));
        tokens.forget(token);
        onLogout(token);
        return r;
      },
      // Every token of the caller; logic also tells every other gateway (sockets closed 1008 everywhere).
      logoutAll: async (_req, ctx) => {
        const r = await auth((c) => c.logoutAll({ accessToken: ctx.values.get(tokenKey) }));
        const username = ctx.values.get(userKey);
        tokens.forgetUser(username);
        onLogoutAll(username);
        return r;
      },
    });
    router.service(SessionService, {
      getSessionList: (_req, ctx) => session((c) => c.getSessionList({ username: ctx.values.get(userKey) })),
      createSession: (req, ctx) =>
        // A single chat is idempotent by its id; a group is not.
        session((c) => c.createSession({ creatorUsername: ctx.values.get(userKey), members: req.members, name: req.name, type: req.type }), req.type === 1),
      getHistoryMessages: (req, ctx) =>
        session((c) =>
          c.getHistoryMessages({
            username: ctx.values.get(userKey),
            sessionId: req.sessionId,
            limit: req.limit,
            beforeSeq: req.beforeSeq,
            ...(req.afterSeq !== undefined ? { afterSeq: req.afterSeq } : {}),
          }),
        ),
      getContactList: (_req, ctx) => session((c) => c.getContactList({ username: ctx.values.get(userKey) })),
      searchUser: (req) => session((c) => c.searchUser({ query: req.query })),
      updateReadPosition: (req, ctx) =>
        session((c) => c.updateReadPosition({ username: ctx.values.get(userKey), sessionId: req.sessionId, seqId: req.seqId })),
      pullInboxDelta: (req, ctx) =>
        session((c) => c.pullInboxDelta({ username: ctx.values.get(userKey), cursorId: req.cursorId, limit: req.limit })),
      syncSessions: (req, ctx) => session((c) => c.syncSessions({ username: ctx.values.get(userKey), known: req.known })),
    });
  };
  return { routes, interceptors: [authenticate] };
}
