/**
 * Load and rolling-restart benchmark. Bounded in count and time; talks to loopback only.
 *
 *   npm run bench -- [--deploy standalone|cluster] [--pairs 20] [--seconds 10] [--rate 0]
 *                    [--window 8] [--restart gateway,logic,task] [--urls http://127.0.0.1:8080,...]
 *
 * --deploy starts a fresh deployment with the test harness (cluster: 2 gateways, 2 logic,
 * 2 tasks on the local PostgreSQL/Redis/NATS/etcd); --urls uses a running one instead.
 * Each pair is a sender and a receiver in a single chat. --rate is messages/s per sender
 * (0 = as fast as the window of unacked messages allows). --restart sends SIGTERM to one
 * process of each named role in turn during the run and starts a replacement.
 */
import { parseArgs } from "node:util";
import { ResonanceClient } from "../src/client/index.js";
import { TestCluster } from "../test/support/cluster.js";

const { values: args } = parseArgs({
  options: {
    deploy: { type: "string", default: "standalone" },
    urls: { type: "string" },
    pairs: { type: "string", default: "20" },
    seconds: { type: "string", default: "10" },
    rate: { type: "string", default: "0" },
    window: { type: "string", default: "8" },
    restart: { type: "string", default: "" },
    help: { type: "boolean", default: false },
  },
});
if (args.help) {
  process.stdout.write("see the comment at the top of bench/load.ts\n");
  process.exit(0);
}

const pairs = Math.min(500, Number(args.pairs));
const seconds = Math.min(300, Number(args.seconds));
const rate = Number(args.rate);
const window = Math.max(1, Number(args.window));
const restartRoles = args.restart ? (args.restart.split(",") as Array<"gateway" | "logic" | "task">) : [];

function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}
const fmt = (n: number) => (Number.isNaN(n) ? "-" : n.toFixed(1));

async function main(): Promise<void> {
  let cluster: TestCluster | undefined;
  let urls: string[];
  if (args.urls) {
    urls = args.urls.split(",");
  } else {
    const mode = args.deploy === "cluster" ? "cluster" : "standalone";
    const env = { RESONANCE_WS_DRAIN_WINDOW: "1s", RESONANCE_CHAT_RATE: "100000", RESONANCE_CHAT_BURST: "100000", RESONANCE_AUTH_RATE: "100000", RESONANCE_AUTH_BURST: "100000" };
    cluster = await TestCluster.start(mode === "cluster" ? { mode, gateways: 2, logics: 2, tasks: 2, env } : { mode, env });
    urls = cluster.urls;
  }
  const run = Date.now().toString(36);
  const senders: ResonanceClient[] = [];
  const receivers: ResonanceClient[] = [];
  const sentAt = new Map<string, number>();
  const ackLatency: number[] = [];
  const pushLatency: number[] = [];
  const ackedIds = new Set<bigint>();
  const deliveredIds = new Set<bigint>();
  let acked = 0;
  let delivered = 0;
  let nonRetryable = 0;

  for (let i = 0; i < pairs; i++) {
    // Spread users over the gateways; each client reconnects to any of them.
    const order = (k: number) => [...urls.slice(k % urls.length), ...urls.slice(0, k % urls.length)];
    const s = new ResonanceClient({ urls: order(i), username: `s${run}${i}`, password: "bench-pass", register: true, backlog: "skip", binary: true });
    const r = new ResonanceClient({ urls: order(i + 1), username: `r${run}${i}`, password: "bench-pass", register: true, backlog: "skip", binary: true });
    await Promise.all([s.start(), r.start()]);
    r.onMessage((m) => {
      if (m.type !== "text") return;
      const t0 = sentAt.get(m.content);
      if (t0 !== undefined) pushLatency.push(performance.now() - t0);
      delivered++;
      deliveredIds.add(m.msgId);
    });
    senders.push(s);
    receivers.push(r);
  }
  const sessions = await Promise.all(
    senders.map(async (s, i) => (await s.api.session.createSession({ members: [`r${run}${i}`], type: 1 })).sessionId),
  );
  process.stdout.write(`clients ready: ${pairs} pairs on ${urls.length} gateway(s); running ${seconds} s\n`);

  const started = performance.now();
  const end = started + seconds * 1000;
  const restarts: Array<{ role: string; sigtermToExitMs: number; exitCode: number | null }> = [];
  const restarting = (async () => {
    if (!cluster || restartRoles.length === 0) return;
    const gap = (seconds * 1000) / (restartRoles.length + 1);
    for (const role of restartRoles) {
      await new Promise((r) => setTimeout(r, gap));
      const list = role === "gateway" ? cluster.gateways : role === "logic" ? cluster.logics : cluster.tasks;
      const victim = list.find((p) => p.proc.exitCode === null && p.proc.signalCode === null);
      if (!victim) continue;
      const t0 = performance.now();
      victim.kill("SIGTERM");
      const exit = await victim.exited;
      restarts.push({ role, sigtermToExitMs: Math.round(performance.now() - t0), exitCode: exit.code });
      // The replacement takes the same ports, as a restarted pod would.
      const replacement = await cluster.startProcess(role, {
        RESONANCE_HTTP_PORT: victim.env.RESONANCE_HTTP_PORT!,
        RESONANCE_PUSH_PORT: victim.env.RESONANCE_PUSH_PORT!,
        RESONANCE_LOGIC_PORT: victim.env.RESONANCE_LOGIC_PORT!,
      });
      void replacement;
    }
  })();

  let n = 0;
  await Promise.all(
    senders.map(async (s, i) => {
      const sessionId = sessions[i]!;
      const interval = rate > 0 ? 1000 / rate : 0;
      let next = performance.now();
      const inflight = new Set<Promise<void>>();
      while (performance.now() < end) {
        if (interval > 0) {
          next += interval;
          const wait = next - performance.now();
          if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        }
        while (inflight.size >= window) await Promise.race(inflight);
        const content = `b${i}-${n++}`;
        const t0 = performance.now();
        sentAt.set(content, t0);
        const p = s
          .send({ sessionId, content })
          .then(
            (ack) => {
              ackLatency.push(performance.now() - t0);
              acked++;
              ackedIds.add(ack.msgId);
            },
            () => void nonRetryable++,
          )
          .finally(() => inflight.delete(p));
        inflight.add(p);
      }
      await Promise.all(inflight);
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  await restarting;
  // Let the last deliveries land (bounded), then count what never arrived.
  const drainEnd = Date.now() + 20_000;
  while (Date.now() < drainEnd && [...ackedIds].some((id) => !deliveredIds.has(id))) await new Promise((r) => setTimeout(r, 100));
  const lost = [...ackedIds].filter((id) => !deliveredIds.has(id)).length;

  const stats = [...senders, ...receivers].map((c) => c.stats());
  const sum = (f: (s: (typeof stats)[number]) => number) => stats.reduce((a, s) => a + f(s), 0);
  const reconnects = stats.flatMap((s) => s.reconnectDelaysMs);
  const out = {
    pairs,
    seconds: Number(elapsed.toFixed(1)),
    acked,
    delivered,
    ackedPerSec: Math.round(acked / elapsed),
    deliveredPerSec: Math.round(delivered / elapsed),
    ackMs: { p50: fmt(pct(ackLatency, 50)), p99: fmt(pct(ackLatency, 99)) },
    pushMs: { p50: fmt(pct(pushLatency, 50)), p99: fmt(pct(pushLatency, 99)) },
    lost,
    duplicatesBeforeDedup: sum((s) => s.duplicatesDropped),
    nonRetryableErrors: nonRetryable + sum((s) => s.nonRetryableErrors),
    closes1006: sum((s) => s.closeCodes[1006] ?? 0),
    reconnects: reconnects.length,
    reconnectMs: { p50: fmt(pct(reconnects, 50)), p99: fmt(pct(reconnects, 99)) },
    restarts,
  };
  process.stdout.write(JSON.stringify(out, null, 2) + "\n");
  await Promise.all([...senders, ...receivers].map((c) => c.close()));
  if (cluster) {
    for (const p of cluster.all) p.kill("SIGTERM");
    await Promise.all(cluster.all.map((p) => p.exited));
    await cluster.destroy();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
