import { afterAll, beforeAll, expect, it } from "vitest";
import { createApi } from "../src/client/api.js";
import { ResonanceClient, ResonanceError } from "../src/client/index.js";
import { auditServer, DeliveryAudit, type AckedMessage } from "./support/audit.js";
import { TestCluster } from "./support/cluster.js";
import { eventually, type ServiceProcess } from "./support/processes.js";
import { describeWith, requireServices } from "./support/services.js";

const services = await requireServices(["postgres", "redis", "nats", "etcd"]);

/** Users chatting from the start, and users whose clients join on the scaled-out gateway only. */
const FIRST = ["c0", "c1", "c2", "c3", "c4", "c5"];
const LATE = ["c6", "c7"];
const password = (u: string) => `pw-${u}-chaos`;

describeWith(services, "chaos (cluster)", () => {
  let cluster: TestCluster;
  const clients: ResonanceClient[] = [];

  beforeAll(async () => {
    cluster = await TestCluster.start({
      mode: "cluster",
      gateways: 2,
      logics: 2,
      tasks: 2,
      env: {
        // A SIGKILLed task's events come back after this; a SIGKILLed gateway's routes go after the route TTL.
        RESONANCE_ACK_WAIT: "2s",
        RESONANCE_ROUTE_TTL: "3s",
        RESONANCE_WS_DRAIN_WINDOW: "500ms",
        RESONANCE_SHUTDOWN_TIMEOUT: "15s",
        // Every chat spends 100 ms in logic before its commit, so each kill finds chats in flight:
        // committed after their gateway died (the resend must get the original ack, not a copy),
        // or lost with their logic before the commit (the gateway retries elsewhere).
        RESONANCE_FAULTS: "logic.SendMessages=100",
      },
    });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await cluster?.destroy();
  });

  it("chaos - under load, SIGKILL then SIGTERM one process of each role and scale out: every acked message reaches every member exactly once, in history and inboxes, seq gap-free, no error a client cannot retry", async () => {
    const urls = cluster.urls;
    const members = [...FIRST, ...LATE];
    const tokens: string[] = [];
    for (const u of members) tokens.push((await createApi(urls[0]!, { binary: true }).auth.register({ username: u, password: password(u) })).accessToken);
    const sessionId = (await createApi(urls[0]!, { binary: true, token: tokens[0]! }).session.createSession({ members: members.slice(1), type: 2, name: "chaos" })).sessionId;
    const audit = new DeliveryAudit(sessionId);
    const errors: ResonanceError[] = [];
    const client = async (username: string, clientUrls: string[]) => {
      const c = new ResonanceClient({ urls: clientUrls, username, password: password(username), binary: true, reconnect: { maxMs: 2_000 } });
      audit.track(c);
      c.onError((e) => errors.push(e));
      await c.start();
      clients.push(c);
      return c;
    };
    // Each client prefers another gateway first; every one may reconnect to any of them.
    for (const [i, u] of FIRST.entries()) await client(u, i % 2 ? [urls[1]!, urls[0]!] : [urls[0]!, urls[1]!]);

    const acked: AckedMessage[] = [];
    const failures: unknown[] = [];
    let sending = true;
    const deadline = Date.now() + 360_000; // the load stops by then whatever happens (each step below waits at most 40 s)
    const sender = async (c: ResonanceClient, pauseMs: number) => {
      for (let n = 0; sending && Date.now() < deadline; n++) {
        const content = `${c.username}-${n}`;
        try {
          acked.push({ msgId: (await c.send({ sessionId, content })).msgId, content });
        } catch (err) {
          failures.push(err);
        }
        await new Promise((r) => setTimeout(r, pauseMs));
      }
    };
    const senders = clients.map((c, i) => sender(c, 40 + i * 7));
    const progress = async (what: string) => {
      const n = acked.length + 30;
      await eventually(() => acked.length >= n || failures.length > 0 || Date.now() > deadline, 40_000, `30 more acks after ${what}`);
      expect(Date.now() < deadline, `the load's time bound ran out before ${what}`).toBe(true);
      expect(failures, `after ${what}`).toEqual([]);
    };

    const steps: string[] = [];
    const kill = async (p: ServiceProcess) => {
      await p.stop();
      steps.push(`SIGKILL ${p.role} ${p.env.RESONANCE_INSTANCE_ID}`);
      await cluster.replace(p);
      await progress(`SIGKILL of ${p.role}`);
    };
    const term = async (p: ServiceProcess) => {
      p.kill("SIGTERM");
      const [report, exit] = await Promise.all([p.report(), p.exited]);
      expect(exit.code, `${p.role} exit code\n${p.output()}`).toBe(0);
      expect(report.phases.filter((x) => x.outcome !== "ok")).toEqual([]);
      steps.push(`SIGTERM ${p.role} ${p.env.RESONANCE_INSTANCE_ID}`);
      await cluster.replace(p);
      await progress(`SIGTERM of ${p.role}`);
    };

    await progress("the start");
    await kill(cluster.gateways[0]!);
    await kill(cluster.logics[0]!);
    await kill(cluster.tasks[0]!);
    await term(cluster.gateways[1]!);
    await term(cluster.logics[1]!);
    await term(cluster.tasks[1]!);
    // Scale out: one more gateway and one more logic; the late users connect to the new gateway only.
    const newGateway = await cluster.startProcess("gateway");
    await cluster.startProcess("logic");
    steps.push("scale-out: +1 gateway, +1 logic");
    const newUrl = `http://127.0.0.1:${newGateway.env.RESONANCE_HTTP_PORT}`;
    for (const u of LATE) senders.push(sender(await client(u, [newUrl]), 60));
    await progress("the scale-out");
    sending = false;
    await Promise.all(senders);

    expect(failures).toEqual([]);
    expect(errors).toEqual([]);
    await eventually(() => audit.missing(acked).every((n) => n === 0), 45_000, "every member to have every acked message").catch((err: Error) => {
      throw new Error(`${err.message}; missing per client: ${audit.missing(acked).join(", ")} of ${acked.length}`);
    });
    const findings = audit.findings(acked);
    for (const f of findings) {
      const { neverReceived, notExactlyOnce, emittedNotReceived, seqGaps } = f;
      expect({ neverReceived, notExactlyOnce, emittedNotReceived, seqGaps }, f.username).toEqual({ neverReceived: [], notExactlyOnce: {}, emittedNotReceived: [], seqGaps: [] });
      expect(f.duplicatesDropped, `${f.username}: the SDK dropped exactly the duplicates it was sent`).toBe(f.duplicatesBeforeDedup);
    }
    const server = await eventually(async () => {
      const s = await auditServer(cluster, sessionId, members, acked);
      return s.outboxLeft === 0 && Object.keys(s.inboxMissing).length === 0 && s;
    }, 30_000, "the outbox to drain and every inbox to fill").catch(async (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(await auditServer(cluster, sessionId, members, acked))}`);
    });
    const { seqProblems, ackedMissing, contentTwice, inboxMissing, inboxDuplicates } = server;
    expect({ seqProblems, ackedMissing, contentTwice, inboxMissing, inboxDuplicates }).toEqual({ seqProblems: [], ackedMissing: [], contentTwice: [], inboxMissing: {}, inboxDuplicates: [] });
    expect(server.messages).toBe(acked.length + 1); // and the session's system message
    for (const c of clients) expect(c.stats().nonRetryableErrors, c.username).toBe(0);

    const stats = clients.map((c) => c.stats());
    const figures = {
      steps,
      messagesAcked: acked.length,
      clients: clients.length,
      reconnects: stats.reduce((n, s) => n + s.reconnects, 0),
      closes1006: stats.reduce((n, s) => n + (s.closeCodes[1006] ?? 0), 0),
      closes1001: stats.reduce((n, s) => n + (s.closeCodes[1001] ?? 0), 0),
      duplicatesBeforeDedup: findings.reduce((n, f) => n + f.duplicatesBeforeDedup, 0),
      pushesReceived: stats.reduce((n, s) => n + s.pushesReceived, 0),
      deltaReceived: stats.reduce((n, s) => n + s.deltaReceived, 0),
    };
    console.log(`chaos figures: ${JSON.stringify(figures)}`);
    // The SIGKILLed gateway cut its clients off (1006) and they came back.
    expect(figures.reconnects).toBeGreaterThan(0);
  }, 480_000);
});
