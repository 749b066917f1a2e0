import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import type { Config } from "../config/config.js";
import { PushService, type PushMessage } from "../gen/resonance/gateway/v1/gateway_pb.js";
import { AuthService as LogicAuthService, SessionService as LogicSessionService } from "../gen/resonance/logic/v1/logic_pb.js";
import type { Registration, Registry, RegistryWatch } from "../infra/registry/types.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import { Channels } from "../rpc/channels.js";
import type { InProcessWiring } from "../rpc/in-process.js";
import { RpcServer } from "../rpc/server.js";
import { TokenValidator } from "./auth-cache.js";
import { ChatDispatcher } from "./chat-dispatcher.js";
import { ConnectionHub } from "./connections.js";
import { PublicServer } from "./http-server.js";
import { LogicClient } from "./logic-client.js";
import { LogicReadiness, SECRET_MISMATCH_MESSAGE } from "./logic-readiness.js";
import { LargeSessions } from "./large-sessions.js";
import { PresenceReporter } from "./presence.js";
import { publicRoutes } from "./public-api.js";
import { ConnectionSlots } from "./user-limits.js";

export interface GatewayDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly registry: Registry;
  /** Probe logic and be ready only while it answers (a gateway of its own; in `all` logic is in this process). */
  readonly probeLogic?: boolean;
  /** In `all`: logic is called in process, and the PushService serves the task in process (with no port when `listen` is false). */
  readonly inProcess?: InProcessWiring | undefined;
}

/**
 * The gateway: public HTTP API + WebSockets, the internal PushService, presence reporting.
 * `start()` does all I/O; the shutdown is the phases below, in order.
 */
export class GatewayService {
  readonly #config: Config;
  readonly #d: GatewayDeps;
  readonly #channels: Channels;
  #watch: RegistryWatch | undefined;
  #registration: Registration | undefined;
  #presence: PresenceReporter | undefined;
  #hub: ConnectionHub | undefined;
  #chats: ChatDispatcher | undefined;
  #public: PublicServer | undefined;
  #push: RpcServer | undefined;
  #readiness: LogicReadiness | undefined;

  constructor(config: Config, deps: GatewayDeps) {
    this.#config = config;
    this.#d = deps;
    this.#channels = new Channels({ timeoutMs: 10_000, secret: config.internalSecret, local: deps.inProcess?.servers });
  }

  get httpPort(): number {
    return this.#public?.port ?? this.#config.listen.httpPort;
  }

  /** Why this gateway cannot serve now (logic unreachable, or refusing its secret), or undefined. */
  get notReadyReason(): string | undefined {
    return this.#readiness?.trouble?.detail;
  }

  get pushPort(): number {
    return this.#push?.port ?? this.#config.listen.pushPort;
  }

  async start(): Promise<void> {
    const c = this.#config;
    const log = this.#d.log;
    const logic = new LogicClient(this.#channels, c.logicAddresses);
    const readiness = this.#d.probeLogic
      ? new LogicReadiness({
          // Logic answers an empty token without touching its database; its secret check comes first.
          probe: async (address) => void (await this.#channels.client(LogicAuthService, address).validateToken({ accessToken: "" }, { timeoutMs: 3_000 })),
          log: log.child({ part: "logic-readiness" }),
        })
      : undefined;
    this.#readiness = readiness;
    if (c.logicAddresses.length === 0) {
      this.#watch = await this.#d.registry.watch("logic", (entries) => {
        logic.setInstances(entries);
        readiness?.setAddresses(entries.map((e) => e.address));
      });
      logic.setInstances(this.#watch.entries());
    }
    readiness?.setAddresses(c.logicAddresses.length > 0 ? c.logicAddresses : (this.#watch?.entries() ?? []).map((e) => e.address));
    // Ready (or not, and why) from the first moment: the first probe is awaited (each call is bounded).
    await readiness?.start();
    const presence: PresenceReporter = new PresenceReporter(
      logic,
      c.instanceId,
      { batchSize: c.presence.batchSize, intervalMs: c.presence.intervalMs, refreshMs: Math.max(1_000, c.presence.routeTtlMs / 3) },
      () => hub.users(),
      log.child({ part: "presence" }),
    );
    this.#presence = presence;
    const chats = new ChatDispatcher((address, items) => logic.sendMessages(address, items), () => logic.addresses, { maxQueued: c.limits.chatQueue }, this.#d.metrics, log.child({ part: "chats" }));
    this.#chats = chats;
    this.#d.metrics.gauge("resonance_chats_queued", "Chats waiting in the gateway for a call to logic", () => chats.queued);
    const hub: ConnectionHub = new ConnectionHub(
      {
        sendBufferBytes: c.limits.wsSendBufferBytes,
        idleTimeoutMs: c.limits.wsIdleTimeoutMs,
        pingIntervalMs: c.limits.wsPingIntervalMs,
        chatRatePerSec: c.limits.chatRatePerSec,
        chatBurst: c.limits.chatBurst,
        chatWindow: c.limits.wsChatWindow,
      },
      chats,
      presence,
      this.#d.metrics,
      log.child({ part: "ws" }),
    );
    this.#hub = hub;
    const large = new LargeSessions(
      async (usernames, sessionId) =>
        (await logic.call(LogicSessionService, (c) => c.largeMemberships({ usernames, sessionId: sessionId ?? "" }))).memberships,
      () => hub.users(),
      (u) => hub.has(u),
      log.child({ part: "large-sessions" }),
    );
    const deliver = (usernames: string[], message: PushMessage) => void hub.push(usernames, message);
    const tokens = new TokenValidator(logic);
    const api = publicRoutes(logic, tokens, (token) => hub.closeToken(token), (username) => hub.closeUser(username));
    this.#public = new PublicServer({
      host: c.listen.httpHost,
      port: c.listen.httpPort,
      maxFrameBytes: c.limits.maxFrameBytes,
      routes: api.routes,
      // A gateway whose secret logic refuses answers at once, and in words an operator can act on.
      interceptors: [
        (next) => async (req) => {
          if (readiness?.trouble?.cause === "secret-mismatch") throw new ConnectError(SECRET_MISMATCH_MESSAGE, Code.FailedPrecondition);
          return next(req);
        },
        ...api.interceptors,
      ],
      tokens,
      // A user's first socket here waits until logic knows the route (see PresenceReporter.onlineNow).
      // And its large sessions are known here, so their messages reach it too.
      beforeUpgrade: async (p, ip) => {
        if (hub.has(p.username)) return;
        const [route, learned] = await Promise.allSettled([presence.onlineNow(p.username, ip), large.learn(p.username)]);
        if (learned.status === "rejected") {
          if (route.status === "fulfilled" && !hub.has(p.username)) presence.offline(p.username);
          throw learned.reason;
        }
        if (route.status === "rejected") throw route.reason;
      },
      upgradeRefused: (p) => {
        if (!hub.has(p.username)) presence.offline(p.username);
      },
      onSocket: (ws, p, ip) => {
        // Logged out while the upgrade was under way: the socket must not outlive its token.
        if (tokens.revoked(p)) {
          ws.close(1008, "token revoked");
          if (!hub.has(p.username)) presence.offline(p.username);
          return;
        }
        hub.add(ws, p, ip);
      },
      authRate: { perSec: c.limits.authRatePerSec, burst: c.limits.authBurst },
      slots: new ConnectionSlots({ perUser: c.limits.wsPerUser, perAddress: c.limits.wsPerAddress }),
      log,
      metrics: this.#d.metrics,
    });
    this.#push = new RpcServer({
      name: "gateway PushService",
      host: c.listen.host,
      secret: c.internalSecret,
      port: c.listen.pushPort,
      advertiseHost: c.listen.advertiseHost,
      local: this.#d.inProcess?.servers,
      listen: this.#d.inProcess?.listen ?? true,
      onRefused: () => this.#d.metrics.internalRefused.inc(),
      log,
      routes: (router: ConnectRouter) =>
        router.service(PushService, {
          async push(req) {
            if (!req.message) throw new ConnectError("message is required", Code.InvalidArgument);
            if (req.toSessionMembers) {
              await large.push(req.message, deliver);
              return { msgId: req.message.msgId };
            }
            const failed = hub.push(req.toUsernames, req.message);
            return { msgId: req.message.msgId, failedUsernames: failed };
          },
          async pushBatch(req) {
            // Large-session pushes may wait for logic (a session new here): they run in order,
            // after the others, which never wait.
            const waits: Array<Promise<void>> = [];
            const results = req.pushes.map((p) => {
              if (!p.message) return { error: "message is required", failedUsernames: p.toUsernames };
              if (p.toSessionMembers) {
                waits.push(large.push(p.message, deliver));
                return { msgId: p.message.msgId };
              }
              return { msgId: p.message.msgId, failedUsernames: hub.push(p.toUsernames, p.message) };
            });
            await Promise.all(waits);
            return { results };
          },
          async revoke(req) {
            let closed = 0;
            for (const token of req.accessTokens) {
              tokens.forget(token);
              hub.closeToken(token);
            }
            for (const username of req.usernames) {
              tokens.forgetUser(username);
              closed += hub.closeUser(username);
            }
            return { closed };
          },
        }),
    });
    presence.start();
    hub.start();
    await this.#push.start();
    await this.#public.start();
    this.#registration = await this.#d.registry.register({
      service: "gateway",
      id: c.instanceId,
      address: this.#push.address,
      state: "serving",
    });
  }

  /** Shutdown step: the registry entry turns `draining` (new work goes elsewhere). */
  async unready(): Promise<void> {
    await this.#registration?.setDraining();
  }

  /** Shutdown step: listener closed; new requests and upgrades get 503. */
  stopAccepting(): void {
    this.#public?.stopAccepting();
  }

  /**
   * Shutdown step: answers the HTTP requests and chats in flight, waiting at most `allowanceMs`;
   * chats arriving from now on get `unavailable`. Resolves with the counts; never rejects.
   */
  async finishInflight(allowanceMs: number): Promise<Record<string, number>> {
    let timer: NodeJS.Timeout | undefined;
    const done = Promise.all([this.#public?.finishRequests(), this.#hub?.finishChats()]).then(() => true);
    const finished = await Promise.race([done, new Promise<boolean>((r) => (timer = setTimeout(() => r(false), allowanceMs)))]);
    clearTimeout(timer);
    if (!finished) this.#d.log.warn("in-flight work still running at its allowance; continuing the shutdown");
    const c = this.#public?.counts;
    return {
      httpCompleted: c?.httpCompleted ?? 0,
      httpRefused: c?.httpRefused ?? 0,
      chatsRefused: this.#hub?.counts.chatsRefused ?? 0,
      slowConsumers: this.#hub?.counts.slowConsumers ?? 0,
    };
  }

  /** Shutdown step: Goaway + 1001 to every socket, spread over the drain window; stragglers terminated by `deadline`. */
  async closeWebSockets(deadline: number): Promise<Record<string, number>> {
    const window = Math.min(this.#config.shutdown.wsDrainWindowMs, Math.max(0, deadline - Date.now() - 1_000));
    return (await this.#hub?.closeAll(window, deadline)) ?? {};
  }

  /** Shutdown step: offline for every user that was here; the reporter stops. */
  async flushPresence(): Promise<Record<string, number>> {
    return (await this.#presence?.stop()) ?? {};
  }

  /** Shutdown step: PushService graceful stop, forced after `graceMs`. */
  async stopPushRpc(graceMs: number): Promise<void> {
    await this.#push?.stop(graceMs);
  }

  /** Shutdown step: the registry entry goes at once (lease revoked). */
  async deregister(): Promise<void> {
    await this.#registration?.deregister();
  }

  /** HTTP requests not answered (counted when the listener is closed for good). */
  get httpAborted(): number {
    return this.#public?.counts.httpAborted ?? 0;
  }

  /** Closes everything this service opened; idempotent. */
  async close(): Promise<void> {
    this.#readiness?.stop();
    this.#public?.close();
    await this.#presence?.stop();
    this.#chats?.close();
    await this.#push?.stop(0);
    await this.#registration?.deregister();
    await this.#watch?.close();
    this.#channels.close();
  }
}
