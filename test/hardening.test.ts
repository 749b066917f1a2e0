import { connect as tcpConnect } from "node:net";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionService } from "../src/gen/resonance/logic/v1/logic_pb.js";
import { PushService } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { Channels } from "../src/rpc/channels.js";
import { createApi } from "../src/client/api.js";
import { TestCluster, type Mode } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";
import { requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
const modes: Mode[] = services.ok ? ["cluster", "standalone"] : ["standalone"];
if (!services.ok) console.warn(`hardening tests: cluster mode skipped: ${services.reason}`);

const NUL = "\u0000";

/** "connected", or the error code of a TCP connection attempt to a loopback port. */
function tcpOutcome(port: number): Promise<string> {
  return new Promise((resolve) => {
    const c = tcpConnect(port, "127.0.0.1", () => {
      c.destroy();
      resolve("connected");
    });
    c.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** A raw binary Connect call (for bodies no client would send). */
async function postProto(url: string, path: string, body: Uint8Array, token?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`${url}/${path}`, {
    method: "POST",
    headers: { "content-type": "application/proto", "connect-protocol-version": "1", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: Buffer.from(body),
  });
  const text = await res.text();
  let parsed: Record<string, unknown> = {};
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    parsed = { raw: text };
  }
  return { status: res.status, body: parsed };
}

describe.each(modes)("hardening (%s)", (mode) => {
  let cluster: TestCluster;
  let url: string;
  const token: Record<string, string> = {};

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode, gateways: 1, logics: mode === "cluster" ? 2 : 1 });
    url = cluster.urls[0]!;
    for (const u of ["alice", "bob"]) {
      token[u] = (await createApi(url, { binary: true }).auth.register({ username: u, password: `pw-${u}-123` })).accessToken;
    }
  });
  afterAll(() => cluster?.destroy());

  it("hardening - malformed protobuf bodies get 400 invalid_argument, never 500; the server keeps serving", async () => {
    for (const body of [new Uint8Array([0xff, 0xff, 0xff]), new Uint8Array([0x0a, 0x7f]), Uint8Array.from({ length: 200 }, (_, i) => (i * 97 + 13) % 256)]) {
      const login = await postProto(url, "resonance.gateway.v1.AuthService/Login", body);
      expect(login.status, JSON.stringify(login.body)).toBe(400);
      expect(login.body).toEqual({ code: "invalid_argument", message: "malformed protobuf request body" });
      const history = await postProto(url, "resonance.gateway.v1.SessionService/GetHistoryMessages", body, token.alice);
      expect(history.status).toBe(400);
    }
    expect((await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, token.alice)).status).toBe(200);
  });

  it("hardening - an HTTP/1.0 request without a Host header is a 400, not a crash", async () => {
    const port = Number(new URL(url).port);
    const answer = await new Promise<string>((resolve, reject) => {
      const c = tcpConnect(port, "127.0.0.1", () =>
        c.write("POST /resonance.gateway.v1.AuthService/Login HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"),
      );
      let got = "";
      c.on("data", (d) => (got += d.toString()));
      c.on("end", () => resolve(got));
      c.on("error", reject);
    });
    expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request");
    expect(answer).toContain('"code":"invalid_argument"');
    expect((await postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, token.alice)).status).toBe(200);
  });

  it("hardening - a body that does not inflate with its content-encoding is a 400, an unknown encoding a 415, never a 5xx", async () => {
    const call = (encoding: string, body: string) =>
      fetch(`${url}/resonance.gateway.v1.AuthService/Login`, { method: "POST", headers: { "content-type": "application/json", "content-encoding": encoding }, body }).then(
        async (r) => ({ status: r.status, body: (await r.json()) as Record<string, unknown> }),
      );
    expect(await call("gzip", "not gzip at all")).toMatchObject({ status: 400, body: { code: "invalid_argument" } });
    expect(await call("zstd", "{}")).toMatchObject({ status: 415, body: { code: "invalid_argument" } });
    expect((await call("identity", '{"username":"alice","password":"pw-alice-123"}')).status).toBe(200);
  });

  it("hardening - a JSON value that cannot be decoded is refused with a message cut short, not the value", async () => {
    const r = await postJson(url, "resonance.gateway.v1.SessionService/PullInboxDelta", { limit: "9".repeat(5_000) + "x" }, token.alice);
    expect(r.status).toBe(400);
    expect(String(r.body.message).length).toBeLessThanOrEqual(257);
  });

  it("hardening - NUL and other control characters are invalid_argument in every field that reaches the database", async () => {
    const calls: Array<[string, unknown, string | undefined]> = [
      ["AuthService/Register", { username: "nully", password: "secret-n", nickname: `ni${NUL}ck` }, undefined],
      ["AuthService/Register", { username: "nully", password: "secret-n", nickname: "evil\u202enimda" }, undefined],
      ["AuthService/Register", { username: `nu${NUL}lly`, password: "secret-n" }, undefined],
      ["SessionService/CreateSession", { members: ["bob"], name: `g${NUL}`, type: 2 }, token.alice],
      ["SessionService/CreateSession", { members: [`b${NUL}ob`], type: 1 }, token.alice],
      ["SessionService/SearchUser", { query: `a${NUL}` }, token.alice],
      ["SessionService/GetHistoryMessages", { sessionId: `0${NUL}` }, token.alice],
      ["SessionService/UpdateReadPosition", { sessionId: `0${NUL}`, seqId: "1" }, token.alice],
      ["SessionService/GetHistoryMessages", { sessionId: "0", beforeSeq: "-1" }, token.alice],
      ["SessionService/PullInboxDelta", { cursorId: "-5" }, token.alice],
    ];
    for (const [path, body, t] of calls) {
      const r = await postJson(url, `resonance.gateway.v1.${path}`, body, t);
      expect(r.status, `${path} ${JSON.stringify(body)}: ${JSON.stringify(r.body)}`).toBe(400);
      expect(r.body.code).toBe("invalid_argument");
      expect(String(r.body.message).length).toBeLessThan(120);
    }
  });

  it("hardening - a session id of 65,000 characters is refused with a short message that does not echo it", async () => {
    const r = await postJson(url, "resonance.gateway.v1.SessionService/GetHistoryMessages", { sessionId: "x".repeat(65_300) }, token.alice);
    expect(r.status).toBe(400);
    expect(JSON.stringify(r.body).length).toBeLessThan(200);
  });

  it("hardening - CreateSession: too many members is refused before any lookup; unknown users are listed briefly; other calls on the channel are unharmed", async () => {
    const tooMany = await postJson(url, "resonance.gateway.v1.SessionService/CreateSession", { members: Array.from({ length: 7000 }, (_, i) => `ghost${i}`), type: 2 }, token.alice);
    expect(tooMany.status).toBe(400);
    expect(tooMany.body.message).toBe("members: at most 500");
    const api = createApi(url, { binary: true, token: token.alice! });
    const ghosts = Array.from({ length: 499 }, (_, i) => `ghost-number-${String(i).padStart(5, "0")}`);
    const [unknown, ...others] = await Promise.all([
      api.session.createSession({ members: ghosts, type: 2 }).catch((e: { code: Code; rawMessage: string }) => e),
      ...Array.from({ length: 30 }, () => api.session.getSessionList({}).then(() => "ok", (e: Error) => e.message)),
    ]);
    expect(unknown).toMatchObject({ code: Code.NotFound });
    expect((unknown as { rawMessage: string }).rawMessage).toMatch(/^unknown users: ghost-number-00000, .* and 494 more$/);
    expect(others.every((o) => o === "ok")).toBe(true);
  });

  it("hardening - a request body over 256 KiB is refused at the gateway and nothing else breaks", async () => {
    const huge = await postJson(url, "resonance.gateway.v1.SessionService/SearchUser", { query: "q".repeat(300 * 1024) }, token.alice);
    expect(huge.status).toBeGreaterThanOrEqual(400);
    expect(huge.status).toBeLessThan(500);
    expect(huge.body.code).toBe("resource_exhausted");
    expect((await postJson(url, "resonance.gateway.v1.SessionService/SearchUser", { query: "ali" }, token.alice)).status).toBe(200);
  });

  it("hardening - usernames are unique regardless of case; Login and CreateSession accept any spelling and use the account's own", async () => {
    const anon = createApi(url, { binary: true });
    await anon.auth.register({ username: "Dave", password: "secret-dave" });
    await expect(anon.auth.register({ username: "dave", password: "secret-dave" })).rejects.toMatchObject({ code: Code.AlreadyExists });
    await expect(anon.auth.register({ username: "DAVE", password: "other-pass" })).rejects.toMatchObject({ code: Code.AlreadyExists });
    const login = await anon.auth.login({ username: "dAvE", password: "secret-dave" });
    expect(login.user?.username).toBe("Dave");
    const s = await createApi(url, { binary: true, token: token.alice! }).session.createSession({ members: ["DAVE"], type: 1 });
    expect(s.sessionId).toBe("single:Dave:alice");
    const again = await createApi(url, { binary: true, token: login.accessToken }).session.createSession({ members: ["ALICE"], type: 1 });
    expect(again.sessionId).toBe("single:Dave:alice");
  });

  it("hardening - a password over 256 characters is refused on Login before any hashing", async () => {
    const r = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "p".repeat(10_000) });
    expect(r.status).toBe(400);
    expect(r.body.code).toBe("invalid_argument");
  });

  it("hardening - failed logins back off per account (any spelling, every logic instance); the right password then waits too; other accounts are untouched", async () => {
    const anon = createApi(url, { binary: true });
    await anon.auth.register({ username: "erin", password: "secret-erin" });
    // Five free failures, then each one blocks the account for longer.
    for (let i = 0; i < 6; i++) {
      await expect(anon.auth.login({ username: i % 2 ? "ERIN" : "erin", password: "wrong-guess" })).rejects.toMatchObject({ code: Code.Unauthenticated });
    }
    const blocked = await postJson(url, "resonance.gateway.v1.AuthService/Login", { username: "Erin", password: "secret-erin" });
    expect(blocked.status).toBe(429);
    expect(blocked.body).toMatchObject({ code: "resource_exhausted" });
    expect(String(blocked.body.message)).toMatch(/too many failed logins for this account; try again in \d+ s/);
    // Another account is not affected.
    expect((await anon.auth.login({ username: "bob", password: "pw-bob-123" })).user?.username).toBe("bob");
    // The block runs out (1 s after the sixth failure); the right password then works and resets the count.
    const ok = await eventually(() => anon.auth.login({ username: "erin", password: "secret-erin" }), 10_000, "the block to run out");
    expect(ok.user?.username).toBe("erin");
    await expect(anon.auth.login({ username: "erin", password: "wrong-guess" })).rejects.toMatchObject({ code: Code.Unauthenticated });
  });

  it("hardening - nicknames and group names with bidi overrides are refused; a user may create 20 groups (refused attempts not counted), then must wait", async () => {
    const api = createApi(url, { binary: false, token: token.bob! });
    await expect(api.session.createSession({ members: ["alice"], name: "pay\u202eme", type: 2 })).rejects.toMatchObject({ code: Code.InvalidArgument });
    // Refused requests (unknown members) spend nothing of the budget.
    for (let i = 0; i < 5; i++) {
      await expect(api.session.createSession({ members: ["alice", `ghost-of-${i}`], name: `nope ${i}`, type: 2 })).rejects.toMatchObject({ code: Code.NotFound });
    }
    const made = [];
    for (let i = 0; i < 20; i++) made.push((await api.session.createSession({ members: ["alice"], name: `group ${i}`, type: 2 })).sessionId);
    expect(new Set(made).size).toBe(20);
    const over = await postJson(url, "resonance.gateway.v1.SessionService/CreateSession", { members: ["alice"], name: "one too many", type: 2 }, token.bob);
    expect(over.status).toBe(429);
    expect(String(over.body.message)).toMatch(/too many groups created/);
    // Someone else still can.
    expect((await createApi(url, { binary: true, token: token.alice! }).session.createSession({ members: ["bob"], type: 2 })).sessionId).toMatch(/^group:/);
  });

  it("hardening - the internal gRPC ports refuse calls without the shared secret; `all` without etcd opens none", async () => {
    if (cluster.mode === "standalone") {
      // Its gateway, logic and task call each other in process: nothing listens on the internal ports.
      const p = cluster.gateways[0]!;
      const outcomes = await Promise.all([p.env.RESONANCE_LOGIC_PORT, p.env.RESONANCE_PUSH_PORT].map((port) => tcpOutcome(Number(port))));
      expect(outcomes).toEqual(["ECONNREFUSED", "ECONNREFUSED"]);
      // Whole all the same: the chat reaches logic (acked) and its push comes back through task and gateway.
      const [alice, bob] = [new RawSocket(url, token.alice!), new RawSocket(url, token.bob!)];
      await Promise.all([alice.opened, bob.opened]);
      const session = await createApi(url, { binary: true, token: token.alice! }).session.createSession({ members: ["bob"], type: 1 });
      alice.send({ seq: "no-port-1", payload: { case: "chat", value: { sessionId: session.sessionId, content: "in process" } } });
      expect((await alice.ackFor("no-port-1")).error).toBe("");
      const push = await bob.next((x) => x.payload.case === "push" && x.payload.value.content === "in process");
      expect(push.payload.value).toMatchObject({ sessionId: session.sessionId, fromUsername: "alice" });
      alice.close();
      bob.close();
      return;
    }
    const p = cluster.logics[0]!;
    const none = new Channels({ timeoutMs: 5_000 });
    const wrong = new Channels({ timeoutMs: 5_000, secret: "w".repeat(40) });
    try {
      const logicAddress = `127.0.0.1:${p.env.RESONANCE_LOGIC_PORT}`;
      for (const ch of [none, wrong]) {
        await expect(ch.client(SessionService, logicAddress).getSessionList({ username: "alice" })).rejects.toMatchObject({ code: Code.Unauthenticated });
      }
      const pushAddress = `127.0.0.1:${cluster.gateways[0]!.env.RESONANCE_PUSH_PORT}`;
      await expect(none.client(PushService, pushAddress).revoke({ usernames: ["alice"] })).rejects.toMatchObject({ code: Code.Unauthenticated });
      await p.waitForLog((l) => l.level === 50 && String(l.msg).includes("RESONANCE_INTERNAL_SECRET"));
    } finally {
      none.close();
      wrong.close();
    }
  });
});

describe.skipIf(!services.ok)("hardening (cluster, two gateways) - logout", () => {
  let cluster: TestCluster;
  let gw1: string;
  let gw2: string;
  const login = (url: string, username: string) =>
    createApi(url, { binary: true }).auth.login({ username, password: `pw-${username}-123` }).then((r) => r.accessToken);

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 2 });
    [gw1, gw2] = cluster.urls as [string, string];
    await createApi(gw1, { binary: true }).auth.register({ username: "frank", password: "pw-frank-123" });
  });
  afterAll(() => cluster?.destroy());

  const status = (url: string, t: string) => postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, t).then((r) => r.status);

  it("hardening - Logout through one gateway closes that token's sockets on every gateway at once, and every gateway refuses it at once", async () => {
    const [doomed, kept] = [await login(gw1, "frank"), await login(gw1, "frank")];
    // Each gateway has validated (and cached) the doomed token.
    expect(await status(gw1, doomed)).toBe(200);
    expect(await status(gw2, doomed)).toBe(200);
    const sockets = [new RawSocket(gw1, doomed), new RawSocket(gw2, doomed), new RawSocket(gw2, kept)];
    await Promise.all(sockets.map((s) => s.opened));
    expect(await postJson(gw1, "resonance.gateway.v1.AuthService/Logout", {}, doomed)).toMatchObject({ status: 200, body: { success: true } });
    // Logout answered after every gateway confirmed: no cache window anywhere.
    expect(await status(gw2, doomed)).toBe(401);
    expect(await status(gw1, doomed)).toBe(401);
    expect((await sockets[0]!.closed).code).toBe(1008);
    expect((await sockets[1]!.closed).code).toBe(1008);
    expect(await status(gw2, kept)).toBe(200);
    expect(sockets[2]!.ws.readyState).toBe(sockets[2]!.ws.OPEN);
    sockets[2]!.close();
  });

  it("hardening - LogoutAll revokes every token of the user on every gateway; a new login works", async () => {
    const tokens = [await login(gw1, "frank"), await login(gw2, "frank"), await login(gw2, "frank")];
    const unused = await login(gw1, "frank");
    const sockets = [new RawSocket(gw1, tokens[0]!), new RawSocket(gw2, tokens[1]!), new RawSocket(gw2, tokens[2]!)];
    await Promise.all(sockets.map((s) => s.opened));
    for (const t of tokens) expect(await status(gw1, t)).toBe(200);
    const r = await createApi(gw2, { binary: false, token: tokens[2]! }).auth.logoutAll({});
    expect(r.success).toBe(true);
    const closes = await Promise.all(sockets.map((s) => s.closed));
    expect(closes.map((c) => c.code)).toEqual([1008, 1008, 1008]);
    for (const t of [...tokens, unused]) {
      expect(await status(gw1, t)).toBe(401);
      expect(await status(gw2, t)).toBe(401);
    }
    await expect(new RawSocket(gw1, unused).opened).rejects.toThrow(/401/);
    const fresh = await login(gw1, "frank");
    expect(await status(gw2, fresh)).toBe(200);
    const s = new RawSocket(gw2, fresh);
    await s.opened;
    s.close();
  });
});
