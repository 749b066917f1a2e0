import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, it } from "vitest";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";
import { NOTHING_NEEDED, describeWith, requireServices } from "./support/services.js";
import { createApi } from "../src/client/api.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

for (const mode of ["cluster", "standalone"] as const satisfies readonly Mode[]) describeWith(mode === "cluster" ? services : NOTHING_NEEDED, `public API (${mode})`, () => {
  let cluster: TestCluster;
  let url: string;
  /** alice, bob and carol, registered before any test; tests that need a blank slate register their own users. */
  const tokens: Record<string, string> = {};
  let nextUser = 0;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode, gateways: 1 });
    url = cluster.urls[0]!;
    const api = createApi(url, { binary: true });
    for (const u of ["alice", "bob", "carol"]) tokens[u] = (await api.auth.register({ username: u, password: `secret-${u[0]}` })).accessToken;
  });
  afterAll(() => cluster?.destroy());

  /** Fresh users for one test (unique names); resolves with their names and tokens. */
  async function users(...bases: string[]): Promise<Array<{ name: string; token: string }>> {
    const n = ++nextUser;
    return Promise.all(
      bases.map(async (b) => ({ name: `${b}${n}`, token: (await createApi(url, { binary: true }).auth.register({ username: `${b}${n}`, password: `secret-${b}` })).accessToken })),
    );
  }

  it("api - Register over JSON and binary returns a token and the user; nickname defaults to the username", async () => {
    const n = ++nextUser;
    const r = await postJson(url, "resonance.gateway.v1.AuthService/Register", { username: `reg${n}`, password: "secret-a", nickname: "Reg" });
    expect(r.status).toBe(200);
    expect(typeof r.body.accessToken).toBe("string");
    expect(r.body.user).toMatchObject({ username: `reg${n}`, nickname: "Reg" });
    const bin = await createApi(url, { binary: true }).auth.register({ username: `bin${n}`, password: "secret-b" });
    expect(bin.user?.nickname).toBe(`bin${n}`);
    expect(bin.accessToken.length).toBeGreaterThan(0);
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
    const [a1, b1, c1] = await users("al", "bo", "ca");
    const a = createApi(url, { binary: false, token: a1!.token }).session;
    const b = createApi(url, { binary: true, token: b1!.token }).session;
    const first = await a.createSession({ members: [b1!.name], type: 1 });
    expect(first.sessionId).toBe(`single:${a1!.name}:${b1!.name}`);
    expect((await b.createSession({ members: [a1!.name, b1!.name], type: 1 })).sessionId).toBe(first.sessionId);

    const group = await a.createSession({ members: [b1!.name, c1!.name], name: "Trio", type: 2 });
    expect(group.sessionId).toMatch(/^group:\d+$/);
    const history = await b.getHistoryMessages({ sessionId: group.sessionId });
    expect(history.messages).toHaveLength(1);
    expect(history.messages[0]).toMatchObject({ type: "system", seqId: 1n, fromUsername: a1!.name });
    expect(history.messages[0]!.sessionMeta).toMatchObject({ name: "Trio", type: 2 });
  });

  it("api - CreateSession rejects unknown members (404) and bad types (400)", async () => {
    const a = createApi(url, { binary: true, token: tokens.alice! }).session;
    await expect(a.createSession({ members: ["ghost"], type: 1 })).rejects.toMatchObject({ code: Code.NotFound });
    await expect(a.createSession({ members: ["bob"], type: 3 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(a.createSession({ members: ["bob", "carol"], type: 1 })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("api - non-members get permission_denied (403) for anything about a session", async () => {
    await createApi(url, { binary: true, token: tokens.alice! }).session.createSession({ members: ["bob"], type: 1 });
    const c = createApi(url, { binary: true, token: tokens.carol! }).session;
    await expect(c.getHistoryMessages({ sessionId: "single:alice:bob" })).rejects.toMatchObject({ code: Code.PermissionDenied });
    await expect(c.updateReadPosition({ sessionId: "single:alice:bob", seqId: 1n })).rejects.toMatchObject({ code: Code.PermissionDenied });
    const raw = await postJson(url, "resonance.gateway.v1.SessionService/GetHistoryMessages", { sessionId: "single:alice:bob" }, tokens.carol);
    expect(raw.status).toBe(403);
    expect(raw.body.code).toBe("permission_denied");
  });

  it("api - GetContactList and SearchUser", async () => {
    const [me, peer, other] = await users("con", "peer", "zed");
    const a = createApi(url, { binary: false, token: me!.token }).session;
    await a.createSession({ members: [peer!.name], type: 1 });
    const contacts = await a.getContactList({});
    expect(contacts.contacts.map((c) => c.username)).toEqual([peer!.name]);
    const found = await a.searchUser({ query: other!.name.toUpperCase() });
    expect(found.users.map((u) => u.username)).toEqual([other!.name]);
    expect((await a.searchUser({ query: "%" })).users).toEqual([]);
  });

  it("api - UpdateReadPosition only moves forward and returns the unread count", async () => {
    const [a1, b1] = await users("ra", "rb");
    await createApi(url, { binary: true, token: a1!.token }).session.createSession({ members: [b1!.name], type: 1 });
    const b = createApi(url, { binary: true, token: b1!.token }).session;
    const list = await b.getSessionList({});
    const single = list.sessions.find((s) => s.sessionId === `single:${a1!.name}:${b1!.name}`)!;
    expect(single.unreadCount).toBe(1n);
    expect(single.name).toBe(a1!.name); // The other member's nickname (it defaults to the username), as the Go system shows it.
    expect((await b.updateReadPosition({ sessionId: single.sessionId, seqId: 1n })).unreadCount).toBe(0n);
    expect((await b.updateReadPosition({ sessionId: single.sessionId, seqId: 0n })).unreadCount).toBe(0n);
    const after = await b.getSessionList({});
    expect(after.sessions.find((s) => s.sessionId === single.sessionId)?.lastReadSeq).toBe(1n);
  });

  it("api - PullInboxDelta pages by cursor", async () => {
    const [a1, b1, c1] = await users("pa", "pb", "pc");
    const a = createApi(url, { binary: true, token: a1!.token }).session;
    await a.createSession({ members: [b1!.name], type: 1 });
    await a.createSession({ members: [b1!.name, c1!.name], name: "paging", type: 2 });
    const b = createApi(url, { binary: true, token: b1!.token }).session;
    // The two system messages of the sessions b is in reach their inbox through the queue.
    const all = await eventually(async () => {
      const r = await b.pullInboxDelta({ cursorId: 0n, limit: 100n });
      return r.events.length === 2 && r;
    }, 15_000, "both system messages in the inbox");
    expect(all.hasMore).toBe(false);
    const first = await b.pullInboxDelta({ cursorId: 0n, limit: 1n });
    expect(first.events).toHaveLength(1);
    expect(first.hasMore).toBe(true);
    const rest = await b.pullInboxDelta({ cursorId: first.nextCursorId, limit: 100n });
    expect([...first.events, ...rest.events].map((e) => e.inboxId)).toEqual(all.events.map((e) => e.inboxId));
    expect(rest.hasMore).toBe(false);
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
    const [user] = await users("out");
    const login = () => createApi(url, { binary: true }).auth.login({ username: user!.name, password: "secret-out" }).then((r) => r.accessToken);
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
    await json.session.createSession({ members: ["bob"], type: 1 });
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
    const n = ++nextUser;
    expect((await json.auth.register({ username: `erin${n}`, password: "secret-e" })).user?.username).toBe(`erin${n}`);
    expect((await bin.auth.register({ username: `fred${n}`, password: "secret-f" })).user?.username).toBe(`fred${n}`);
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
