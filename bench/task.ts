/**
 * Task throughput and CPU per event, apart from the rest of the message path. Bounded in count
 * and time; talks to loopback only (the local PostgreSQL, Redis, NATS and etcd).
 *
 *   node --import tsx bench/task.ts [--events 20000] [--pairs 50] [--concurrency 128]
 *
 * Starts a cluster without a task (1 gateway, 1 logic), registers `pairs` senders and
 * receivers with a single chat each, connects all of them (so every event is pushed to two
 * sockets), publishes `events` push events straight to the JetStream stream, then starts one
 * task and times how long it takes to settle them all. CPU is read from /proc: the task process
 * from the moment it starts consuming, its PostgreSQL backends, the gateway that receives the
 * pushes, and — shared with anything else on the machine — nats-server and redis-server.
 * RESONANCE_TEST_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR" profiles the service processes.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { createApi } from "../src/client/api.js";
import { PushEventSchema } from "../src/gen/resonance/mq/v1/mq_pb.js";
import { NATS_URL, TestCluster } from "../test/support/cluster.js";
import { RawSocket } from "../test/support/raw.js";

const { values: args } = parseArgs({
  options: {
    events: { type: "string", default: "20000" },
    pairs: { type: "string", default: "50" },
    concurrency: { type: "string", default: "" },
  },
});
const events = Math.min(200_000, Number(args.events));
const pairs = Math.min(500, Number(args.pairs));
const TICK_US = 1e6 / Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim());

/** CPU time (user + system) of a process so far, in µs; 0 if it is gone. */
function cpuUs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * TICK_US; // utime, stime
  } catch {
    return 0;
  }
}

function pidsOf(name: string): number[] {
  try {
    return execFileSync("pidof", [name]).toString().trim().split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const env = { RESONANCE_AUTH_RATE: "100000", RESONANCE_AUTH_BURST: "100000", RESONANCE_WS_DRAIN_WINDOW: "1s" };
  const cluster = await TestCluster.start({ mode: "cluster", gateways: 1, logics: 1, tasks: 0, env });
  const nc = await connect({ servers: NATS_URL });
  const sockets: RawSocket[] = [];
  try {
    const url = cluster.urls[0]!;
    const api = createApi(url, { binary: true });
    const run = Date.now().toString(36);
    const sessions: string[] = [];
    for (let i = 0; i < pairs; i++) {
      const s = (await api.auth.register({ username: `ts${run}${i}`, password: "bench-pass" })).accessToken;
      const r = (await api.auth.register({ username: `tr${run}${i}`, password: "bench-pass" })).accessToken;
      sessions.push((await createApi(url, { binary: true, token: s }).session.createSession({ members: [`tr${run}${i}`], type: 1 })).sessionId);
      sockets.push(new RawSocket(url, s), new RawSocket(url, r));
    }
    await Promise.all(sockets.map((s) => s.opened));

    const stream = `RESONANCE_PUSH_${cluster.namespace.toUpperCase()}`;
    const subject = `${cluster.namespace}.resonance.push.event.v1`;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const seqs = sessions.map(() => 1n); // seq 1 is each session's system message
    for (let from = 0; from < events; from += 512) {
      await Promise.all(
        Array.from({ length: Math.min(512, events - from) }, (_, k) => {
          const i = from + k;
          const p = i % pairs;
          seqs[p]! += 1n;
          const e = create(PushEventSchema, {
            msgId: 1_000_000_000_000n + BigInt(i),
            seqId: seqs[p]!,
            sessionId: sessions[p]!,
            fromUsername: `ts${run}${p}`,
            toUsername: `tr${run}${p}`,
            content: `bench event ${i} with a body of a typical chat length`,
            type: "text",
            timestamp: BigInt(Date.now()),
          });
          return js.publish(subject, toBinary(PushEventSchema, e), { msgID: `bench-${run}-${i}` });
        }),
      );
    }
    const total = events + pairs; // and the system messages
    for (let t = Date.now(); (await jsm.consumers.info(stream, "resonance-task")).num_pending < total; await sleep(100)) {
      if (Date.now() - t > 60_000) throw new Error("events did not all reach the stream");
    }
    process.stdout.write(`${total} events waiting; starting a task\n`);

    const taskEnv: Record<string, string> = args.concurrency ? { RESONANCE_TASK_CONCURRENCY: args.concurrency } : {};
    const taskProc = new (await import("../test/support/processes.js")).ServiceProcess("task", await cluster.processEnv("task", taskEnv));
    cluster.tasks.push(taskProc);
    await taskProc.waitForLog((l) => l.msg === "consuming", 60_000);
    const t0 = performance.now();
    const gateway = cluster.gateways[0]!.proc.pid!;
    const shared = [...pidsOf("nats-server"), ...pidsOf("redis-server")];
    const before = { task: cpuUs(taskProc.proc.pid!), gateway: cpuUs(gateway), shared: shared.map(cpuUs) };
    let backends: number[] = [];
    let backendsBefore: number[] = [];
    for (;;) {
      const info = await jsm.consumers.info(stream, "resonance-task");
      if (backends.length === 0) {
        const rows = await cluster.sql<{ pid: number }>("select pid from pg_stat_activity where application_name like 'resonance-task%'");
        backends = rows.map((r) => r.pid);
        backendsBefore = backends.map(cpuUs); // read a little late: slightly under-counts
      }
      if (info.num_pending === 0 && info.num_ack_pending === 0) break;
      if (performance.now() - t0 > 300_000) throw new Error("the task did not settle every event in 5 minutes");
      await sleep(20);
    }
    const seconds = (performance.now() - t0) / 1000;
    const per = (us: number) => Math.round(us / total);
    const sharedNow = shared.map(cpuUs);
    const taskNow = cpuUs(taskProc.proc.pid!);
    const gatewayNow = cpuUs(gateway);
    const backendsNow = backends.map(cpuUs);
    // Pushes may still be on their way when the last ack lands: let them arrive (bounded).
    const pushed = () => sockets.reduce((n, s) => n + s.packets.filter((p) => p.payload.case === "push").length, 0);
    for (let t = Date.now(), last = -1; Date.now() - t < 10_000 && pushed() !== last; await sleep(500)) last = pushed();
    const metrics = await (await fetch(`http://127.0.0.1:${taskProc.env.RESONANCE_METRICS_PORT}/metrics`)).text();
    const pushOutcomes = Object.fromEntries([...metrics.matchAll(/resonance_pushes_total\{outcome="([^"]+)"\} (\d+)/g)].map((m) => [m[1], Number(m[2])]));
    const out = {
      events: total,
      seconds: Number(seconds.toFixed(2)),
      eventsPerSec: Math.round(total / seconds),
      pushesReceived: pushed(),
      pushesByTask: pushOutcomes,
      cpuUsPerEvent: {
        task: per(taskNow - before.task),
        taskPostgresBackends: per(backendsNow.reduce((n, v, i) => n + v - backendsBefore[i]!, 0)),
        gateway: per(gatewayNow - before.gateway),
        natsAndRedisShared: per(sharedNow.reduce((n, v, i) => n + v - before.shared[i]!, 0)),
      },
      note: "nats-server and redis-server are shared with anything else running on this machine",
    };
    process.stdout.write(JSON.stringify(out, null, 2) + "\n");
  } finally {
    for (const s of sockets) s.ws.terminate();
    await nc.close();
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
