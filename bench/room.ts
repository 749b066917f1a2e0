/**
 * `npm run bench:room`: the large-session benchmark (issue 11). Starts a fresh deployment on
 * PostgreSQL (cluster: 2 gateways, 1 logic, 1 task, private nats/redis/etcd; or all-pg), puts
 * `--members` users into the room "0" in bulk (SQL), connects `--online` of them spread over the
 * gateways (raw WebSockets, tokens signed with the deployment's secret: no password hashing),
 * and posts to the room at `--rate` per second from one more user for `--seconds` (after
 * `--warmup`). Reports send→ack and send→push p50/p99 (push latency sampled on every 10th
 * connection), pushes delivered against expected, the CPU µs per post of every process (/proc),
 * the room's inbox rows (0 expected), and the time an offline member's SDK takes to catch up
 * `--missed` room messages on connect. Bounded in count and time; loopback only.
 */
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import pg from "pg";
import WebSocket from "ws";
import { createApi } from "../src/client/api.js";
import { ResonanceClient } from "../src/client/client.js";
import { WsPacketSchema } from "../src/gen/resonance/gateway/v1/gateway_pb.js";
import { Tokens } from "../src/logic/auth.js";
import { startDeployment, type CpuGroup } from "./deploy.js";
import { parseOptions } from "./options.js";
import { clockTicks, CpuAccount, microsPerMessage, readProcStats, uptimeTicks } from "./proc.js";
import { Samples, summarize } from "./stats.js";

const { values: a } = parseArgs({
  options: {
    deploy: { type: "string", default: "cluster" },
    members: { type: "string", default: "100000" },
    online: { type: "string", default: "1000" },
    rate: { type: "string", default: "100" },
    seconds: { type: "string", default: "10" },
    warmup: { type: "string", default: "2" },
    missed: { type: "string", default: "1000" },
  },
});
const deploy = a.deploy === "all-pg" ? "all-pg" : "cluster";
const MEMBERS = Number(a.members);
const ONLINE = Math.min(Number(a.online), MEMBERS);
const RATE = Number(a.rate);
const SECONDS = Number(a.seconds);
const WARMUP = Number(a.warmup);
const MISSED = Number(a.missed);
/** Push latency is decoded on every SAMPLE_EVERY-th connection; the others only count frames. */
const SAMPLE_EVERY = 10;

const member = (i: number) => `m${i}`;
const now = () => performance.now();

async function main(): Promise<void> {
  const o = parseOptions(["--deploy", deploy, "--gateways", "2", "--logics", "1", "--tasks", "1", "--no-ceiling"]);
  const deployment = await startDeployment(o);
  const db = new pg.Client({ connectionString: deployment.services[0]!.env.RESONANCE_DATABASE_URL });
  const sockets: WebSocket[] = [];
  try {
    await db.connect();
    const env = deployment.services[0]!.env;
    const tokens = new Tokens(env.RESONANCE_TOKEN_SECRET!, 3_600_000);
    const urls = deployment.urls;
    const poster = (await createApi(urls[0]!, { binary: true }).auth.register({ username: "poster", password: "pw-poster-1" })).accessToken;

    let t = now();
    await db.query(
      `insert into users (username, nickname, password_hash) select 'm' || g, '', 'x' from generate_series(1, $1::int) g;
       insert into session_members (session_id, username) select '0', 'm' || g from generate_series(1, $1::int) g;`.replace(/\$1::int/g, String(MEMBERS)),
    );
    await db.query("update sessions set member_count = (select count(*) from session_members where session_id = '0') where id = '0'");
    const bulkMs = now() - t;

    // Online members, round-robin over the gateways.
    t = now();
    const received = new Array<number>(ONLINE).fill(0);
    const pushLatency = new Samples();
    /** Sampled pushes: the post's client seq and when it arrived (for ack→push). */
    const pushedAt: Array<[string, number]> = [];
    let measuring = false;
    const connectOne = async (i: number): Promise<void> => {
      const token = await tokens.issue(member(i + 1));
      const ws = new WebSocket(`${urls[i % urls.length]!.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(token)}`);
      sockets.push(ws);
      const sampled = i % SAMPLE_EVERY === 0;
      ws.on("message", (data: Buffer) => {
        if (!measuring) return;
        received[i]!++;
        if (!sampled) return;
        const p = fromBinary(WsPacketSchema, data);
        if (p.payload.case !== "push") return;
        const [at, seq] = p.payload.value.content.split(" ");
        pushLatency.push(now() - Number(at));
        pushedAt.push([seq!, now()]);
      });
      await new Promise<void>((resolve, reject) => {
        ws.once("open", () => resolve());
        ws.once("error", reject);
        ws.once("unexpected-response", (_q, r) => reject(new Error(`upgrade refused: ${r.statusCode}`)));
      });
    };
    for (let i = 0; i < ONLINE; i += 50) await Promise.all(Array.from({ length: Math.min(50, ONLINE - i) }, (_, k) => connectOne(i + k)));
    const connectMs = now() - t;

    // The poster: one socket, `RATE` posts per second, content = its send time.
    const ws = new WebSocket(`${urls[0]!.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(poster)}`);
    sockets.push(ws);
    await new Promise<void>((resolve, reject) => (ws.once("open", () => resolve()), ws.once("error", reject)));
    const sentAt = new Map<string, number>();
    const ackedAt = new Map<string, number>();
    const ackLatency = new Samples();
    let acked = 0;
    let ackErrors = 0;
    const errorCodes: Record<string, number> = {};
    ws.on("message", (data: Buffer) => {
      const p = fromBinary(WsPacketSchema, data);
      if (p.payload.case !== "ack") return;
      const s = sentAt.get(p.payload.value.refSeq);
      if (s === undefined) return;
      sentAt.delete(p.payload.value.refSeq);
      ackedAt.set(p.payload.value.refSeq, now());
      if (p.payload.value.error) {
        ackErrors++;
        const code = p.payload.value.errorCode || "unknown";
        errorCodes[code] = (errorCodes[code] ?? 0) + 1;
      }
      else if (measuring) {
        acked++;
        ackLatency.push(now() - s);
      }
    });
    let n = 0;
    let measuredPosts = 0;
    const send = (): void => {
      const seq = `p${n++}`;
      const at = now();
      sentAt.set(seq, at);
      if (measuring) measuredPosts++;
      const frame = create(WsPacketSchema, { seq, payload: { case: "chat", value: { sessionId: "0", content: `${at} ${seq}` } } });
      ws.send(toBinary(WsPacketSchema, frame));
    };
    const started = now();
    const ticker = setInterval(() => {
      const due = Math.floor(((now() - started) / 1000) * RATE);
      while (n < due) send();
    }, 5);

    await new Promise((r) => setTimeout(r, WARMUP * 1000));
    const groups: CpuGroup[] = deployment.cpuGroups.filter((g) => g.kind !== "shared");
    groups.push({ name: "bench client (poster + online sockets)", kind: "client", pids: async () => [process.pid] });
    const up = uptimeTicks();
    const accounts = groups.map(() => new CpuAccount(up));
    const sample = async (kind: "start" | "middle" | "end") => {
      const pids = await Promise.all(groups.map((g) => g.pids()));
      pids.forEach((list, i) => accounts[i]!.sample(readProcStats(list), kind));
    };
    await sample("start");
    measuring = true;
    const middle = setInterval(() => void sample("middle").catch(() => {}), 1_000);
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    measuring = false;
    clearInterval(ticker);
    clearInterval(middle);
    await sample("end");
    const hz = clockTicks();
    const cpu = groups.map((g, i) => {
      const use = accounts[i]!.result(hz);
      return { process: g.name, cpuMs: Math.round(use.cpuMs), usPerPost: microsPerMessage(use.cpuMs, measuredPosts) };
    });
    const delivered = received.reduce((x, y) => x + y, 0);
    // Every post acked (bounded) before the catch-up, so no load is left running during it.
    const drainUntil = now() + 60_000;
    while (sentAt.size > 0 && now() < drainUntil) await new Promise((r) => setTimeout(r, 50));
    const ackToPush = new Samples();
    for (const [seq, at] of pushedAt) {
      const ack = ackedAt.get(seq);
      if (ack !== undefined) ackToPush.push(at - ack);
    }
    const inboxRows = Number((await db.query("select count(*) as n from inbox where session_id = '0'")).rows[0].n);
    const maxSeq = BigInt((await db.query("select max_seq_id from sessions where id = '0'")).rows[0].max_seq_id);

    // Catch-up: an offline member who missed the last MISSED room messages.
    const late = member(MEMBERS);
    const from = maxSeq > BigInt(MISSED) ? maxSeq - BigInt(MISSED) : 0n;
    await db.query("update session_members set last_read_seq = $1 where session_id = '0' and username = $2", [String(from), late]);
    const client = new ResonanceClient({ urls: [urls[0]!], username: late, token: await tokens.issue(late), binary: true });
    let got = 0;
    client.onMessage((m) => void (m.sessionId === "0" && m.seqId > from && m.seqId <= maxSeq && got++));
    t = now();
    await client.start();
    const catchUpMs = now() - t;
    await client.close();

    const report = {
      deployment: deployment.description,
      members: MEMBERS,
      online: ONLINE,
      gateways: urls.length,
      offeredPostsPerSec: RATE,
      measuredSeconds: SECONDS,
      setup: { bulkInsertMs: Math.round(bulkMs), connectOnlineMs: Math.round(connectMs) },
      posts: { sent: measuredPosts, acked, ackErrors, errorCodes },
      pushes: { delivered, expectedAtMost: measuredPosts * ONLINE },
      sendToAckMs: summarize(ackLatency),
      sendToPushMs: { ...summarize(pushLatency), sampledConnections: Math.ceil(ONLINE / SAMPLE_EVERY) },
      // The ack leaves logic right after the commit: ack→push approximates commit→push (negative when the push came first).
      ackToPushMs: summarize(ackToPush),
      loadAverage1m: loadavg()[0],
      cpuPerPost: cpu,
      roomInboxRows: inboxRows,
      roomMaxSeq: String(maxSeq),
      catchUp: { missed: Number(maxSeq - from), received: got, ms: Math.round(catchUpMs) },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    for (const s of sockets) s.terminate();
    await db.end().catch(() => {});
    await deployment.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
