import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestCluster } from "./support/cluster.js";
import { eventually } from "./support/processes.js";
import { RawSocket } from "./support/raw.js";
import { createApi } from "../src/client/api.js";

describe("standalone", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ mode: "standalone" });
  });
  afterAll(() => cluster?.destroy());

  it("standalone - SIGKILL right after acks loses nothing: after a restart every acked message is in history and in every member's inbox", async () => {
    const url = cluster.urls[0]!;
    const api = createApi(url, { binary: true });
    const tokens: Record<string, string> = {};
    for (const u of ["alice", "bob", "carol"]) tokens[u] = (await api.auth.register({ username: u, password: `pw-${u}-1` })).accessToken;
    const group = (await createApi(url, { binary: true, token: tokens.alice! }).session.createSession({ members: ["bob", "carol"], type: 2, name: "g" }))
      .sessionId;
    const a = new RawSocket(url, tokens.alice!);
    await a.opened;
    const acked: bigint[] = [];
    const sends = Array.from({ length: 40 }, (_, i) => {
      a.send({ seq: `k-${i}`, payload: { case: "chat", value: { sessionId: group, content: `m${i}` } } });
      return a.ackFor(`k-${i}`).then((ack) => {
        expect(ack.error).toBe("");
        acked.push(ack.msgId);
      });
    });
    await Promise.all(sends);
    await cluster.gateways[0]!.stop(); // SIGKILL, no shutdown at all
    a.ws.terminate();

    const again = await cluster.startProcess("all", { RESONANCE_DATA_DIR: cluster.dataDir! });
    const url2 = `http://127.0.0.1:${again.env.RESONANCE_HTTP_PORT}`;
    const history = await createApi(url2, { binary: true, token: tokens.bob! }).session.getHistoryMessages({ sessionId: group, limit: 100n });
    const ids = new Set(history.messages.map((m) => m.msgId));
    for (const id of acked) expect(ids.has(id)).toBe(true);
    for (const u of ["alice", "bob", "carol"]) {
      const s = createApi(url2, { binary: true, token: tokens[u]! }).session;
      await eventually(async () => {
        const d = await s.pullInboxDelta({ cursorId: 0n, limit: 500n });
        const inbox = new Set(d.events.map((e) => e.message!.msgId));
        return acked.every((id) => inbox.has(id));
      }, 20_000, `${u}'s inbox to hold every acked message`);
    }
  });
});
