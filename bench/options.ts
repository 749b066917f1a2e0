/**
 * Command-line options of `npm run bench` (bench/load.ts): parsed with node:util parseArgs,
 * checked and bounded with zod. Pure apart from reading the given argv.
 */
import { parseArgs } from "node:util";
import { z } from "zod";

export const USAGE = `Resonance load benchmark (bench/load.ts). Bounded in count and time; loopback only.

usage: npm run bench -- [options]

deployment (started fresh for the run, removed afterwards):
  --deploy standalone   \`resonance all\` on PGlite with the embedded queue (default)
  --deploy all-pg       \`resonance all\` on the local PostgreSQL (a fresh database), embedded queue
  --deploy cluster      gateways + logic + task processes on PostgreSQL, NATS, Redis, etcd
    --gateways N        cluster gateways (default 2)
    --logics N          cluster logic instances (default 1)
    --tasks N           cluster task instances (default 1)
    --servers own|shared  cluster: start private nats-server, redis-server and etcd for the run
                        (default own, so their CPU is this run's alone) or use the machine's
  --urls U1,U2          drive a running deployment instead (its rate limits apply; CPU is
                        measured for the load client only)

load (each pair is a sender and a receiver in one single chat; users spread over the gateways):
  --pairs N             sender/receiver pairs (default 50)
  --window W            most unacked chats per sender (default 16)
  --rate R              open loop: R msg/s in total, spread evenly over the senders and paced
                        by a timer; a send due while its sender's window is full is counted as
                        "not offered", never queued. 0 (default) = closed loop: each sender
                        keeps W chats unacked
  --seconds S           measured interval (default 10)
  --warmup S            warm-up before it, excluded from every figure (default 3)
  --grace S             after the load, wait for the pushes of acked messages until none
                        has come for S seconds (default 10; 120 s at most in all); those
                        still missing count as lost and are looked up in the database
  --content-bytes B     message length (default 16)
  --no-ceiling          skip the ceiling: by default the same client, with the same settings,
                        first drives a bare \`ws\` relay in its own process, and the product's
                        rate is printed as a ratio to it
  --sigterm-after       overload/shutdown: when the measured interval ends, with the load still
                        on, SIGTERM every service process; report exit codes, time to exit and
                        each process's shutdown report
  --restart ROLES       rolling restart instead (e.g. gateway,logic,task): the SDK client with
                        reconnect and resend, SIGTERM and replace one process of each role in
                        turn; reports reconnects, lost, close codes (cluster or standalone)
  --json FILE           write the whole result object to FILE
  --help

reported: acked/s, delivered/s (pushes received), send→ack and send→push p50/p99/p99.9,
lost (acked, no push within the grace period; then each looked up in the database once the
services stopped: in the receiver's inbox, committed but still queued, or missing), error acks
by code, and
CPU µs per acked message of each process (gateways, logic, task or all, the PostgreSQL backends
of the run's database, nats-server, redis-server, etcd, the load client) from /proc over the
measured interval.

examples:
  npm run bench -- --deploy standalone --seconds 10              closed-loop saturation
  npm run bench -- --deploy all-pg
  npm run bench -- --deploy cluster --gateways 2 --logics 1 --tasks 1
  npm run bench -- --deploy cluster --rate 1000 --window 64      fixed offered rate
  npm run bench -- --pairs 1 --rate 5 --no-ceiling               idle latency, one pair
  npm run bench -- --deploy cluster --rate 3000 --sigterm-after  overload, then SIGTERM
  npm run bench -- --deploy cluster --restart gateway,logic,task

profiling every service of a run (one .cpuprofile per process, open in Chrome DevTools):
  RESONANCE_TEST_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof" npm run bench -- ...
  (the load client itself: BENCH_CLIENT_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof")
`;

const count = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const seconds = (min: number, max: number) => z.coerce.number().min(min).max(max);

const Schema = z.object({
  deploy: z.enum(["standalone", "all-pg", "cluster"]),
  urls: z.string().optional(),
  gateways: count(1, 8),
  logics: count(1, 8),
  tasks: count(1, 8),
  servers: z.enum(["own", "shared"]),
  pairs: count(1, 2000),
  window: count(1, 4096),
  rate: z.coerce.number().min(0).max(1_000_000),
  seconds: seconds(0.5, 300),
  warmup: seconds(0, 120),
  grace: seconds(0, 120),
  "content-bytes": count(10, 60_000),
  ceiling: z.boolean(),
  "sigterm-after": z.boolean(),
  restart: z.string().regex(/^((gateway|logic|task)(,(gateway|logic|task))*)?$/, "a comma-separated list of gateway, logic, task"),
  json: z.string().optional(),
  help: z.boolean(),
});

export interface BenchOptions {
  readonly deploy: "standalone" | "all-pg" | "cluster";
  readonly urls: readonly string[] | undefined;
  readonly gateways: number;
  readonly logics: number;
  readonly tasks: number;
  readonly servers: "own" | "shared";
  readonly pairs: number;
  readonly window: number;
  readonly rate: number;
  readonly seconds: number;
  readonly warmup: number;
  readonly grace: number;
  readonly contentBytes: number;
  readonly ceiling: boolean;
  readonly sigtermAfter: boolean;
  readonly restart: ReadonlyArray<"gateway" | "logic" | "task">;
  readonly json: string | undefined;
  readonly help: boolean;
}

/** Parses argv (without node and script). Throws an Error with a one-line message on bad input. */
export function parseOptions(argv: readonly string[]): BenchOptions {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      allowNegative: true,
      options: {
        deploy: { type: "string", default: "standalone" },
        urls: { type: "string" },
        gateways: { type: "string", default: "2" },
        logics: { type: "string", default: "1" },
        tasks: { type: "string", default: "1" },
        servers: { type: "string", default: "own" },
        pairs: { type: "string", default: "50" },
        window: { type: "string", default: "16" },
        rate: { type: "string", default: "0" },
        seconds: { type: "string", default: "10" },
        warmup: { type: "string", default: "3" },
        grace: { type: "string", default: "10" },
        "content-bytes": { type: "string", default: "16" },
        ceiling: { type: "boolean", default: true },
        "sigterm-after": { type: "boolean", default: false },
        restart: { type: "string", default: "" },
        json: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (err) {
    throw new Error((err as Error).message.split("\n")[0]);
  }
  const parsed = Schema.safeParse(values);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`--${issue.path.join(".")}: ${issue.message}`);
  }
  const o = parsed.data;
  const urls = o.urls ? o.urls.split(",").map((u) => u.trim()).filter(Boolean) : undefined;
  for (const u of urls ?? []) {
    if (!/^https?:\/\/[^/]+/.test(u)) throw new Error(`--urls: "${u}" is not an http(s) URL`);
  }
  if (urls && urls.length === 0) throw new Error("--urls: give at least one gateway URL");
  if (o["sigterm-after"] && urls) throw new Error("--sigterm-after needs a deployment started by the bench (not --urls)");
  return {
    deploy: o.deploy,
    urls,
    gateways: o.gateways,
    logics: o.logics,
    tasks: o.tasks,
    servers: o.servers,
    pairs: o.pairs,
    window: o.window,
    rate: o.rate,
    seconds: o.seconds,
    warmup: o.warmup,
    grace: o.grace,
    contentBytes: o["content-bytes"],
    ceiling: o.ceiling,
    sigtermAfter: o["sigterm-after"],
    restart: o.restart ? (o.restart.split(",") as Array<"gateway" | "logic" | "task">) : [],
    json: o.json,
    help: o.help,
  };
}
