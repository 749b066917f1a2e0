import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";
import { requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
const modes: Mode[] = services.ok ? ["cluster", "standalone"] : ["standalone"];
if (!services.ok) console.warn(`api tests: cluster mode skipped: ${services.reason}`);

describe.each(modes)("public API (%s)", (mode) => {
  let cluster: TestCluster;
  let url: string;
  const tokens: Record<string, string> = {};

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode, gateways: 1 });
    url = cluster.urls[0]!;
  });
  afterAll(() => cluster?.destroy());

  it("api - Register over JSON and binary returns a token and the user; nickname defaults to the username", async () => {
    const r = await postJson(url, "resonance.gateway.v1.AuthService/Register", { username: "alice", password: "secret-a", nickname: "Alice" });
    expect(r.status).toBe(200);
    expect(typeof r.body.accessToken).toBe("string");
    expect(r.body.user).toMatchObject({ username: "alice", nickname: "Alice" });
    tokens.alice = r.body.accessToken as string;

    const bin = createApi(url, { binary: true });
    const bob = await bin.auth.register({ username: "bob", password: "secret-b" });
    expect(bob.user?.nickname).toBe("bob");
    tokens.bob = bob.accessToken;
    tokens.carol = (await bin.auth.register({ username: "carol", password: "secret-c" })).accessToken;
  });

  it("api - Register of a taken name is already_exists (409); bad names are invalid_argument", async () => {
    const r = await postJson(url, "resonance.gateway.v1.AuthService/Register", { username: "alice", password: "whatever1" });
    expect(r.status).toBe(409);
    expect(r.body.code).toBe("already_exists");
    const bad = await postJson(url, "resonance.gateway.v1.AuthService/Register", { username: "a b/c", password: "whatever1" });
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe("invalid_argument");
  });

  it("api - Login checks the password and says the same for unknown users", async () => {
    const bin = createApi(url, { binary: true });
    const ok = await bin.auth.login({ username: "alice", password: "secret-a" });
    expect(ok.user?.username).toBe("alice");
    const wrong = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "nope-nope" });
    const unknown = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: "nobody", password: "nope-nope" });
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(wrong.body.message).toBe(unknown.body.message);
  });

  it("api - session methods need a valid token in the Authorization header (?token= is for /ws only)", async () => {
    const none = await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {});
    expect(none.status).toBe(401);
    expect(none.body.code).toBe("unauthenticated");
    const forged = await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, tokens.alice!.slice(0, -4) + "AAAA");
    expect(forged.status).toBe(401);
    const viaQuery = await fetch(`${url}/resonance.gateway.v1.SessionService/GetSessionList?token=${tokens.alice}`, {
      method: "POST",
      headers: { "content-type": "application/json", "connect-protocol-version": "1" },
      body: "{}",
    });
    expect(viaQuery.status).toBe(401);
  });

  it("api - every new user is in the Resonance Room (session 0)", async () => {
    const { session } = createApi(url, { binary: true, token: tokens.bob! });
    const list = await session.getSessionList({});
    expect(list.sessions.map((s) => s.sessionId)).toContain("0");
    expect(list.sessions.find((s) => s.sessionId === "0")?.name).toBe("Resonance Room");
  });

  it("api - CreateSession single is idempotent from either side; group gets a system message with session_meta", async () => {
    const a = createApi(url, { binary: false, token: tokens.alice! }).session;
    const b = createApi(url, { binary: true, token: tokens.bob! }).session;
    const first = await a.createSession({ members: ["bob"], type: 1 });
    expect(first.sessionId).toBe("single:alice:bob");
    expect((await b.createSession({ members: ["alice", "bob"], type: 1 })).sessionId).toBe("single:alice:bob");

    const group = await a.createSession({ members: ["bob", "carol"], name: "Trio", type: 2 });
    expect(group.sessionId).toMatch(/^group:\d+$/);
    const history = await b.getHistoryMessages({ sessionId: group.sessionId });
    expect(history.messages).toHaveLength(1);
    expect(history.messages[0]).toMatchObject({ type: "system", seqId: 1n, fromUsername: "alice" });
    expect(history.messages[0]!.sessionMeta).toMatchObject({ name: "Trio", type: 2 });
  });

  it("api - CreateSession rejects unknown members (404) and bad types (400)", async () => {
    const a = createApi(url, { binary: true, token: tokens.alice! }).session;
    await expect(a.createSession({ members: ["ghost"], type: 1 })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(a.createSession({ members: ["bob"], type: 3 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(a.createSession({ members: ["bob", "carol"], type: 1 })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("api - non-members get permission_denied (403) for anything about a session", async () => {
    const c = createApi(url, { binary: true, token: tokens.carol! }).session;
    await expect(c.getHistoryMessages({ sessionId: "single:alice:bob" })).rejects.toMatchObject({ code: Code.PermissionDenied });
    await expect(c.updateReadPosition({ sessionId: "single:alice:bob", seqId: 1n })).rejects.toMatchObject({ code: Code.PermissionDenied });
    const raw = await postJson(url, "resonance.gateway.v1.SessionService/GetHistoryMessages", { sessionId: "single:alice:bob" }, tokens.carol);
    expect(raw.status).toBe(403);
    expect(raw.body.code).toBe("permission_denied");
  });

  it("api - GetContactList and SearchUser", async () => {
    const a = createApi(url, { binary: false, token: tokens.alice! }).session;
    const contacts = await a.getContactList({});
    expect(contacts.contacts.map((c) => c.username)).toEqual(["bob"]);
    const found = await a.searchUser({ query: "CAR" });
    expect(found.users.map((u) => u.username)).toEqual(["carol"]);
    expect((await a.searchUser({ query: "%" })).users).toEqual([]);
  });

  it("api - UpdateReadPosition only moves forward and returns the unread count", async () => {
    const b = createApi(url, { binary: true, token: tokens.bob! }).session;
    const list = await b.getSessionList({});
    const single = list.sessions.find((s) => s.sessionId === "single:alice:bob")!;
    expect(single.unreadCount).toBe(1n);
    expect(single.name).toBe("Alice"); // The other member's nickname, as the Go system shows it.
    expect((await b.updateReadPosition({ sessionId: single.sessionId, seqId: 1n })).unreadCount).toBe(0n);
    expect((await b.updateReadPosition({ sessionId: single.sessionId, seqId: 0n })).unreadCount).toBe(0n);
    const after = await b.getSessionList({});
    expect(after.sessions.find((s) => s.sessionId === single.sessionId)?.lastReadSeq).toBe(1n);
  });

  it("api - PullInboxDelta pages by cursor", async () => {
    const b = createApi(url, { binary: true, token: tokens.bob! }).session;
    // The two system messages of the sessions bob is in reach his inbox through the queue.
    const all = await eventually(async () => {
      const r = await b.pullInboxDelta({ cursorId: 0n, limit: 100n });
      return r.events.length >= 2 && r;
    }, 15_000, "bob's inbox");
    expect(all.hasMore).toBe(false);
    const first = await b.pullInboxDelta({ cursorId: 0n, limit: 1n });
    expect(first.events).toHaveLength(1);
    expect(first.hasMore).toBe(true);
    const rest = await b.pullInboxDelta({ cursorId: first.nextCursorId, limit: 100n });
    expect([...first.events, ...rest.events].map((e) => e.inboxId)).toEqual(all.events.map((e) => e.inboxId));
  });

  it("api - garbage JSON, wrong types and unknown methods get clear errors; the server keeps serving", async () => {
    const garbage = await postJson(url, "resonance.gateway.v1.AuthService/Login", "{not json");
    expect(garbage.status).toBe(400);
    expect(garbage.body.code).toBe("invalid_argument");
    const wrongType = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: 123, password: ["x"] });
    expect(wrongType.status).toBe(400);
    const badInt = await postJson(url, "resonance.gateway.v1.SessionService/GetHistoryMessages", { sessionId: "0", limit: "lots" }, tokens.alice);
    expect(badInt.status).toBe(400);
    const unknown = await postJson(url, "resonance.gateway.v1.AuthService/Nope", {});
    expect(unknown.status).toBe(404);
    const ok = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "secret-a" });
    expect(ok.status).toBe(200);
  });

  it("api - Logout revokes that token (HTTP 401, its sockets closed 1008) and no other; CORS preflight is answered", async () => {
    const login = () => createApi(url, { binary: true }).auth.login({ username: "alice", password: "secret-a" }).then((r) => r.accessToken);
    const [doomed, other] = [await login(), await login()];
    const socket = new RawSocket(url, doomed);
    await socket.opened;
    const r = await postJson(url, "resonance.gateway.v1.AuthService/Logout", {}, doomed);
    expect(r.body).toEqual({ success: true });
    expect((await socket.closed).code).toBe(1008);
    expect((await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, doomed)).status).toBe(401);
    expect((await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, other)).status).toBe(200);
    await expect(new RawSocket(url, doomed).opened).rejects.toThrow(/401/);
    const pre = await fetch(`${url}/resonance.gateway.v1.AuthService/Login`, { method: "OPTIONS" });
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-headers")).toContain("connect-protocol-version");
  });

  it("api - every method answers the same over JSON and binary", async () => {
    const json = createApi(url, { binary: false, token: tokens.alice! });
    const bin = createApi(url, { binary: true, token: tokens.alice! });
    const calls: Array<[string, (c: ReturnType<typeof createApi>) => Promise<unknown>]> = [
      ["Login", (c) => c.auth.login({ username: "bob", password: "secret-b" }).then((r) => r.user)],
      ["GetSessionList", (c) => c.session.getSessionList({})],
      ["CreateSession", (c) => c.session.createSession({ members: ["bob"], type: 1 })],
      ["GetHistoryMessages", (c) => c.session.getHistoryMessages({ sessionId: "single:alice:bob", limit: 5n })],
      ["GetContactList", (c) => c.session.getContactList({})],
      ["SearchUser", (c) => c.session.searchUser({ query: "o" })],
      ["UpdateReadPosition", (c) => c.session.updateReadPosition({ sessionId: "single:alice:bob", seqId: 1n })],
      ["PullInboxDelta", (c) => c.session.pullInboxDelta({ cursorId: 0n, limit: 10n })],
    ];
    for (const [name, call] of calls) {
      expect(await call(json), name).toEqual(await call(bin));
    }
    // Logout over both (each revokes its own fresh token).
    for (const binary of [false, true]) {
      const fresh = (await json.auth.login({ username: "alice", password: "secret-a" })).accessToken;
      expect(await createApi(url, { binary, token: fresh }).auth.logout({})).toMatchObject({ success: true });
    }
    // Register over both, for two new users; the errors are the same too.
    expect((await json.auth.register({ username: "erin", password: "secret-e" })).user?.username).toBe("erin");
    expect((await bin.auth.register({ username: "fred", password: "secret-f" })).user?.username).toBe("fred");
    const errJ = await json.session.getHistoryMessages({ sessionId: "nope" }).catch((e: ConnectError) => e.code);
    const errB = await bin.session.getHistoryMessages({ sessionId: "nope" }).catch((e: ConnectError) => e.code);
    expect([errJ, errB]).toEqual([Code.PermissionDenied, Code.PermissionDenied]);
  });

  it("api - errors from the binary client are ConnectErrors with codes", async () => {
    const anon = createApi(url, { binary: true });
    const err = await anon.session.getSessionList({}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.Unauthenticated);
  });
});
