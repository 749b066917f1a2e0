import { Writable } from "node:stream";
import { Code, ConnectError } from "@connectrpc/connect";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionService } from "../gen/resonance/logic/v1/logic_pb.js";
import { Channels } from "./channels.js";
import { LocalServers } from "./in-process.js";
import { RpcServer } from "./server.js";

const SECRET = "s".repeat(40);
const lines: Array<Record<string, unknown>> = [];
const log = pino(
  { level: "info" },
  new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  }),
);

/** A handler failing the way a database or a careless handler does, chosen by the query. */
function failure(query: string): unknown {
  switch (query) {
    case "nul":
      return Object.assign(new Error('invalid byte sequence for encoding "UTF8": 0x00'), { code: "22021" });
    case "slow":
      return Object.assign(new Error("canceling statement due to statement timeout"), { code: "57014" });
    case "long":
      return new ConnectError(`unknown users: ${"x".repeat(100_000)}`, Code.NotFound);
    default:
      return new Error(`boom with a secret detail`);
  }
}

describe("rpc server - errors and the shared secret", () => {
  let server: RpcServer;
  let refused = 0;
  const channels = { good: new Channels({ timeoutMs: 5_000, secret: SECRET }), wrong: new Channels({ timeoutMs: 5_000, secret: "w".repeat(40) }), none: new Channels({ timeoutMs: 5_000 }) };
  let address: string;

  beforeAll(async () => {
    server = new RpcServer({
      name: "test gRPC",
      host: "127.0.0.1",
      port: 0,
      log,
      secret: SECRET,
      onRefused: () => refused++,
      routes: (router) =>
        router.service(SessionService, {
          async searchUser(req) {
            if (req.query === "ok") return { users: [] };
            throw failure(req.query);
          },
        }),
    });
    await server.start();
    address = `127.0.0.1:${server.port}`;
  });
  afterAll(async () => {
    for (const c of Object.values(channels)) c.close();
    await server.stop(0);
  });

  const call = (which: keyof typeof channels, query: string) =>
    channels[which].client(SessionService, address).searchUser({ query }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );

  it("rpc - a database data exception is invalid_argument, a statement timeout deadline_exceeded, anything else a bare internal", async () => {
    expect(await call("good", "ok")).toBeUndefined();
    expect(await call("good", "nul")).toMatchObject({ code: Code.InvalidArgument });
    expect((await call("good", "nul"))!.rawMessage).not.toContain("0x00");
    expect(await call("good", "slow")).toMatchObject({ code: Code.DeadlineExceeded });
    const internal = await call("good", "boom");
    expect(internal).toMatchObject({ code: Code.Internal, rawMessage: "internal error" });
  });

  it("rpc - a huge error message is cut, and the channel keeps serving the calls after it", async () => {
    const [long, ...others] = await Promise.all([call("good", "long"), ...Array.from({ length: 20 }, () => call("good", "ok"))]);
    expect(long!.code).toBe(Code.NotFound);
    expect(long!.rawMessage.length).toBeLessThanOrEqual(513);
    expect(others.every((o) => o === undefined)).toBe(true);
    expect(await call("good", "ok")).toBeUndefined();
  });

  it("rpc - calls without the secret or with a wrong one are unauthenticated, counted and logged loudly (once per burst)", async () => {
    const before = lines.length;
    expect(await call("none", "ok")).toMatchObject({ code: Code.Unauthenticated });
    for (let i = 0; i < 5; i++) expect(await call("wrong", "ok")).toMatchObject({ code: Code.Unauthenticated });
    expect(refused).toBe(6);
    const loud = lines.slice(before).filter((l) => l.level === 50 && String(l.msg).includes("RESONANCE_INTERNAL_SECRET"));
    expect(loud).toHaveLength(1);
    expect(loud[0]).toMatchObject({ secret: "missing" });
    expect(JSON.stringify(lines)).not.toContain(SECRET);
  });
});

describe("rpc server - in process (no port)", () => {
  let handlerAborted = false;
  /** A server whose handler waits until the test lets it answer; `listen` false, as in `all` without etcd. */
  function start(): { server: RpcServer; local: LocalServers; entered: Promise<void>; release: () => void } {
    const local = new LocalServers();
    let release!: () => void;
    let entered!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const inside = new Promise<void>((r) => (entered = r));
    const server = new RpcServer({
      name: "test gRPC",
      host: "127.0.0.1",
      port: 0,
      log,
      secret: SECRET,
      local,
      listen: false,
      routes: (router) =>
        router.service(SessionService, {
          async searchUser(req, ctx) {
            if (req.query === "wait") {
              entered();
              await gate;
            }
            if (req.query === "until-aborted") {
              entered();
              await new Promise((r) => ctx.signal.addEventListener("abort", r));
              handlerAborted = true;
            }
            if (req.query === "boom") throw new Error("boom with a secret detail");
            return { users: [{ username: req.query }] };
          },
        }),
    });
    return { server, local, entered: inside, release };
  }

  it("rpc - no port is opened; calls from the process reach the handlers through the same checks (secret, bounded errors)", async () => {
    const { server, local } = start();
    await server.start();
    expect(server.address).toBe("in-process:test-gRPC");
    const good = new Channels({ timeoutMs: 5_000, secret: SECRET, local });
    const wrong = new Channels({ timeoutMs: 5_000, secret: "w".repeat(40), local });
    try {
      const r = await good.client(SessionService, server.address).searchUser({ query: "bob" });
      expect(r.users.map((u) => u.username)).toEqual(["bob"]);
      await expect(good.client(SessionService, server.address).searchUser({ query: "boom" })).rejects.toMatchObject({ code: Code.Internal, rawMessage: "internal error" });
      await expect(wrong.client(SessionService, server.address).searchUser({ query: "bob" })).rejects.toMatchObject({ code: Code.Unauthenticated });
    } finally {
      good.close();
      wrong.close();
      await server.stop(0);
    }
  });

  it("rpc - in process, a stop refuses new calls (unavailable) and waits for the call in flight, which is counted", async () => {
    const { server, local, entered, release } = start();
    await server.start();
    const ch = new Channels({ timeoutMs: 5_000, secret: SECRET, local });
    try {
      const client = ch.client(SessionService, server.address);
      const inFlight = client.searchUser({ query: "wait" });
      await entered;
      let stopped = false;
      const stop = server.stop(5_000).then((r) => ((stopped = true), r));
      await expect(client.searchUser({ query: "late" })).rejects.toMatchObject({ code: Code.Unavailable });
      expect(stopped).toBe(false);
      release();
      expect((await inFlight).users.map((u) => u.username)).toEqual(["wait"]);
      expect(await stop).toEqual({ completed: 1, aborted: 0 });
      expect(server.state).toBe("closed");
    } finally {
      ch.close();
    }
  });

  it("rpc - in process, a call still running when the grace period ends is answered canceled and counted aborted", async () => {
    const { server, local, entered, release } = start();
    await server.start();
    const ch = new Channels({ timeoutMs: 5_000, secret: SECRET, local });
    try {
      const inFlight = ch.client(SessionService, server.address).searchUser({ query: "wait" });
      await entered;
      expect(await server.stop(0)).toEqual({ completed: 0, aborted: 1 });
      await expect(inFlight).rejects.toMatchObject({ code: Code.Canceled });
    } finally {
      release();
      ch.close();
    }
  });

  it("rpc - in process, a call past its deadline is answered deadline_exceeded and the handler's signal is aborted", async () => {
    const { server, local, entered } = start();
    await server.start();
    const ch = new Channels({ timeoutMs: 5_000, secret: SECRET, local });
    try {
      const call = ch.client(SessionService, server.address).searchUser({ query: "until-aborted" }, { timeoutMs: 50 });
      await entered;
      await expect(call).rejects.toMatchObject({ code: Code.DeadlineExceeded });
      await expect.poll(() => handlerAborted).toBe(true);
    } finally {
      ch.close();
      await server.stop(1_000);
    }
  });
});
