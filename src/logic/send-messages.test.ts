import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChatService } from "../gen/resonance/logic/v1/logic_pb.js";
import { MemoryLimitStore } from "../infra/limits/memory.js";
import { MemoryRouteTable } from "../infra/routes/memory.js";
import { migrate } from "../infra/storage/migrate.js";
import { PgliteStorage } from "../infra/storage/pglite.js";
import { Faults } from "../lifecycle/faults.js";
import { createLogger } from "../observability/log.js";
import { Metrics } from "../observability/metrics.js";
import { Channels } from "../rpc/channels.js";
import { RpcServer } from "../rpc/server.js";
import { KdfQueue, Tokens } from "./auth.js";
import { GroupCommit } from "./group-commit.js";
import { logicRoutes } from "./handlers.js";
import { migrations } from "./migrations.js";
import { LogicStore, SESSION_GROUP } from "./store.js";

const log = createLogger("test", "send-messages", process.env.RESONANCE_TEST_LOG_LEVEL ?? "silent");

/** Holds SendMessages calls at their fault point until released. */
class Gate extends Faults {
  #open: Promise<void> = Promise.resolve();
  #release: () => void = () => {};
  reached: () => void = () => {};

  close(): Promise<void> {
    this.#open = new Promise((resolve) => (this.#release = resolve));
    return new Promise((resolve) => (this.reached = resolve));
  }

  open(): void {
    this.#release();
  }

  override async at(name: string): Promise<void> {
    if (name !== "logic.SendMessages") return;
    const open = this.#open;
    this.reached();
    await open;
  }
}

describe("logic SendMessages - over gRPC, on PGlite", () => {
  let dir: string;
  let db: PgliteStorage;
  let store: LogicStore;
  let server: RpcServer;
  let channels: Channels;
  const gate = new Gate(new Map(), log);
  const metrics = new Metrics();
  let group: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "resonance-send-"));
    db = new PgliteStorage({ dir, log });
    await db.start();
    await migrate(db, migrations, log);
    store = new LogicStore(db);
    for (const u of ["alice", "bob", "carol"]) await store.createUser(u, u, "x");
    group = (await store.createSession(undefined, "g", SESSION_GROUP, "alice", ["bob"], "made")).sessionId;
    const commits = new GroupCommit(store, { maxBatch: 64, maxInFlight: 1, maxQueued: 1_000, claimMs: 5_000, owner: "logic-t" }, () => {}, log);
    server = new RpcServer({
      name: "logic gRPC",
      host: "127.0.0.1",
      port: 0,
      log,
      routes: logicRoutes({
        store,
        tokens: new Tokens("t".repeat(40), 60_000),
        routes: new MemoryRouteTable({ ttlMs: 60_000, log }),
        faults: gate,
        metrics,
        maxContentChars: 100,
        limits: new MemoryLimitStore(),
        kdf: new KdfQueue({ concurrency: 1, maxQueued: 1 }),
        revoked: async () => undefined,
        onCommit: () => {},
        commits,
      }),
    });
    await server.start();
    channels = new Channels({ timeoutMs: 10_000 });
  }, 60_000);
  afterAll(async () => {
    channels?.close();
    await server?.stop(0);
    await db?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const client = () => channels.client(ChatService, `127.0.0.1:${server.port}`);

  it("SendMessages - every item gets its own result, in order; the valid ones commit together", async () => {
    const before = (await metrics.messagesCommitted.get()).values[0]?.value ?? 0;
    const { results } = await client().sendMessages({
      items: [
        { sessionId: group, fromUsername: "alice", content: "one", clientMsgId: "r-1" },
        { sessionId: group, fromUsername: "carol", content: "not mine", clientMsgId: "r-2" },
        { sessionId: group, fromUsername: "bob", content: "", clientMsgId: "r-3" },
        { fromUsername: "carol", toUsername: "bob", content: "a new chat", clientMsgId: "r-4" },
        { sessionId: group, fromUsername: "alice", content: "one", clientMsgId: "r-1" },
        { sessionId: group, fromUsername: "bob", content: "x".repeat(101), clientMsgId: "r-5" },
        { sessionId: group, fromUsername: "bob", content: "two", clientMsgId: "r-6" },
      ],
    });
    expect(results.map((r) => r.errorCode)).toEqual([0, Code.PermissionDenied, Code.InvalidArgument, 0, 0, Code.InvalidArgument, 0]);
    expect(results.map((r) => r.seqId)).toEqual([2n, 0n, 0n, 2n, 2n, 0n, 3n]);
    expect(results[4]!.msgId).toBe(results[0]!.msgId);
    expect(results[2]!.errorMessage).toBe("content is empty");
    // The resend of r-1 inside the batch is not a second message.
    expect(((await metrics.messagesCommitted.get()).values[0]?.value ?? 0) - before).toBe(3);
  });

  it("SendMessage - a single chat goes through the same commit: a resend gets the original ids, a stranger and a session that does not exist the same permission_denied", async () => {
    const first = await client().sendMessage({ sessionId: group, fromUsername: "alice", content: "three", clientMsgId: "s-1" });
    expect(first.seqId).toBe(4n);
    expect(await client().sendMessage({ sessionId: group, fromUsername: "alice", content: "three", clientMsgId: "s-1" })).toMatchObject({ msgId: first.msgId, seqId: 4n });
    const err = await client().sendMessage({ sessionId: group, fromUsername: "carol", content: "hey" }).catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.PermissionDenied });
    const missing = await client().sendMessage({ sessionId: "group:424242", fromUsername: "alice", content: "hey" }).catch((e: unknown) => ConnectError.from(e));
    // The same answer as a stranger's: it must not tell which sessions exist.
    expect(missing).toMatchObject({ code: Code.PermissionDenied, rawMessage: (err as ConnectError).rawMessage });
  });

  it("SendMessages - a draining logic refuses a whole batch with unavailable and commits none of it; the batch in flight finishes", async () => {
    const reached = gate.close();
    const inFlight = client().sendMessages({ items: [{ sessionId: group, fromUsername: "bob", content: "in flight", clientMsgId: "d-1" }] });
    await reached;
    server.drain();
    const refused = await client()
      .sendMessages({ items: [{ sessionId: group, fromUsername: "alice", content: "late", clientMsgId: "d-2" }, { sessionId: group, fromUsername: "bob", content: "late too", clientMsgId: "d-3" }] })
      .catch((e: unknown) => ConnectError.from(e));
    expect(refused).toMatchObject({ code: Code.Unavailable });
    gate.open();
    const { results } = await inFlight;
    expect(results).toMatchObject([{ errorCode: 0, seqId: 5n }]);
    const { rows } = await db.query<{ client_msg_id: string }>("select client_msg_id from messages where client_msg_id like 'd-%' order by 1");
    expect(rows.map((r) => r.client_msg_id)).toEqual(["d-1"]);
    expect(await server.stop(5_000)).toMatchObject({ aborted: 0 });
  });
});
