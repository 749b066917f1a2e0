import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ResonanceClient } from "../src/client/index.js";
import { TestCluster } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);
if (!services.ok) console.warn(`rolling restart test skipped: ${services.reason}`);

describe.skipIf(!services.ok)("rolling restart (cluster)", () => {
  let cluster: TestCluster;
  const clients: ResonanceClient[] = [];

  beforeAll(async () => {
    cluster = await TestCluster.start({
      mode: "cluster",
      gateways: 2,
      logics: 2,
      tasks: 1,
      env: { RESONANCE_WS_DRAIN_WINDOW: "500ms", RESONANCE_SHUTDOWN_TIMEOUT: "15s" },
    });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await cluster?.destroy();
  });

  /** SIGTERM one process, check its clean exit, start its replacement on the same ports. */
  async function restart(p: ServiceProcess): Promise<void> {
    p.kill("SIGTERM");
    const [report, exit] = await Promise.all([p.report(), p.exited]);
    expect(exit.code, `${p.role} exit code\n${p.output()}`).toBe(0);
    expect(report.phases.every((x) => x.outcome === "ok")).toBe(true);
    await cluster.startProcess(p.role as "gateway" | "logic" | "task", {
      RESONANCE_HTTP_PORT: p.env.RESONANCE_HTTP_PORT!,
      RESONANCE_PUSH_PORT: p.env.RESONANCE_PUSH_PORT!,
      RESONANCE_LOGIC_PORT: p.env.RESONANCE_LOGIC_PORT!,
    });
  }

  it("rolling restart - gateway, then logic, then task restarted mid-stream: every acked message reaches every member exactly once, no error, no 1006", async () => {
    const [gw1, gw2] = cluster.urls as [string, string];
    const users = ["u0", "u1", "u2", "u3"];
    for (const [i, u] of users.entries()) {
      // Half start on each gateway; any gateway will do on reconnect.
      const c = new ResonanceClient({ urls: i < 2 ? [gw1, gw2] : [gw2, gw1], username: u, password: `pw-${u}-123`, register: true, binary: true });
      await c.start();
      clients.push(c);
    }
    const sessionId = (await clients[0]!.api.session.createSession({ members: users.slice(1), type: 2, name: "rolling" })).sessionId;
    const received = clients.map(() => new Map<bigint, number>());
    clients.forEach((c, i) =>
      c.onMessage((m) => {
        if (m.sessionId === sessionId && m.type === "text") received[i]!.set(m.msgId, (received[i]!.get(m.msgId) ?? 0) + 1);
      }),
    );

    const acked: bigint[] = [];
    const failures: unknown[] = [];
    let sending = true;
    const deadline = Date.now() + 90_000; // bound the load loop whatever happens
    const senders = clients.map(async (c, i) => {
      for (let n = 0; sending && Date.now() < deadline; n++) {
        try {
          acked.push((await c.send({ sessionId, content: `${c.username}-${n}` })).msgId);
        } catch (err) {
          failures.push(err);
        }
        await new Promise((r) => setTimeout(r, 40 + i * 5));
      }
    });

    const waitForAcks = (n: number) => eventually(() => acked.length >= n, 30_000, `${n} acks`);
    await waitForAcks(20);
    await restart(cluster.gateways[0]!);
    await waitForAcks(acked.length + 20);
    await restart(cluster.logics[0]!);
    await waitForAcks(acked.length + 20);
    await restart(cluster.tasks[0]!);
    await waitForAcks(acked.length + 20);
    sending = false;
    await Promise.all(senders);

    expect(failures).toEqual([]);
    const missing = () => received.map((r) => acked.filter((id) => !r.has(id)).length);
    await eventually(() => missing().every((n) => n === 0), 30_000, "every member to have every acked message").catch((err: Error) => {
      throw new Error(`${err.message}; missing per client: ${missing().join(", ")} of ${acked.length}; stats: ${JSON.stringify(clients.map((c) => c.stats().reconnects))}`);
    });
    for (const r of received) {
      expect([...r.values()].every((count) => count === 1)).toBe(true);
    }
    for (const c of clients) {
      const s = c.stats();
      expect(s.nonRetryableErrors).toBe(0);
      expect(s.closeCodes[1006] ?? 0).toBe(0);
      expect(s.uncleanCloses).toBe(0);
    }
    // The clients on the restarted gateway were moved by Goaway + 1001.
    expect(clients.slice(0, 2).every((c) => (c.stats().closeCodes[1001] ?? 0) >= 1)).toBe(true);
  }, 180_000);
});
