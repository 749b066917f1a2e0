import { timingSafeEqual } from "node:crypto";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../observability/log.js";

export type ListenerState = "idle" | "running" | "draining" | "closed";

export interface RpcServerOptions {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly routes: (router: ConnectRouter) => void;
  readonly log: Logger;
  /** When set, calls must carry it (see {@link INTERNAL_SECRET_HEADER}); others get UNAUTHENTICATED. */
  readonly secret?: string | undefined;
}

/** The header internal calls carry the shared secret in. */
export const INTERNAL_SECRET_HEADER = "x-resonance-internal";

function sameSecret(given: string | null, expected: string): boolean {
  const a = Buffer.from(given ?? "");
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * An HTTP/2 gRPC (and Connect) server with an explicit state. While draining, new calls get
 * UNAVAILABLE (the caller retries elsewhere) and in-flight calls finish; `stop()` closes every
 * HTTP/2 session with GOAWAY and destroys what is left when its grace period ends.
 */
export class RpcServer {
  readonly #opts: RpcServerOptions;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  #server: http2.Http2Server | undefined;
  #state: ListenerState = "idle";
  #inFlight = 0;
  #idle: (() => void) | undefined;
  #stopping: Promise<{ completed: number; aborted: number }> | undefined;
  #completed = 0;

  constructor(opts: RpcServerOptions) {
    this.#opts = opts;
  }

  get state(): ListenerState {
    return this.#state;
  }

  get port(): number {
    return (this.#server?.address() as AddressInfo | null)?.port ?? this.#opts.port;
  }

  async start(): Promise<void> {
    if (this.#state !== "idle") return;
    const guard: Interceptor = (next) => async (req) => {
      if (this.#state !== "running") {
        throw new ConnectError(`${this.#opts.name} is shutting down`, Code.Unavailable);
      }
      const secret = this.#opts.secret;
      if (secret !== undefined && !sameSecret(req.header.get(INTERNAL_SECRET_HEADER), secret)) {
        throw new ConnectError("internal call without the shared secret", Code.Unauthenticated);
      }
      this.#inFlight++;
      try {
        return await next(req);
      } catch (err) {
        if (err instanceof ConnectError) throw err;
        // Database or programming errors: logged here, never shown to callers.
        this.#opts.log.error({ err, method: req.method.name }, "internal error");
        throw new ConnectError("internal error", Code.Internal);
      } finally {
        this.#inFlight--;
        this.#completed++;
        if (this.#inFlight === 0) this.#idle?.();
      }
    };
    const handler = connectNodeAdapter({ routes: this.#opts.routes, interceptors: [guard], readMaxBytes: 1024 * 1024 });
    const server = http2.createServer(handler);
    server.on("session", (s) => {
      this.#sessions.add(s);
      s.once("close", () => this.#sessions.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.#opts.port, this.#opts.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    this.#server = server;
    this.#state = "running";
    this.#opts.log.info({ port: this.port }, `${this.#opts.name} listening`);
  }

  /** Refuse new calls from now on (UNAVAILABLE); in-flight calls go on. */
  drain(): void {
    if (this.#state === "running") this.#state = "draining";
  }

  /**
   * Stops accepting, waits for in-flight calls (at most `graceMs`), then closes every session.
   * Resolves with the number of calls completed and aborted; idempotent; never rejects.
   */
  stop(graceMs: number): Promise<{ completed: number; aborted: number }> {
    this.#stopping ??= this.#stop(graceMs);
    return this.#stopping;
  }

  async #stop(graceMs: number): Promise<{ completed: number; aborted: number }> {
    this.drain();
    const server = this.#server;
    if (!server) {
      this.#state = "closed";
      return { completed: 0, aborted: 0 };
    }
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const idle = this.#inFlight === 0 ? Promise.resolve() : new Promise<void>((r) => (this.#idle = r));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      idle.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
    ]);
    clearTimeout(timer);
    const aborted = timedOut ? this.#inFlight : 0;
    for (const s of this.#sessions) {
      if (timedOut) s.destroy();
      else s.close();
    }
    await closed;
    this.#state = "closed";
    return { completed: this.#completed, aborted };
  }
}
