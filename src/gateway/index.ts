import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import type { Config } from "../config/config.js";
import { PushService } from "../gen/resonance/gateway/v1/gateway_pb.js";
import type { Registration, Registry, RegistryWatch } from "../infra/registry/types.js";
import type { Phase } from "../lifecycle/shutdown.js";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import { Channels } from "../rpc/channels.js";
import { RpcServer } from "../rpc/server.js";
import { TokenValidator } from "./auth-cache.js";
import { ConnectionHub } from "./connections.js";
import { PublicServer } from "./http-server.js";
import { LogicClient } from "./logic-client.js";
import { PresenceReporter } from "./presence.js";
import { publicRoutes } from "./public-api.js";

export interface GatewayDeps {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly registry: Registry;
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
  #public: PublicServer | undefined;
  #push: RpcServer | undefined;

  constructor(config: Config, deps: GatewayDeps) {
    this.#config = config;
    this.#d = deps;
    this.#channels = new Channels({ timeoutMs: 10_000 });
  }

  get httpPort(): number {
    return this.#public?.port ?? this.#config.listen.httpPort;
  }

  get pushPort(): number {
    return this.#push?.port ?? this.#config.listen.pushPort;
  }

  async start(): Promise<void> {
    const c = this.#config;
    const log = this.#d.log;
    if (c.logicAddresses.length === 0) this.#watch = await this.#d.registry.watch("logic");
    const logic = new LogicClient(this.#channels, { addresses: c.logicAddresses, ...(this.#watch ? { watch: this.#watch } : {}) });
    const presence: PresenceReporter = new PresenceReporter(
      logic,
      c.instanceId,
      { batchSize: c.presence.batchSize, intervalMs: c.presence.intervalMs, refreshMs: Math.max(1_000, c.presence.routeTtlMs / 3) },
      () => hub.users(),
      log.child({ part: "presence" }),
    );
    this.#presence = presence;
    const hub: ConnectionHub = new ConnectionHub(
      {
        sendQueue: c.limits.wsSendQueue,
        idleTimeoutMs: c.limits.wsIdleTimeoutMs,
        pingIntervalMs: c.limits.wsPingIntervalMs,
        chatRatePerSec: c.limits.chatRatePerSec,
        chatBurst: c.limits.chatBurst,
      },
      logic,
      presence,
      this.#d.metrics,
      log.child({ part: "ws" }),
    );
    this.#hub = hub;
    const tokens = new TokenValidator(logic);
    const api = publicRoutes(logic, tokens);
    this.#public = new PublicServer({
      host: c.listen.httpHost,
      port: c.listen.httpPort,
      maxFrameBytes: c.limits.maxFrameBytes,
      routes: api.routes,
      interceptors: api.interceptors,
      tokens,
      // A user's first socket here waits until logic knows the route (see PresenceReporter.onlineNow).
      beforeUpgrade: (p, ip) => (hub.has(p.username) ? Promise.resolve() : presence.onlineNow(p.username, ip)),
      onSocket: (ws, p, ip) => hub.add(ws, p.username, ip, p.expiresAt),
      log,
      metrics: this.#d.metrics,
    });
    this.#push = new RpcServer({
      name: "gateway PushService",
      host: c.listen.host,
      port: c.listen.pushPort,
      log,
      routes: (router: ConnectRouter) =>
        router.service(PushService, {
          async push(req) {
            if (!req.message) throw new ConnectError("message is required", Code.InvalidArgument);
            const failed = hub.push(req.toUsernames, req.message);
            return { msgId: req.message.msgId, failedUsernames: failed };
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
      address: `${c.listen.advertiseHost}:${this.#push.port}`,
      state: "serving",
    });
  }

  readonly unready: Phase = {
    name: "gateway.unready",
    run: async () => {
      await this.#registration?.setDraining();
    },
  };

  readonly stopAccepting: Phase = {
    name: "gateway.stop-accepting",
    run: async () => {
      this.#public?.stopAccepting();
    },
  };

  readonly finishInflight: Phase = {
    name: "gateway.finish-inflight",
    run: async () => {
      await Promise.all([this.#public?.finishRequests(), this.#hub?.finishChats()]);
      const c = this.#public?.counts;
      return { httpCompleted: c?.httpCompleted ?? 0, httpAborted: c?.httpAborted ?? 0, httpRefused: c?.httpRefused ?? 0 };
    },
  };

  /** Goaway + 1001 to every socket, spread over the drain window; stragglers terminated at the allowance. */
  closeWebSockets(allowanceMs: number): Phase {
    return {
      name: "gateway.close-websockets",
      allowanceMs,
      run: async () => {
        const deadline = Date.now() + Math.max(0, allowanceMs - 50);
        const window = Math.min(this.#config.shutdown.wsDrainWindowMs, Math.max(0, allowanceMs - 1_000));
        return (await this.#hub?.closeAll(window, deadline)) ?? {};
      },
    };
  }

  readonly flushPresence: Phase = {
    name: "gateway.flush-presence",
    run: async () => (await this.#presence?.stop()) ?? {},
  };

  stopPushRpc(allowanceMs: number): Phase {
    return {
      name: "gateway.stop-push-rpc",
      allowanceMs,
      run: async () => {
        await this.#push?.stop(Math.max(0, allowanceMs - 100));
      },
    };
  }

  readonly deregister: Phase = {
    name: "gateway.deregister",
    run: async () => {
      await this.#registration?.deregister();
    },
  };

  readonly release: Phase = {
    name: "gateway.release",
    run: async () => {
      await this.close();
    },
  };

  /** Closes everything this service opened; idempotent. */
  async close(): Promise<void> {
    this.#public?.close();
    await this.#presence?.stop();
    await this.#push?.stop(0);
    await this.#registration?.deregister();
    await this.#watch?.close();
    this.#channels.close();
  }
}
