import { afterAll, beforeAll, expect, it } from "vitest";
import { createApi } from "../src/client/api.js";
import { ResonanceClient } from "../src/client/index.js";
import { auditServer, DeliveryAudit, type AckedMessage } from "./support/audit.js";
import { TestCluster } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { describeWith, requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

describeWith(services, "rolling restart (cluster)", () => {
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
    await cluster.replace(p);
  }

  it("rolling restart - gateway, then logic, then task restarted mid-stream: every acked message reaches every member exactly once, no error, no 1006", async () => {
    const [gw1, gw2] = cluster.urls as [string, string];
    const users = ["u0", "u1", "u2", "u3"];
    const tokens = [];
    for (const u of users) tokens.push((await createApi(gw1, { binary: true }).auth.register({ username: u, password: `pw-${u}-123` })).accessToken);
    // The session exists before the clients start: each one's first delta holds its system message.
    const sessionId = (await createApi(gw1, { binary: true, token: tokens[0]! }).session.createSession({ members: users.slice(1), type: 2, name: "rolling" })).sessionId;
    const audit = new DeliveryAudit(sessionId);
    for (const [i, u] of users.entries()) {
      // Half start on each gateway; any gateway will do on reconnect.
      const c = new ResonanceClient({ urls: i < 2 ? [gw1, gw2] : [gw2, gw1], username: u, password: `pw-${u}-123`, binary: true });
      audit.track(c);
      await c.start();
      clients.push(c);
    }

    const acked: AckedMessage[] = [];
    const failures: unknown[] = [];
    let sending = true;
    const deadline = Date.now() + 360_000; // bound the load loop whatever happens
    const senders = clients.map(async (c, i) => {
      for (let n = 0; sending && Date.now() < deadline; n++) {
        const content = `${c.username}-${n}`;
        try {
          acked.push({ msgId: (await c.send({ sessionId, content })).msgId, content });
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
    await eventually(() => audit.missing(acked).every((n) => n === 0), 30_000, "every member to have every acked message").catch((err: Error) => {
      throw new Error(`${err.message}; missing per client: ${audit.missing(acked).join(", ")} of ${acked.length}`);
    });
    // Exactly once, on what came over the wire (pushes and deltas before dedup) and after dedup.
    for (const f of audit.findings(acked)) {
      const { neverReceived, notExactlyOnce, emittedNotReceived, seqGaps } = f;
      expect({ neverReceived, notExactlyOnce, emittedNotReceived, seqGaps }, f.username).toEqual({ neverReceived: [], notExactlyOnce: {}, emittedNotReceived: [], seqGaps: [] });
      expect(f.duplicatesDropped, `${f.username}: the SDK dropped exactly the duplicates it was sent`).toBe(f.duplicatesBeforeDedup);
    }
    // And on the server's rows: one message per send, every member's inbox complete, no pair twice.
    const server = await eventually(async () => {
      const s = await auditServer(cluster, sessionId, users, acked);
      return s.outboxLeft === 0 && s;
    }, 15_000, "the outbox to drain");
    const { seqProblems, ackedMissing, contentTwice, inboxMissing, inboxDuplicates } = server;
    expect({ seqProblems, ackedMissing, contentTwice, inboxMissing, inboxDuplicates }).toEqual({ seqProblems: [], ackedMissing: [], contentTwice: [], inboxMissing: {}, inboxDuplicates: [] });
    expect(server.messages).toBe(acked.length + 1); // and the session's system message
    for (const c of clients) {
      const s = c.stats();
      expect(s.nonRetryableErrors).toBe(0);
      expect(s.closeCodes[1006] ?? 0).toBe(0);
      expect(s.uncleanCloses).toBe(0);
    }
    // The clients on the restarted gateway were moved by Goaway + 1001.
    const onFirstGateway = [clients[0]!, clients[1]!];
    expect(onFirstGateway.every((c) => (c.stats().closeCodes[1001] ?? 0) >= 1 && c.stats().goaways >= 1)).toBe(true);
  }, 480_000);
});
