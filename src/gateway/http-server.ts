import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { WebSocketServer, type WebSocket } from "ws";
import type { Logger } from "../observability/log.js";
import type { Metrics } from "../observability/metrics.js";
import type { ListenerState } from "../rpc/server.js";
import { tokenOf, type Principal, type TokenValidator } from "./auth-cache.js";
import { connectHandler } from "./connect-handler.js";
import { StaticSite, WEB_BUILD_DIR } from "./static.js";
import type { ConnectionSlots, SlotRefusal } from "./user-limits.js";

const CORS = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "POST, GET, OPTIONS",
  "access-control-allow-headers": "content-type, authorization, connect-protocol-version, connect-timeout-ms, x-user-agent",
  "access-control-max-age": "86400",
};

export interface PublicServerOptions {
  readonly host: string;
  readonly port: number;
  readonly maxFrameBytes: number;
  readonly routes: (router: ConnectRouter) => void;
  readonly interceptors: Interceptor[];
  readonly tokens: TokenValidator;
  /** Runs before an authenticated upgrade completes; a rejection refuses it with 503. */
  readonly beforeUpgrade: (principal: Principal, remoteIp: string) => Promise<void>;
  /** Takes an authenticated WebSocket. */
  readonly onSocket: (ws: WebSocket, principal: Principal, remoteIp: string) => void;
  /** Called when an upgrade is refused after `beforeUpgrade` succeeded (undo what it did). */
  readonly upgradeRefused: (principal: Principal) => void;
  /** Login/Register attempts per second per client address, and burst. */
  readonly authRate: { readonly perSec: number; readonly burst: number };
  /** WebSocket connections per user and per client address (upgrades under way included). */
  readonly slots: ConnectionSlots;
  readonly log: Logger;
  readonly metrics: Metrics;
}

const AUTH_PATHS = new Set(["/resonance.gateway.v1.AuthService/Login", "/resonance.gateway.v1.AuthService/Register"]);
const MAX_TRACKED_ADDRESSES = 10_000;

/** The close a WebSocket over a connection limit gets right after its handshake (clients back off on 4429). */
const SLOT_REFUSALS: Record<SlotRefusal, string> = {
  "connections-per-user": "too many connections for this user",
  "connections-per-address": "too many connections from this address",
};

function refuseUpgrade(socket: Duplex, status: number, text: string): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${text.length + 1}\r\n\r\n${text}\n`);
}

/**
 * The gateway's public listener: Connect API over HTTP/1.1 and WebSocket upgrades on `/ws`.
 * States: running → draining (new requests and upgrades get 503 with `Connection: close`,
 * idle keep-alive sockets are closed) → closed.
 */
export class PublicServer {
  readonly #opts: PublicServerOptions;
  readonly #server: http.Server;
  readonly #wss: WebSocketServer;
  #state: ListenerState = "idle";
  readonly #inFlight = new Set<http.ServerResponse>();
  readonly #authBuckets = new Map<string, { tokens: number; at: number }>();
  #idle: (() => void) | undefined;
  #site: StaticSite | undefined;
  readonly counts = { httpCompleted: 0, httpAborted: 0, httpRefused: 0 };

  constructor(opts: PublicServerOptions) {
    this.#opts = opts;
    const connect = connectHandler({
      routes: opts.routes,
      interceptors: opts.interceptors,
      log: opts.log,
      onBadInput: (kind) => opts.metrics.badInput.inc({ kind }),
    });
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: opts.maxFrameBytes, perMessageDeflate: false });
    this.#server = http.createServer((req, res) => {
      if (this.#state !== "running") {
        this.counts.httpRefused++;
        res.writeHead(503, { connection: "close", "content-type": "application/json", ...CORS });
        return void res.end(JSON.stringify({ code: "unavailable", message: "server is shutting down" }));
      }
      for (const [k, v] of Object.entries(CORS)) res.setHeader(k, v);
      if (req.method === "OPTIONS") return void res.writeHead(204).end();
      // The web client (GET / and its assets) is served from memory beside the API.
      if (this.#site && StaticSite.wants(req)) return this.#site.serve(req, res);
      if (AUTH_PATHS.has((req.url ?? "").split("?")[0]!) && !this.#authAllowed(req.socket.remoteAddress ?? "")) {
        this.#opts.metrics.badInput.inc({ kind: "auth-rate-limited" });
        res.writeHead(429, { "content-type": "application/json" });
        return void res.end(JSON.stringify({ code: "resource_exhausted", message: "too many login attempts; slow down" }));
      }
      this.#inFlight.add(res);
      res.once("close", () => {
        if (!this.#inFlight.delete(res)) return; // Already counted by close().
        if (res.writableFinished) this.counts.httpCompleted++;
        else this.counts.httpAborted++;
        if (this.#inFlight.size === 0) this.#idle?.();
      });
      connect(req, res);
    });
    this.#server.keepAliveTimeout = 30_000;
    this.#server.headersTimeout = 20_000;
    this.#server.requestTimeout = 60_000;
    this.#server.on("upgrade", (req, socket, head) => void this.#upgrade(req, socket, head));
  }

  /** A token bucket per client address for the password-checking methods (a KDF run each). */
  #authAllowed(address: string): boolean {
    const now = Date.now();
    const { perSec, burst } = this.#opts.authRate;
    const b = this.#authBuckets.get(address) ?? { tokens: burst, at: now };
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * perSec);
    b.at = now;
    if (!this.#authBuckets.has(address)) {
      if (this.#authBuckets.size >= MAX_TRACKED_ADDRESSES) this.#authBuckets.delete(this.#authBuckets.keys().next().value!);
      this.#authBuckets.set(address, b);
    }
    if (b.tokens < 1) return false;
    b.tokens--;
    return true;
  }

  get port(): number {
    return (this.#server.address() as AddressInfo | null)?.port ?? this.#opts.port;
  }

  get state(): ListenerState {
    return this.#state;
  }

  async start(): Promise<void> {
    this.#site = await StaticSite.load(WEB_BUILD_DIR, this.#opts.log);
    await new Promise<void>((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(this.#opts.port, this.#opts.host, () => {
        this.#server.off("error", reject);
        resolve();
      });
    });
    this.#state = "running";
    this.#opts.log.info({ port: this.port }, "public HTTP and WebSocket listening");
  }

  async #upgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => socket.destroy());
    const url = req.url ?? "/";
    if (url.split("?")[0] !== "/ws") return refuseUpgrade(socket, 404, "Not Found");
    if (this.#state !== "running") return refuseUpgrade(socket, 503, "Service Unavailable");
    const ip = req.socket.remoteAddress ?? "";
    // Connection slots are held from here until the socket closes, whatever happens to the upgrade.
    const held: Array<() => void> = [];
    const release = () => {
      for (const r of held.splice(0)) r();
    };
    socket.once("close", release);
    const refuse = (status: number, text: string) => {
      release();
      refuseUpgrade(socket, status, text);
    };
    // The address is checked before any work (token check included).
    const addressSlot = this.#opts.slots.address(ip);
    if (!addressSlot) return this.#refuseSlot(req, socket, head, "connections-per-address");
    held.push(addressSlot);
    let principal: Principal | undefined;
    try {
      principal = await this.#opts.tokens.validate(tokenOf({ get: (n) => (req.headers[n] as string | undefined) ?? null }, url));
    } catch {
      return refuse(503, "Service Unavailable");
    }
    if (!principal) {
      this.#opts.metrics.badInput.inc({ kind: "bad-token" });
      return refuse(401, "Unauthorized");
    }
    const userSlot = this.#opts.slots.user(principal.username);
    if (!userSlot) {
      release();
      return this.#refuseSlot(req, socket, head, "connections-per-user");
    }
    held.push(userSlot);
    try {
      await this.#opts.beforeUpgrade(principal, ip);
    } catch {
      return refuse(503, "Service Unavailable");
    }
    if (this.#state !== "running" || socket.destroyed) {
      this.#opts.upgradeRefused(principal);
      return refuse(503, "Service Unavailable");
    }
    const p = principal;
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#opts.onSocket(ws, p, ip));
  }

  /**
   * Completes the handshake only to close at once with 4429 and the limit in words: a browser
   * sees a close code and reason, never an HTTP status. Counted by limit.
   */
  #refuseSlot(req: http.IncomingMessage, socket: Duplex, head: Buffer, limit: SlotRefusal): void {
    this.#opts.metrics.wsLimited.inc({ limit });
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      ws.close(4429, SLOT_REFUSALS[limit]);
      // It holds no slot: a client that never answers the close must not keep the socket for long.
      setTimeout(() => ws.terminate(), 5_000).unref();
    });
  }

  /** Stops accepting: closes the listener and idle keep-alive sockets; later requests get 503. */
  stopAccepting(): void {
    if (this.#state !== "running") return;
    this.#state = "draining";
    this.#server.close();
    this.#server.closeIdleConnections();
    // Responses still being written tell their clients not to reuse the connection.
    for (const res of this.#inFlight) if (!res.headersSent) res.setHeader("connection", "close");
  }

  /** Resolves when the HTTP requests in flight have been answered. Never rejects. */
  async finishRequests(): Promise<void> {
    if (this.#inFlight.size > 0) await new Promise<void>((r) => (this.#idle = r));
    this.#server.closeIdleConnections();
  }

  /** Closes whatever is left (sockets included); idempotent. */
  close(): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    // Counted now: the close events of the responses cut off below come after the shutdown report.
    for (const res of this.#inFlight) {
      if (res.writableFinished) this.counts.httpCompleted++;
      else this.counts.httpAborted++;
    }
    this.#inFlight.clear();
    this.#idle?.();
    this.#server.close();
    this.#server.closeAllConnections();
    this.#wss.close();
  }
}
