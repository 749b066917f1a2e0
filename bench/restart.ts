/**
 * The rolling-restart scenario of `npm run bench -- --restart gateway,logic,task`: SDK clients
 * (reconnect, resend with the same seq, inbox delta after a reconnect — what a user's app does)
 * send while one process of each named role in turn gets SIGTERM and a replacement on the same
 * ports. It measures what users see across restarts, not throughput: the SDK costs far more CPU
 * per message than the lean client of bench/client.ts.
 */
import { ResonanceClient } from "../src/client/index.js";
import { TestCluster } from "../test/support/cluster.js";
import { BENCH_ENV } from "./deploy.js";
import type { BenchOptions } from "./options.js";
import { Samples, summarize } from "./stats.js";

/** Runs the scenario and resolves with its result object (also printed by the caller). */
export async function runRollingRestart(o: BenchOptions): Promise<Record<string, unknown>> {
  if (o.deploy === "all-pg") throw new Error("--restart: use --deploy standalone or cluster");
  let cluster: TestCluster | undefined;
  let urls: readonly string[];
  if (o.urls) {
    urls = o.urls;
  } else {
    cluster =
      o.deploy === "cluster"
        ? await TestCluster.start({ mode: "cluster", gateways: o.gateways, logics: o.logics, tasks: o.tasks, env: { ...BENCH_ENV } })
        : await TestCluster.start({ mode: "standalone", env: { ...BENCH_ENV } });
    urls = cluster.urls;
  }
  try {
    return await scenario(o, urls, cluster);
  } finally {
    if (cluster) {
      for (const p of cluster.all) p.kill("SIGTERM");
      await Promise.all(cluster.all.map((p) => p.exited));
      await cluster.destroy();
    }
  }
}

async function scenario(o: BenchOptions, urls: readonly string[], cluster: TestCluster | undefined): Promise<Record<string, unknown>> {
  const run = Date.now().toString(36);
  const senders: ResonanceClient[] = [];
  const receivers: ResonanceClient[] = [];
  const sentAt = new Map<string, number>();
  const ackLatency = new Samples();
  const pushLatency = new Samples();
  const ackedIds = new Set<bigint>();
  const deliveredIds = new Set<bigint>();
  let acked = 0;
  let delivered = 0;
  let nonRetryable = 0;
  try {
    for (let i = 0; i < o.pairs; i++) {
      // Spread users over the gateways; each client reconnects to any of them.
      const order = (k: number) => [...urls.slice(k % urls.length), ...urls.slice(0, k % urls.length)];
      const s = new ResonanceClient({ urls: order(i), username: `s${run}${i}`, password: "bench-pass", register: true, backlog: "skip", binary: true });
      const r = new ResonanceClient({ urls: order(i + 1), username: `r${run}${i}`, password: "bench-pass", register: true, backlog: "skip", binary: true });
      senders.push(s);
      receivers.push(r);
      await Promise.all([s.start(), r.start()]);
      r.onMessage((m) => {
        if (m.type !== "text") return;
        const t0 = sentAt.get(m.content);
        if (t0 !== undefined) pushLatency.push(performance.now() - t0);
        delivered++;
        deliveredIds.add(m.msgId);
      });
    }
    const sessions = await Promise.all(
      senders.map(async (s, i) => (await s.api.session.createSession({ members: [`r${run}${i}`], type: 1 })).sessionId),
    );
    process.stdout.write(`rolling restart: ${o.pairs} pairs on ${urls.length} gateway(s); running ${o.seconds} s\n`);

    const started = performance.now();
    const end = started + o.seconds * 1000;
    const restarts: Array<{ role: string; sigtermToExitMs: number; exitCode: number | null }> = [];
    const restarting = (async () => {
      if (!cluster || o.restart.length === 0) return;
      const gap = (o.seconds * 1000) / (o.restart.length + 1);
      for (const role of o.restart) {
        await new Promise((r) => setTimeout(r, gap));
        const list = cluster.mode === "standalone" ? cluster.gateways : role === "gateway" ? cluster.gateways : role === "logic" ? cluster.logics : cluster.tasks;
        const victim = list.find((p) => p.proc.exitCode === null && p.proc.signalCode === null);
        if (!victim) continue;
        const t0 = performance.now();
        victim.kill("SIGTERM");
        const exit = await victim.exited;
        restarts.push({ role: victim.role, sigtermToExitMs: Math.round(performance.now() - t0), exitCode: exit.code });
        // The replacement takes the same ports, as a restarted pod would.
        await cluster.startProcess(victim.role as "gateway" | "logic" | "task" | "all", {
          RESONANCE_HTTP_PORT: victim.env.RESONANCE_HTTP_PORT!,
          RESONANCE_PUSH_PORT: victim.env.RESONANCE_PUSH_PORT!,
          RESONANCE_LOGIC_PORT: victim.env.RESONANCE_LOGIC_PORT!,
        });
      }
    })();

    // --rate is the total offered rate here too, spread over the senders.
    const perSender = o.rate > 0 ? o.rate / o.pairs : 0;
    let n = 0;
    await Promise.all(
      senders.map(async (s, i) => {
        const sessionId = sessions[i]!;
        const interval = perSender > 0 ? 1000 / perSender : 0;
        let next = performance.now();
        const inflight = new Set<Promise<void>>();
        while (performance.now() < end) {
          if (interval > 0) {
            next += interval;
            const wait = next - performance.now();
            if (wait > 0) await new Promise((r) => setTimeout(r, wait));
          }
          while (inflight.size >= o.window) await Promise.race(inflight);
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
    const drainEnd = Date.now() + o.grace * 1000;
    while (Date.now() < drainEnd && [...ackedIds].some((id) => !deliveredIds.has(id))) await new Promise((r) => setTimeout(r, 100));
    const lost = [...ackedIds].filter((id) => !deliveredIds.has(id)).length;

    const stats = [...senders, ...receivers].map((c) => c.stats());
    const sum = (f: (s: (typeof stats)[number]) => number) => stats.reduce((a, s) => a + f(s), 0);
    const reconnects = new Samples();
    for (const s of stats) for (const d of s.reconnectDelaysMs) reconnects.push(d);
    return {
      scenario: "rolling restart (SDK clients)",
      pairs: o.pairs,
      seconds: Number(elapsed.toFixed(1)),
      acked,
      delivered,
      ackedPerSec: Math.round(acked / elapsed),
      deliveredPerSec: Math.round(delivered / elapsed),
      ackMs: summarize(ackLatency),
      pushMs: summarize(pushLatency),
      lost,
      duplicatesBeforeDedup: sum((s) => s.duplicatesDropped),
      nonRetryableErrors: nonRetryable + sum((s) => s.nonRetryableErrors),
      closes1006: sum((s) => s.closeCodes[1006] ?? 0),
      reconnects: reconnects.length,
      reconnectMs: summarize(reconnects),
      restarts,
    };
  } finally {
    await Promise.all([...senders, ...receivers].map((c) => c.close()));
  }
}
