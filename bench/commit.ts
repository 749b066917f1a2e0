/**
 * Group-commit micro-benchmark (logic's send path alone, no RPC, no queue): 50 senders × 16
 * unacked chats, one chat per submit, as the load bench's closed loop, for a few seconds.
 * Prints commits/s and the CPU µs per message of this process and of the PostgreSQL backends.
 *
 *   node --import tsx bench/commit.ts postgres|pglite [maxBatch=256] [seconds=4]
 *
 * `maxBatch` 1 is one statement per chat (the path before group commit).
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { clockTicks, readProcStats } from "./proc.js";
import { migrate } from "../src/infra/storage/migrate.js";
import { PgliteStorage } from "../src/infra/storage/pglite.js";
import { PostgresStorage } from "../src/infra/storage/postgres.js";
import type { Storage } from "../src/infra/storage/types.js";
import { createLogger } from "../src/observability/log.js";
import { GroupCommit } from "../src/logic/group-commit.js";
import { migrations } from "../src/logic/migrations.js";
import { LogicStore, SESSION_SINGLE, singleChatId } from "../src/logic/store.js";

const log = createLogger("bench", "commit", "silent");
const [kind = "postgres", batchArg = "256", seconds = "4"] = process.argv.slice(2);
const maxBatch = Number(batchArg);
const DATABASE_URL = process.env.RESONANCE_TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
let db: Storage;
let drop: () => Promise<void>;
if (kind === "postgres") {
  const name = `commit_bench_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  await admin.query(`create database ${name}`);
  const url = new URL(DATABASE_URL);
  url.pathname = `/${name}`;
  db = new PostgresStorage({ databaseUrl: url.toString(), applicationName: "commit-bench", log, poolSize: 4 });
  drop = async () => {
    await admin.query(`drop database ${name} with (force)`);
    await admin.end();
  };
} else {
  const dir = await mkdtemp(join(tmpdir(), "commit-bench-"));
  db = new PgliteStorage({ dir, log });
  drop = () => rm(dir, { recursive: true, force: true });
}
await db.start();
await migrate(db, migrations, log);
const store = new LogicStore(db);
const sessions: string[] = [];
for (let i = 0; i < 50; i++) {
  await store.createUser(`s${i}`, "s", "x");
  await store.createUser(`r${i}`, "r", "x");
  sessions.push((await store.createSession(singleChatId(`s${i}`, `r${i}`), "", SESSION_SINGLE, `s${i}`, [`r${i}`], "hi")).sessionId);
}
const commits = new GroupCommit(store, { maxBatch, maxInFlight: kind === "pglite" ? 1 : 2, maxQueued: 100_000, claimMs: 5_000, owner: "bench" }, () => {}, log);
// 50 senders, 16 unacked each (the load bench's closed loop), one message per call.
let n = 0;
let stop = false;
const backends = async (): Promise<number> => {
  if (kind !== "postgres") return 0;
  const { rows } = await db.query<{ pid: number }>("select pid from pg_stat_activity where application_name = 'commit-bench'");
  return readProcStats(rows.map((r) => r.pid)).reduce((t, s) => t + s.utime + s.stime, 0);
};
// Fill the pool first, so its backends are there to be measured.
await Promise.all(Array.from({ length: 4 }, () => db.query("select pg_sleep(0.05)")));
const pg0 = await backends();
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await Promise.all(
  Array.from({ length: 50 * 16 }, async (_, w) => {
    const s = w % 50;
    while (!stop) {
      await commits.submit([{ sessionId: sessions[s]!, from: `s${s}`, to: "", content: "0123456789abcdef", type: "text", clientMsgId: `${w}-${n}` }]);
      n++;
    }
  }).concat([new Promise<void>((r) => setTimeout(() => { stop = true; r(); }, Number(seconds) * 1000))]),
);
const ms = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const pgUs = ((await backends()) - pg0) * (1e6 / clockTicks());
console.log(JSON.stringify({ kind, maxBatch, committed: n, perSec: Math.round((n / ms) * 1000), nodeCpuUsPerMsg: Math.round((cpu.user + cpu.system) / n), pgBackendCpuUsPerMsg: Math.round(pgUs / n) }));
await db.close();
await drop();
