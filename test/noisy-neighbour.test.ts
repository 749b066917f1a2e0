import { readFile } from "node:fs/promises";
import WebSocket from "ws";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Ack } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { createApi } from "../src/client/api.js";
import { TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket, postJson } from "./support/raw.js";

/**
 * The noisy-neighbour test: against a standalone server with its default limits, one user floods
 * from 20 sockets, 200 sockets that never read sit in a group that gets 8,000-character messages,
 * and oversized CreateSession requests arrive — while a control pair chats. The control pair must
 * get every ack, each a success, and every message it saw acked must be in history exactly once;
 * the flooder gets an ack for every chat that was committed; the slow readers are closed with 1013
 * as soon as their send buffer is full; SIGTERM still exits 0 in time. Bounded: 400 shouts at
 * most, 200 chats per flooding socket; ~30-50 s on a busy 2-core machine.
 */

const SLOW_SOCKETS = 200;
const SLOW_USERS = 13; // 16 connections each at most (RESONANCE_WS_PER_USER's default)
const FLOOD_SOCKETS = 20;
/** The control pair chats (20 a second each way) until the abuse is over, and at least this much. */
const CONTROL_MIN_MESSAGES = 50;
const FLOOD_CHATS = 200; // per flooding socket, 40 a second
/** 8,000 characters of 3 bytes each: the largest message there is (24 KB on the wire). */
const BIG = "€".repeat(8_000);
/** Shouts stop after this many even if some slow reader is still open (it would be a finding). */
const MAX_SHOUTS = 400;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

async function rssMiB(pid: number): Promise<number> {
  try {
    const status = await readFile(`/proc/${pid}/status`, "utf8");
    return Math.round(Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024);
  } catch {
    return 0; // no /proc here: reported as 0
  }
}

describe("noisy neighbour (standalone, default limits)", () => {
  let cluster: TestCluster;
  let url: string;
  const token: Record<string, string> = {};
  const figures: Record<string, unknown> = {};

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "standalone" });
    url = cluster.urls[0]!;
    const anon = createApi(url, { binary: true });
    const names = ["ctl-a", "ctl-b", "noisy", "shouter", ...Array.from({ length: SLOW_USERS }, (_, i) => `slow-${i}`)];
    await Promise.all(names.map(async (n) => (token[n] = (await anon.auth.register({ username: n, password: `pw-${n}-123` })).accessToken)));
  }, 120_000);
  afterAll(async () => {
    console.log("noisy neighbour:", figures);
    await cluster?.destroy();
  });

  it("noisy neighbour - flood, slow readers and oversized requests: the control pair gets every ack and history has each acked message once; SIGTERM exits 0", { timeout: 120_000 }, async () => {
    const started = Date.now();
    const gw = cluster.gateways[0]!;
    const metrics = async () => (await fetch(`http://127.0.0.1:${gw.env.RESONANCE_METRICS_PORT}/metrics`)).text();
    const counter = (text: string, limit: string) => Number(new RegExp(`resonance_ws_limited_total\\{limit="${limit}"\\} (\\d+)`).exec(text)?.[1] ?? 0);
    const session = (user: string) => createApi(url, { binary: true, token: token[user]! }).session;
    const dm = (await session("ctl-a").createSession({ members: ["ctl-b"], type: 1 })).sessionId;
    const noise = (await session("noisy").createSession({ members: [], name: "noise", type: 2 })).sessionId;
    const slowUsers = Array.from({ length: SLOW_USERS }, (_, i) => `slow-${i}`);
    const big = (await session("shouter").createSession({ members: slowUsers, name: "big", type: 2 })).sessionId;
    const rssBefore = await rssMiB(gw.proc.pid!);

    // 200 sockets that stop reading as soon as they are open.
    const slow = await Promise.all(
      Array.from({ length: SLOW_SOCKETS }, async (_, i) => {
        const ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws?token=${token[slowUsers[i % SLOW_USERS]!]}`);
        const closed = new Promise<number>((r) => ws.once("close", (code) => r(code)));
        ws.on("error", () => {}); // a reset shows as close 1006, which the test checks
        await new Promise<void>((resolve, reject) => ws.once("open", resolve).once("error", reject));
        ws.pause();
        return { ws, closed };
      }),
    );
    const ctlA = new RawSocket(url, token["ctl-a"]!);
    const ctlB = new RawSocket(url, token["ctl-b"]!);
    const shouter = new RawSocket(url, token.shouter!);
    // The flooder opens 20 at once: 16 are served, 4 closed at once for the per-user limit.
    const flood = Array.from({ length: FLOOD_SOCKETS }, () => new RawSocket(url, token.noisy!));
    await Promise.all([ctlA.opened, ctlB.opened, shouter.opened, ...flood.map((s) => s.opened)]);
    const served = await Promise.all(
      flood.map(async (s) => {
        s.send({ payload: { case: "pulse", value: {} } });
        return Promise.race([s.next((p) => p.payload.case === "pulse", 30_000).then(() => true), s.closed.then(() => false)]);
      }),
    );
    const refused = flood.filter((_, i) => !served[i]);
    expect(served.filter(Boolean).length).toBe(16);
    for (const s of refused) expect(await s.closed).toMatchObject({ code: 4429, reason: "too many connections for this user" });
    const flooders = flood.filter((_, i) => served[i]);

    // The control pair: 20 chats a second each way, each waiting for its ack.
    const controlAcks: Ack[] = [];
    const latencies: number[] = [];
    let abuseOver = false;
    const control = async (from: RawSocket, tag: string) => {
      for (let i = 0; !abuseOver || i < CONTROL_MIN_MESSAGES; i++) {
        const seq = `${tag}-${i}`;
        const t0 = performance.now();
        from.send({ seq, payload: { case: "chat", value: { sessionId: dm, content: `control ${seq}` } } });
        controlAcks.push(await from.ackFor(seq, 30_000));
        latencies.push(performance.now() - t0);
        await sleep(50);
      }
    };
    const controlDone = Promise.all([control(ctlA, "a"), control(ctlB, "b")]);

    // The flood: 16 sockets at 40 chats a second each (640 a second in all, the user may send 50),
    // FLOOD_CHATS each unless the server closes the socket first. Those it closes (4429) must have
    // had an ack for every chat accepted before; those left open get an answer for every chat.
    let floodSent = 0;
    const floodDone = Promise.all(
      flooders.map(async (s, k) => {
        let open = true;
        void s.closed.then(() => (open = false));
        for (let i = 0; open && i < FLOOD_CHATS; i++) {
          s.send({ seq: `n-${k}-${i}`, payload: { case: "chat", value: { sessionId: noise, content: `noise ${i}` } } });
          floodSent++;
          await sleep(25);
        }
        if (!open) return (await s.closed).code;
        // Refusals are answered at once, accepted chats after their commit: wait for every answer.
        const answered = () => s.packets.filter((p) => p.payload.case === "ack").length;
        await eventually(() => !open || answered() === FLOOD_CHATS, 60_000, "an answer to every flooding chat");
        if (!open) return (await s.closed).code;
        s.close();
        return (await s.closed).code;
      }),
    );

    // Oversized CreateSession requests (7,000 unknown members, ~60 KB) a few at a time.
    const ghosts = Array.from({ length: 7_000 }, (_, i) => `ghost${i}`);
    const oversized = Promise.all(Array.from({ length: 4 }, () => postJson(url, "resonance.gateway.v1.SessionService/CreateSession", { members: ghosts, type: 2 }, token.noisy)));

    // The shouter: 8,000-character messages to the group of slow readers until all of them are closed.
    const shoutStarted = performance.now();
    let shouts = 0;
    let slowClosedAt = 0;
    const shoutErrors: string[] = [];
    const shoutDone = (async () => {
      while (shouts < MAX_SHOUTS) {
        if (counter(await metrics(), "send-buffer") >= SLOW_SOCKETS) {
          // All closed: from now on they read, and find the 1013 behind what their sockets held.
          for (const r of slow) r.ws.resume();
          break;
        }
        // Under the shouter's own rate (50 a second): 10 every 250 ms, each acked.
        const batch = Array.from({ length: 10 }, () => `s-${shouts++}`);
        for (const seq of batch) shouter.send({ seq, payload: { case: "chat", value: { sessionId: big, content: BIG } } });
        for (const seq of batch) {
          const ack = await shouter.ackFor(seq, 30_000);
          if (ack.error) shoutErrors.push(`${ack.errorCode}: ${ack.error}`);
        }
        await sleep(250);
      }
      slowClosedAt = performance.now();
    })();

    // Once most flooders are closed, a reconnect of the flooder brings no fresh burst.
    const reconnect = (async () => {
      await Promise.all(flooders.slice(0, 8).map((s) => s.closed));
      const again = new RawSocket(url, token.noisy!);
      await again.opened;
      again.send({ seq: "again-1", payload: { case: "chat", value: { sessionId: noise, content: "again" } } });
      const first = await Promise.race([again.ackFor("again-1", 60_000).then((a) => a.errorCode), again.closed.then((c) => `closed ${c.code}`)]);
      again.close();
      return first;
    })();

    const abuse = Promise.all([oversized, floodDone, reconnect, shoutDone]);
    const over = () => (abuseOver = true);
    abuse.then(over, over);
    const [[bigAnswers, floodCloses, afterReconnect]] = await Promise.all([abuse, controlDone]);
    const m = await metrics();

    // Oversized requests: a clear, short 4xx each.
    for (const a of bigAnswers) {
      expect(a.status).toBe(400);
      expect(a.body.code).toBe("invalid_argument");
      expect(String(a.body.message).length).toBeLessThan(300);
    }
    // The flooder: most sockets closed 4429 (the last ones alone stay under the user's rate), and
    // every chat committed for it was acked first; the reconnect found no fresh burst.
    expect(floodCloses.filter((c) => c === 4429).length).toBeGreaterThanOrEqual(8);
    expect(floodCloses.every((c) => c === 4429 || c === 1005 || c === 1000)).toBe(true);
    expect(["resource_exhausted", "closed 4429"]).toContain(afterReconnect);
    const floodOk = flooders.flatMap((s) => s.packets.flatMap((p) => (p.payload.case === "ack" && p.payload.value.error === "" ? [p.payload.value.msgId] : [])));
    const noiseHistory = await historyOf(session("noisy"), noise);
    expect(noiseHistory.filter((x) => x.type !== "system").map((x) => x.msgId).sort()).toEqual(floodOk.sort());
    expect(counter(m, "chat-rate")).toBe(floodCloses.filter((c) => c === 4429).length + (afterReconnect === "closed 4429" ? 1 : 0));
    expect(counter(m, "connections-per-user")).toBeGreaterThanOrEqual(4);
    expect(shoutErrors).toEqual([]);
    // Every slow reader was closed for its send buffer; one that reads again finds 1013.
    expect(counter(m, "send-buffer")).toBe(SLOW_SOCKETS);
    const slowCodes = await Promise.all(slow.map((s) => s.closed));
    expect(new Set(slowCodes)).toEqual(new Set([1013]));
    // The control pair: every ack a success, each acked message in history exactly once.
    expect(controlAcks.length).toBeGreaterThanOrEqual(2 * CONTROL_MIN_MESSAGES);
    expect(controlAcks.filter((a) => a.error !== "").map((a) => `${a.errorCode}: ${a.error}`)).toEqual([]);
    const dmHistory = (await historyOf(session("ctl-a"), dm)).filter((x) => x.type !== "system");
    expect(dmHistory.map((x) => x.msgId).sort()).toEqual(controlAcks.map((a) => a.msgId).sort());
    // Nothing was logged at error level.
    expect(gw.logs().filter((l) => Number(l.level) >= 50).map((l) => l.msg)).toEqual([]);

    const rssAfter = await rssMiB(gw.proc.pid!);
    latencies.sort((a, b) => a - b);
    Object.assign(figures, {
      shouts,
      controlChats: controlAcks.length,
      slowReadersClosedAfterMs: Math.round(slowClosedAt - shoutStarted),
      floodAcked: floodOk.length,
      floodSent,
      controlAckMs: { p50: Math.round(percentile(latencies, 50)), p99: Math.round(percentile(latencies, 99)), max: Math.round(latencies.at(-1) ?? 0) },
      rssMiB: { before: rssBefore, after: rssAfter },
    });

    // SIGTERM after all of it: exit 0 with its report, in time.
    for (const s of [ctlA, ctlB, shouter]) s.close();
    const t0 = Date.now();
    gw.kill("SIGTERM");
    const exit = await gw.exited;
    figures.sigtermExitMs = Date.now() - t0;
    expect(exit.code).toBe(0);
    expect((await gw.report(1_000)).exitCode).toBe(0);
    figures.totalMs = Date.now() - started;
  });
});

/** The whole history of a session, oldest first. */
async function historyOf(api: ReturnType<typeof createApi>["session"], sessionId: string) {
  const all = [];
  let before = 0n;
  for (;;) {
    const page = (await api.getHistoryMessages({ sessionId, limit: 100n, beforeSeq: before })).messages;
    if (page.length === 0) break;
    all.unshift(...page);
    before = page[0]!.seqId;
    if (before <= 1n) break;
  }
  return all;
}
