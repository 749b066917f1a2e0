import { randomBytes } from "node:crypto";
import http from "node:http";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SignJWT, decodeJwt } from "jose";
import { afterAll, beforeAll, expect, it } from "vitest";
import { PushService } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { AuthService as LogicAuthService } from "../src/gen/resonance/logic/v1/logic_pb.js";
import { createApi } from "../src/client/api.js";
import { TestCluster } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";
import { describeWith, requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

const baseUrl = (p: ServiceProcess) => `http://127.0.0.1:${p.env.RESONANCE_HTTP_PORT}`;
const metricsUrl = (p: ServiceProcess, path: string) => `http://127.0.0.1:${p.env.RESONANCE_METRICS_PORT}${path}`;
const INTERNAL_HEADER = "x-resonance-internal";

/** A Connect JSON POST sent from a chosen local address (loopback has all of 127/8). */
function postFrom(localAddress: string, url: string, path: string, body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${url}/${path}`, { method: "POST", localAddress, headers: { "content-type": "application/json", "connect-protocol-version": "1" } }, (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} }));
    });
    req.on("error", reject);
    req.end(JSON.stringify(body));
  });
}

/** A token as logic issues them (HS256, sub, jti, iat, exp, iss), signed with the deployment's secret. */
function mintToken(secret: string, username: string, expiresAt: number): Promise<string> {
  return new SignJWT({})
    .setProtectedHeader({ alg: "HS256" })
    .setJti(randomBytes(12).toString("base64url"))
    .setSubject(username)
    .setIssuedAt(expiresAt - 60)
    .setExpirationTime(expiresAt)
    .setIssuer("resonance")
    .sign(new TextEncoder().encode(secret));
}

describeWith(services, "operations (cluster)", () => {
  let cluster: TestCluster;
  let alice: string;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "cluster", gateways: 1 });
    const api = createApi(cluster.urls[0]!, { binary: true });
    alice = (await api.auth.register({ username: "alice", password: "pw-alice-1" })).accessToken;
    await api.auth.register({ username: "bob", password: "pw-bob-12" });
  });
  afterAll(() => cluster?.destroy());

  it("operations - the logic port refuses internal calls without the shared secret", async () => {
    const call = (secret?: string) =>
      createClient(
        LogicAuthService,
        createGrpcTransport({
          baseUrl: `http://127.0.0.1:${cluster.logics[0]!.env.RESONANCE_LOGIC_PORT}`,
          interceptors: secret ? [(next) => (req) => (req.header.set(INTERNAL_HEADER, secret), next(req))] : [],
        }),
      ).validateToken({ accessToken: "x" });
    await expect(call()).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(call("wrong-secret")).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect((await call(cluster.baseEnv.RESONANCE_INTERNAL_SECRET)).valid).toBe(false);
  });

  it("operations - the gateway's push port refuses pushes without the shared secret; with it, the push is delivered", async () => {
    const gw = cluster.gateways[0]!;
    const socket = new RawSocket(baseUrl(gw), alice);
    await socket.opened;
    const push = (secret?: string) =>
      createClient(
        PushService,
        createGrpcTransport({
          baseUrl: `http://127.0.0.1:${gw.env.RESONANCE_PUSH_PORT}`,
          interceptors: secret ? [(next) => (req) => (req.header.set(INTERNAL_HEADER, secret), next(req))] : [],
        }),
      ).push({ toUsernames: ["alice", "nobody"], message: { msgId: 424242n, seqId: 1n, sessionId: "0", content: "forged?", type: "text", fromUsername: "mallory" } });
    await expect(push()).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(push("wrong-secret-of-the-right-length-wrong-secret-wrong")).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect(socket.packets.some((p) => p.payload.case === "push")).toBe(false);
    expect((await push(cluster.baseEnv.RESONANCE_INTERNAL_SECRET)).failedUsernames).toEqual(["nobody"]);
    const pushed = await socket.next((p) => p.payload.case === "push");
    expect(pushed.payload.value).toMatchObject({ msgId: 424242n });
    socket.ws.terminate();
  });

  it("operations - health, readiness and Prometheus metrics on every service; logs name their service and instance", async () => {
    const task = cluster.tasks.find((p) => p.alive) ?? (await cluster.startProcess("task"));
    for (const p of [cluster.gateways[0]!, cluster.logics[0]!, task]) {
      expect((await fetch(metricsUrl(p, "/healthz"))).status).toBe(200);
      expect((await fetch(metricsUrl(p, "/readyz"))).status).toBe(200);
    }
    const metricsOf = async (p: ServiceProcess) => (await fetch(metricsUrl(p, "/metrics"))).text();
    const gw = await metricsOf(cluster.gateways[0]!);
    for (const m of ["resonance_ws_connections", "resonance_messages_in_total", "resonance_ack_latency_seconds_bucket", "resonance_messages_out_total"]) {
      expect(gw).toContain(m);
    }
    expect(await metricsOf(cluster.logics[0]!)).toContain("resonance_outbox_backlog");
    const taskMetrics = await metricsOf(task);
    expect(taskMetrics).toContain("resonance_consumer_ack_pending");
    expect(taskMetrics).toContain("resonance_consumer_lag");
    const lines = cluster.gateways[0]!.logs();
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.every((l) => l.service === "gateway" && l.instance === cluster.gateways[0]!.env.RESONANCE_INSTANCE_ID)).toBe(true);
  });

  it("operations - chat rate limit per user: the burst is shared by the user's connections, then resource_exhausted acks, then close 4429 after the accepted chats' acks; a reconnect gets no fresh burst; another user is unaffected", async () => {
    const gw = await cluster.startProcess("gateway", { RESONANCE_CHAT_RATE: "1", RESONANCE_CHAT_BURST: "5" });
    const bob = (await createApi(baseUrl(gw)).auth.login({ username: "bob", password: "pw-bob-12" })).accessToken;
    const flooder = new RawSocket(baseUrl(gw), alice);
    const sibling = new RawSocket(baseUrl(gw), alice);
    const calm = new RawSocket(baseUrl(gw), bob);
    await Promise.all([flooder.opened, sibling.opened, calm.opened]);
    const chat = (s: RawSocket, seq: string) => s.send({ seq, payload: { case: "chat", value: { sessionId: "0", content: seq } } });
    // Two chats on the sibling and three on the flooder use up alice's burst of five.
    chat(sibling, "s-0");
    chat(sibling, "s-1");
    for (let i = 0; i < 3; i++) chat(flooder, `f-${i}`);
    await Promise.all([sibling.ackFor("s-0"), sibling.ackFor("s-1"), ...[0, 1, 2].map((i) => flooder.ackFor(`f-${i}`))]);
    chat(sibling, "s-2");
    expect((await sibling.ackFor("s-2")).errorCode).toBe("resource_exhausted");
    // A flood: refusals, then a 4429 close once a burst's worth more was refused.
    for (let i = 3; i < 30; i++) chat(flooder, `f-${i}`);
    const closed = await Promise.race([flooder.closed, new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the flooding socket was not closed")), 15_000))]);
    expect(closed).toMatchObject({ code: 4429, reason: "rate limited" });
    const acks = flooder.packets.flatMap((p) => (p.payload.case === "ack" ? [p.payload.value] : []));
    const ok = acks.filter((a) => a.error === "").length;
    const limited = acks.filter((a) => a.errorCode === "resource_exhausted").length;
    expect(ok).toBeGreaterThanOrEqual(3);
    expect(ok).toBeLessThanOrEqual(5); // three of the burst, and at most what the time refilled
    expect(limited).toBeGreaterThanOrEqual(5);
    expect(ok + limited).toBe(acks.length);
    expect(acks.length).toBeLessThan(30); // the chats after the decision were dropped unanswered
    // A reconnect of alice finds her bucket still empty.
    const again = new RawSocket(baseUrl(gw), alice);
    await again.opened;
    chat(again, "r-0");
    const first = await Promise.race([again.ackFor("r-0").then((a) => a.errorCode), again.closed.then((c) => `closed ${c.code}`)]);
    expect(["resource_exhausted", "closed 4429"]).toContain(first);
    // Bob is not affected.
    chat(calm, "calm-1");
    expect((await calm.ackFor("calm-1")).error).toBe("");
    for (const s of [sibling, calm, again]) s.close();
    gw.kill("SIGTERM");
    await gw.exited;
  });

  it("operations - connections per user and per address: one more is closed right after its handshake with 4429 and the limit, and counted", async () => {
    const gw = await cluster.startProcess("gateway", { RESONANCE_WS_PER_USER: "3", RESONANCE_WS_PER_ADDRESS: "4" });
    const bob = (await createApi(baseUrl(gw)).auth.login({ username: "bob", password: "pw-bob-12" })).accessToken;
    const mine = [1, 2, 3].map(() => new RawSocket(baseUrl(gw), alice));
    await Promise.all(mine.map((s) => s.opened));
    const fourth = new RawSocket(baseUrl(gw), alice);
    expect(await fourth.closed).toMatchObject({ code: 4429, reason: "too many connections for this user" });
    const bobs = new RawSocket(baseUrl(gw), bob);
    await bobs.opened;
    // The address has its four now (three of alice's, one of bob's).
    const fifth = new RawSocket(baseUrl(gw), bob);
    expect(await fifth.closed).toMatchObject({ code: 4429, reason: "too many connections from this address" });
    // A closed connection gives its slot back.
    mine[0]!.close();
    await mine[0]!.closed;
    const replacement = await eventually(async () => {
      const s = new RawSocket(baseUrl(gw), alice);
      await s.opened;
      s.send({ payload: { case: "pulse", value: {} } });
      const outcome = await Promise.race([s.next((p) => p.payload.case === "pulse").then(() => "served"), s.closed.then(() => "closed")]);
      return outcome === "served" ? s : undefined;
    }, 10_000, "a slot given back");
    const metrics = await (await fetch(metricsUrl(gw, "/metrics"))).text();
    expect(metrics).toMatch(/resonance_ws_limited_total\{limit="connections-per-user"\} [1-9]/);
    expect(metrics).toMatch(/resonance_ws_limited_total\{limit="connections-per-address"\} [1-9]/);
    for (const s of [...mine.slice(1), bobs, replacement]) s.close();
    gw.kill("SIGTERM");
    await gw.exited;
  });

  it("operations - auth rate limit per client address: over the burst Login gets 429 resource_exhausted; another address is unaffected", async () => {
    const gw = await cluster.startProcess("gateway", { RESONANCE_AUTH_RATE: "1", RESONANCE_AUTH_BURST: "3" });
    const login = (from: string) => postFrom(from, baseUrl(gw), "resonance.gateway.v1.AuthService/Login", { username: "alice", password: "pw-alice-1" });
    const answers = [];
    for (let i = 0; i < 5; i++) answers.push(await login("127.0.0.1"));
    expect(answers.slice(0, 3).map((a) => a.status)).toEqual([200, 200, 200]);
    expect(answers.slice(3).some((a) => a.status === 429 && a.body.code === "resource_exhausted")).toBe(true);
    expect(answers.every((a) => a.status === 200 || a.status === 429)).toBe(true);
    expect((await login("127.0.0.2")).status).toBe(200);
    // Register is limited the same way.
    const register = await postFrom("127.0.0.1", baseUrl(gw), "resonance.gateway.v1.AuthService/Register", { username: "zoe", password: "pw-zoe-123" });
    expect(register.status).toBe(429);
    gw.kill("SIGTERM");
    await gw.exited;
  });

  it("operations - token expiry on HTTP and WebSocket: refused once expired (401), a socket is closed 1008 at expiry, even with the gateway's validation cached", async () => {
    const url = cluster.urls[0]!;
    const secret = cluster.baseEnv.RESONANCE_TOKEN_SECRET!;
    // The tokens logic issues carry the configured lifetime (the default, 7 days, here).
    const issued = decodeJwt((await createApi(url, { binary: true }).auth.login({ username: "alice", password: "pw-alice-1" })).accessToken);
    expect(issued.exp! - issued.iat!).toBe(7 * 24 * 3600);
    const list = (token: string) => postJson(url, "resonance.gateway.v1.SessionService/GetSessionList", {}, token);

    const expired = await mintToken(secret, "alice", Math.floor(Date.now() / 1000) - 5);
    expect((await list(expired)).status).toBe(401);
    await expect(new RawSocket(url, expired).opened).rejects.toThrow(/401/);

    const expiresAt = Math.floor(Date.now() / 1000) + 3;
    const soon = await mintToken(secret, "alice", expiresAt);
    expect((await list(soon)).status).toBe(200); // now validated and cached by the gateway
    const socket = new RawSocket(url, soon);
    await socket.opened;
    const refusedAt = await eventually(async () => ((await list(soon)).status === 401 ? Date.now() : 0), 15_000, "the expired token to be refused");
    expect(refusedAt).toBeGreaterThanOrEqual(expiresAt * 1000);
    const closed = await socket.closed;
    expect(closed).toMatchObject({ code: 1008, reason: "token expired" });
  });
});

describeWith(services, "operations (cluster start order and settings)", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    // No logic and no gateway yet: the tests decide the order.
    cluster = await TestCluster.start({ mode: "cluster", gateways: 0, logics: 0, tasks: 1 });
  });
  afterAll(() => cluster?.destroy());

  it("operations - a gateway started before any logic answers a retryable 503 meanwhile and serves as soon as logic starts", async () => {
    for (const l of cluster.logics.filter((p) => p.alive)) {
      l.kill("SIGTERM");
      await l.exited;
    }
    const gw = await cluster.startProcess("gateway");
    const name = `early${cluster.logics.length}`;
    const register = () => postJson(baseUrl(gw), "resonance.gateway.v1.AuthService/Register", { username: name, password: "pw-early-1" });
    const before = await register();
    expect(before.status).toBe(503);
    expect(before.body.code).toBe("unavailable");
    await cluster.startProcess("logic");
    const ok = await eventually(async () => {
      const r = await register();
      return r.status === 200 && r;
    }, 20_000, "the gateway to find logic");
    const token = ok.body.accessToken as string;
    expect((await fetch(metricsUrl(gw, "/readyz"))).status).toBe(200);
    // The whole path works through it: chat, ack, push back to another socket.
    const [a, b] = [new RawSocket(baseUrl(gw), token), new RawSocket(baseUrl(gw), token)];
    await Promise.all([a.opened, b.opened]);
    a.send({ seq: "early-1", payload: { case: "chat", value: { sessionId: "0", content: "first words" } } });
    const ack = await a.ackFor("early-1");
    expect(ack.error).toBe("");
    await b.next((p) => p.payload.case === "push" && p.payload.value.msgId === ack.msgId);
    a.close();
    b.close();
  });

  it("operations - a gateway with a mismatched internal secret is not ready, says why once, and its clients get a clear error", async () => {
    if (!cluster.logics.some((p) => p.alive)) await cluster.startProcess("logic");
    // A user that exists (registered through a good gateway), so only the secret can make the Login fail.
    const good = cluster.gateways.find((p) => p.alive && p.env.RESONANCE_INTERNAL_SECRET === cluster.baseEnv.RESONANCE_INTERNAL_SECRET) ?? (await cluster.startProcess("gateway"));
    await eventually(async () => [200, 409].includes((await postJson(baseUrl(good), "resonance.gateway.v1.AuthService/Register", { username: "someone", password: "pw-someone-1" })).status), 20_000, "a registered user");
    const wrong = randomBytes(24).toString("hex");
    const gw = await cluster.startProcess("gateway", { RESONANCE_INTERNAL_SECRET: wrong });
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push(await postJson(baseUrl(gw), "resonance.gateway.v1.AuthService/Login", { username: "someone", password: "pw-someone-1" }));
    for (const a of answers) {
      expect(a.status).not.toBe(200);
      expect(a.status).not.toBe(500);
      expect(["internal", "unknown", undefined]).not.toContain(a.body.code);
    }
    await eventually(async () => (await fetch(metricsUrl(gw, "/readyz"))).status === 503, 15_000, "the gateway to report not ready");
    const why = gw.logs().filter((l) => Number(l.level) >= 40 && /secret/i.test(JSON.stringify(l)));
    expect(why.length, "one warning or error naming the internal secret").toBe(1);
  });
});
