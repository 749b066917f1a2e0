import { once } from "node:events";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { ClientCore } from "./client-core.js";
import { ResonanceClient } from "./client.js";
import type { CloseInfo } from "./connection.js";
import { ResonanceError } from "./errors.js";
import { FakeBackend, FakeGateway, type ReceivedChat } from "./fake-gateway.js";
import type { ClientPlatform } from "./platform.js";
import { nodePlatform } from "./platform-node.js";
import type { MessageSource, ResonanceClientOptions } from "./types.js";

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  vi.restoreAllMocks();
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function gateways(n: number): Promise<{ backend: FakeBackend; gws: FakeGateway[] }> {
  const backend = new FakeBackend();
  backend.users.set("alice", "pw");
  backend.users.set("bob", "pw");
  const gws: FakeGateway[] = [];
  for (let i = 0; i < n; i++) {
    const g = await FakeGateway.start(backend);
    cleanups.push(() => g.close());
    gws.push(g);
  }
  return { backend, gws };
}

function client(gws: readonly FakeGateway[], opts: Partial<ResonanceClientOptions> = {}): ResonanceClient {
  const c = new ResonanceClient({
    urls: gws.map((g) => g.url),
    username: "alice",
    password: "pw",
    reconnect: { baseMs: 5, maxMs: 20 },
    ...opts,
  });
  cleanups.push(() => c.close());
  return c;
}

/** Resolves with the arguments of the next event delivered to a client hook. */
function next<A extends unknown[]>(hook: (cb: (...args: A) => void) => () => void): Promise<A> {
  return new Promise((resolve) => {
    const off = hook((...args) => {
      off();
      resolve(args);
    });
  });
}

function collect(c: ResonanceClient): Array<{ content: string; source: MessageSource }> {
  const got: Array<{ content: string; source: MessageSource }> = [];
  c.onMessage((m: PushMessage, source) => got.push({ content: m.content, source }));
  return got;
}

describe("client", () => {
  it("client - send resolves with the ack once committed", async () => {
    const { gws } = await gateways(1);
    const c = client(gws);
    await c.start();
    expect(c.connected).toBe(true);
    const ack = await c.send({ sessionId: "0", content: "hi" });
    expect(ack.seqId).toBe(1n);
    expect(ack.msgId).toBeGreaterThan(0n);
    const [chat] = gws[0]!.chats;
    expect(chat?.seq).toMatch(/^[0-9a-f-]{36}$/);
    expect(chat?.chat).toMatchObject({ sessionId: "0", content: "hi", type: "text", fromUsername: "alice" });
    expect(c.stats()).toMatchObject({ acked: 1, nonRetryableErrors: 0, reconnects: 0 });
  });

  it("client - start registers a new user, and rejects a wrong password with its code", async () => {
    const { backend, gws } = await gateways(1);
    const carol = client(gws, { username: "carol", password: "secret", register: true });
    await carol.start();
    expect(carol.registered).toBe(true);
    expect(backend.users.get("carol")).toBe("secret");

    const wrong = client(gws, { password: "nope", register: true });
    const err = await wrong.start().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResonanceError);
    expect((err as ResonanceError).code).toBe("unauthenticated");
    await expect(wrong.send({ sessionId: "0", content: "x" })).rejects.toMatchObject({ code: "cancelled" });
  });

  it("client - a retryable ack error is not surfaced; the same seq is resent after reconnect", async () => {
    const { backend, gws } = await gateways(1);
    const g = gws[0]!;
    const c = client(gws);
    await c.start();
    g.ackErrors.push({ code: "unavailable", error: "server is shutting down" });
    // The error ack is written right after the "chat" event; the close frame follows it.
    g.once("chat", () => process.nextTick(() => g.closeAll(1012, "restart")));
    const ack = await c.send({ sessionId: "0", content: "once" }, "seq-1");
    expect(ack.seqId).toBe(1n);
    expect(g.chats.map((x) => x.seq)).toEqual(["seq-1", "seq-1"]);
    expect(backend.inbox.filter((r) => r.message.content === "once" && r.owner === "alice")).toHaveLength(1);
    expect(c.stats()).toMatchObject({ acked: 1, nonRetryableErrors: 0, reconnects: 1, closeCodes: { 1012: 1 }, cleanCloses: 1 });
  });

  it("client - resource_exhausted is retried with the same seq after a backoff, without reconnecting", async () => {
    const { gws } = await gateways(1);
    const g = gws[0]!;
    const c = client(gws);
    await c.start();
    g.ackErrors.push({ code: "resource_exhausted", error: "slow down" });
    await c.send({ sessionId: "0", content: "later" }, "seq-2");
    expect(g.chats.map((x) => x.seq)).toEqual(["seq-2", "seq-2"]);
    expect(c.stats()).toMatchObject({ acked: 1, reconnects: 0, nonRetryableErrors: 0 });
  });

  it("client - an unacked chat is resent after an abnormal close (1006)", async () => {
    const { gws } = await gateways(1);
    const g = gws[0]!;
    const c = client(gws);
    await c.start();
    g.holdChats = true;
    const sent = c.send({ sessionId: "0", content: "lost?" });
    await once(g, "chat");
    g.holdChats = false;
    g.terminateAll();
    await sent;
    expect(g.chats).toHaveLength(2);
    expect(g.chats[0]!.seq).toBe(g.chats[1]!.seq);
    expect(c.stats()).toMatchObject({ uncleanCloses: 1, closeCodes: { 1006: 1 }, reconnects: 1 });
  });

  it("client - goaway + 1001: reconnects after the hint to another gateway, pulls the delta, dedups", async () => {
    const { backend, gws } = await gateways(2);
    const [g1, g2] = gws as [FakeGateway, FakeGateway];
    const alice = client([g1, g2]);
    const bob = client([g2], { username: "bob" });
    const got = collect(alice);
    await Promise.all([alice.start(), bob.start()]);
    const cursorBefore = alice.cursor;

    const pushed = next(alice.onMessage.bind(alice));
    await bob.send({ sessionId: "0", content: "M1" });
    await pushed; // M1 arrived by push; alice's cursor still points before it.

    vi.spyOn(Math, "random").mockReturnValue(0.999); // Full jitter at its top: wait the whole hint.
    const goaway = next(alice.onGoaway.bind(alice));
    const closed = next<[CloseInfo]>(alice.onClose.bind(alice));
    const reconnected = next(alice.onConnected.bind(alice));
    g1.goawayAll(100);
    backend.commit("bob", { sessionId: "0", content: "N1" }, "n-1"); // alice is leaving g1: inbox only.
    const [[ga], [info]] = await Promise.all([goaway, closed, reconnected]);

    expect(Number(ga.reconnectAfterMs)).toBe(100);
    expect(info).toMatchObject({ code: 1001, wasClean: true });
    expect(got).toEqual([
      { content: "M1", source: "push" },
      { content: "N1", source: "delta" },
    ]);
    const s = alice.stats();
    expect(s).toMatchObject({ goaways: 1, reconnects: 1, closeCodes: { 1001: 1 }, cleanCloses: 1, uncleanCloses: 0, nonRetryableErrors: 0 });
    expect(s.duplicatesDropped).toBeGreaterThanOrEqual(1);
    expect(s.reconnectDelaysMs).toHaveLength(1);
    expect(s.reconnectDelaysMs[0]).toBeGreaterThanOrEqual(95);
    expect(g2.pulls.filter((p) => p.user === "alice").map((p) => p.cursor)).toEqual([cursorBefore]);
    expect(g2.sockets("alice")).toHaveLength(1);
  });

  it("client - a non-retryable ack error rejects with its code and is counted", async () => {
    const { gws } = await gateways(1);
    const g = gws[0]!;
    const c = client(gws);
    await c.start();
    g.ackErrors.push({ code: "permission_denied", error: "not a member" });
    const err = await c.send({ sessionId: "group:9", content: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ResonanceError);
    expect(err).toMatchObject({ code: "permission_denied", message: "not a member" });
    expect(g.chats).toHaveLength(1);
    expect(c.stats()).toMatchObject({ nonRetryableErrors: 1, acked: 0 });
  });

  it("client - 1008 logs in again, then reconnects", async () => {
    const { gws } = await gateways(1);
    const c = client(gws);
    await c.start();
    const before = c.token;
    const reconnected = next(c.onConnected.bind(c));
    gws[0]!.closeAll(1008, "token expired");
    await reconnected;
    expect(c.token).toBeDefined();
    expect(c.token).not.toBe(before);
    expect(c.stats()).toMatchObject({ closeCodes: { 1008: 1 }, reconnects: 1 });
  });

  it("client - 1009 rejects the oversized message, reports an error, and the rest carries on", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { maxFrameBytes: 1024 * 1024 });
    await c.start();
    const error = next<[ResonanceError]>(c.onError.bind(c));
    const reconnected = next(c.onConnected.bind(c));
    const big = c.send({ sessionId: "0", content: "x".repeat(100_000) });
    await expect(big).rejects.toMatchObject({ code: "invalid_argument" });
    const [[e]] = await Promise.all([error, reconnected]);
    expect(e.message).toContain("1009");
    await c.send({ sessionId: "0", content: "small" });
    expect(c.stats()).toMatchObject({ acked: 1, nonRetryableErrors: 1, closeCodes: { 1009: 1 } });
  });

  it("client - a frame over maxFrameBytes is refused locally", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { maxFrameBytes: 100 });
    await c.start();
    await expect(c.send({ sessionId: "0", content: "y".repeat(200) })).rejects.toMatchObject({ code: "invalid_argument" });
    expect(gws[0]!.chats).toHaveLength(0);
  });

  it("client - an upgrade refused with 503 moves on to the next gateway", async () => {
    const { gws } = await gateways(2);
    gws[0]!.refuseUpgrades = 503;
    const c = client(gws);
    await c.start();
    expect(gws[1]!.sockets("alice")).toHaveLength(1);
    expect(c.api.baseUrl).toBe(gws[1]!.url);
  });

  it("client - sends a pulse every pulseIntervalMs", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { pulseIntervalMs: 20 });
    await c.start();
    const [user] = (await once(gws[0]!, "pulse")) as [string];
    expect(user).toBe("alice");
  });

  it("client - 4429 backs off at least half the rate-limited base before reconnecting", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { reconnect: { baseMs: 5, maxMs: 20, rateLimitedMs: 60 } });
    await c.start();
    const reconnected = next(c.onConnected.bind(c));
    gws[0]!.closeAll(4429, "rate limited");
    await reconnected;
    const s = c.stats();
    expect(s.closeCodes).toEqual({ 4429: 1 });
    expect(s.reconnectDelaysMs[0]).toBeGreaterThanOrEqual(29);
  });

  it("client - close() rejects pending sends, closes with 1000, and is idempotent", async () => {
    const { gws } = await gateways(1);
    const g = gws[0]!;
    const c = client(gws);
    await c.start();
    g.holdChats = true;
    const chat = once(g, "chat") as Promise<[ReceivedChat]>;
    const pending = c.send({ sessionId: "0", content: "never acked" });
    await chat;
    const serverClose = once(g, "socket-close");
    const rejected = expect(pending).rejects.toMatchObject({ code: "cancelled" });
    await Promise.all([c.close(), c.close()]);
    await rejected;
    expect((await serverClose)[1]).toBe(1000);
    expect(c.connected).toBe(false);
    expect(c.stats()).toMatchObject({ closeCodes: { 1000: 1 }, nonRetryableErrors: 0 });
  });
  it("client - starts from a token; a 1008 reports auth expired once and closes, cancelling pending sends", async () => {
    const { backend, gws } = await gateways(1);
    const token = backend.issueToken("alice");
    const c = client(gws, { password: undefined, token });
    let expired = 0;
    c.onAuthExpired(() => void expired++);
    await c.start();
    expect(c.token).toBe(token);
    const ack = await c.send({ sessionId: "0", content: "with a token" });
    expect(ack.seqId).toBeGreaterThan(0n);
    gws[0]!.refuseUpgrades = 503; // Nothing may be sent meanwhile: the next send stays pending.
    const closed = next(c.onClose.bind(c));
    gws[0]!.closeAll(1008, "token revoked");
    await closed;
    await expect(c.send({ sessionId: "0", content: "after" })).rejects.toMatchObject({ code: "cancelled" });
    expect(expired).toBe(1);
    expect(c.connected).toBe(false);
  });

  it("client - a refused token at start rejects with unauthenticated and reports auth expired", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { password: undefined, token: "not-a-token" });
    const expired = next(c.onAuthExpired.bind(c));
    await expect(c.start()).rejects.toMatchObject({ code: "unauthenticated" });
    await expired;
  });

  it("client - where the platform hides a refused upgrade's status, a token probe tells 401 from 503", async () => {
    const { backend, gws } = await gateways(1);
    // A browser sees a refused upgrade only as a close 1006: strip the status like it does.
    const blind: ClientPlatform = {
      ...nodePlatform,
      seesUpgradeStatus: false,
      openSocket: (url, timeout, events) => nodePlatform.openSocket(url, timeout, { ...events, end: (e) => events.end({ ...e, upgradeStatus: undefined }) }),
    };
    const token = backend.issueToken("alice");
    const opts = { urls: [gws[0]!.url], username: "alice", token, reconnect: { baseMs: 5, maxMs: 20 } };
    const c = new ClientCore(opts, blind);
    cleanups.push(() => c.close());
    await c.start();
    // 503 upgrades with a valid token: retried, not taken for an expired token.
    gws[0]!.refuseUpgrades = 503;
    const waiting = next(c.onWaiting.bind(c));
    gws[0]!.terminateAll();
    await waiting;
    await next(c.onWaiting.bind(c)); // A second wait: the failed attempt was retryable.
    const reconnected = next(c.onConnected.bind(c));
    gws[0]!.refuseUpgrades = undefined;
    await reconnected;
    // The token revoked while away: the probe's 401 ends the session.
    const expired = next(c.onAuthExpired.bind(c));
    backend.tokens.delete(token);
    gws[0]!.terminateAll();
    await expired;
    expect(c.connected).toBe(false);
  });

  it("client - retryNow ends the wait before the next reconnection attempt", async () => {
    const { gws } = await gateways(1);
    const c = client(gws, { reconnect: { baseMs: 60_000, maxMs: 60_000 } });
    await c.start();
    gws[0]!.refuseUpgrades = 503;
    const [at] = await Promise.all([next(c.onWaiting.bind(c)), Promise.resolve(gws[0]!.terminateAll())]).then(([a]) => a);
    expect(c.nextAttemptAt).toBe(at);
    gws[0]!.refuseUpgrades = undefined;
    const reconnected = next(c.onConnected.bind(c));
    c.retryNow();
    await reconnected;
    expect(c.nextAttemptAt).toBeUndefined();
  });
});
