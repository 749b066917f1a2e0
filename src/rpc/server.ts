import { createHash, timingSafeEqual } from "node:crypto";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Code, ConnectError, type ConnectRouter, type Interceptor, type Transport } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Logger } from "../observability/log.js";
import { IN_PROCESS_SCHEME, createDirectTransport, type InProcessClientOptions, type InProcessServer, type LocalServers } from "./in-process.js";

export type ListenerState = "idle" | "running" | "draining" | "closed";

export interface RpcServerOptions {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly routes: (router: ConnectRouter) => void;
  readonly log: Logger;
  /** When set, calls must carry it (see {@link INTERNAL_SECRET_HEADER}); others get UNAUTHENTICATED. */
  readonly secret?: string | undefined;
  /** Called for every call refused for a missing or wrong secret (a metric). */
  readonly onRefused?: () => void;
  /**
   * Serve calls made in this process too, straight to the handlers (no socket): the server is
   * added to `local` under {@link RpcServer.address} when it starts. Such calls pass the same
   * checks as those that come over the network (refused while draining, the secret, counted in
   * flight, errors bounded).
   */
  readonly local?: LocalServers | undefined;
  /** False: open no port, serve only calls from this process (needs `local`). Default true. */
  readonly listen?: boolean | undefined;
  /** The host other processes reach this server at (its address in the registry); default `host`. */
  readonly advertiseHost?: string | undefined;
}

/** The header internal calls carry the shared secret in. */
export const INTERNAL_SECRET_HEADER = "x-resonance-internal";

const digest = (s: string): Buffer => createHash("sha256").update(s).digest();

/**
 * Compares a presented secret with the expected one's digest in constant time: both sides are
 * hashed to 32 bytes first, so neither the content nor the length of the secret leaks.
 */
function sameSecret(given: string | null, expected: Buffer): boolean {
  return timingSafeEqual(digest(given ?? ""), expected);
}

/** Longest error message an internal caller gets: a gRPC status travels in an HTTP/2 header. */
const MAX_ERROR_CHARS = 512;
/** Largest request a caller may send. */
const READ_MAX_BYTES = 1024 * 1024;
/** At most one log line per this long about calls refused for a wrong secret. */
const AUTH_LOG_EVERY_MS = 10_000;

/**
 * What a handler's non-Connect error means for the caller. PostgreSQL data exceptions (class 22:
 * a NUL byte, a value out of range) are bad input that slipped past validation: the caller gets
 * `invalid_argument`, never the value. A statement cancelled by `statement_timeout` (57014) is
 * `deadline_exceeded` (nothing was committed). Anything else is `internal`.
 */
function classify(err: unknown): ConnectError | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return undefined;
  if (code.startsWith("22")) return new ConnectError("invalid input: a value the database cannot store", Code.InvalidArgument);
  if (code === "57014") return new ConnectError("the database took too long; try again", Code.DeadlineExceeded);
  // Out of memory or locks (class 53), a serialization failure or a deadlock: nothing was
  // written and the same call may well succeed in a moment.
  if (code.startsWith("53") || code === "40001" || code === "40P01") return new ConnectError("the database is busy; try again", Code.Unavailable);
  return undefined;
}

/** The error with its message cut to {@link MAX_ERROR_CHARS} (a long one would break the HTTP/2 channel). */
function bounded(err: ConnectError): ConnectError {
  if (err.rawMessage.length <= MAX_ERROR_CHARS) return err;
  return new ConnectError(`${err.rawMessage.slice(0, MAX_ERROR_CHARS)}…`, err.code);
}

/**
 * An HTTP/2 gRPC (and Connect) server with an explicit state, which may also (or only) serve
 * calls from its own process (see {@link RpcServerOptions.local}). While draining, new calls get
 * UNAVAILABLE (the caller retries elsewhere) and in-flight calls finish; `stop()` closes every
 * HTTP/2 session with GOAWAY and destroys what is left when its grace period ends (in-process
 * calls still running then are answered CANCELED).
 */
export class RpcServer implements InProcessServer {
  readonly #opts: RpcServerOptions;
  readonly #guard: Interceptor;
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /** Callers of in-process calls in flight: told when a forced stop gives up on them. */
  readonly #localCallers = new Set<(err: ConnectError) => void>();
  #server: http2.Http2Server | undefined;
  #state: ListenerState = "idle";
  #inFlight = 0;
  #idle: (() => void) | undefined;
  #stopping: Promise<{ completed: number; aborted: number }> | undefined;
  #completed = 0;
  #refused = 0;
  #refusedLoggedAt = 0;

  constructor(opts: RpcServerOptions) {
    if (opts.listen === false && !opts.local) throw new Error(`${opts.name}: an RPC server that does not listen needs in-process callers`);
    this.#opts = opts;
    this.#guard = this.#makeGuard();
  }

  get state(): ListenerState {
    return this.#state;
  }

  get port(): number {
    return (this.#server?.address() as AddressInfo | null)?.port ?? this.#opts.port;
  }

  /** Where callers reach this server: `host:port`, or `in-process:<name>` when it opens no port. */
  get address(): string {
    if (this.#opts.listen === false) return `${IN_PROCESS_SCHEME}${this.#opts.name.replace(/\s+/g, "-")}`;
    return `${this.#opts.advertiseHost ?? this.#opts.host}:${this.port}`;
  }

  /**
   * The checks every call passes, over the network or in process: refused while not running,
   * the shared secret, counted in flight, errors bounded and never leaking internals.
   */
  #makeGuard(): Interceptor {
    const expected = this.#opts.secret === undefined ? undefined : digest(this.#opts.secret);
    return (next) => async (req) => {
      if (this.#state !== "running") {
        throw new ConnectError(`${this.#opts.name} is shutting down`, Code.Unavailable);
      }
      if (expected !== undefined && !sameSecret(req.header.get(INTERNAL_SECRET_HEADER), expected)) {
        this.#refusedCall(req.method.name, req.header.get(INTERNAL_SECRET_HEADER) === null);
        throw new ConnectError("internal call without the shared secret", Code.Unauthenticated);
      }
      this.#inFlight++;
      try {
        return await next(req);
      } catch (err) {
        if (err instanceof ConnectError) throw bounded(err);
        const known = classify(err);
        if (known) {
          this.#opts.log.warn({ err, method: req.method.name }, "bad input reached the database");
          throw known;
        }
        // Database or programming errors: logged here, never shown to callers.
        this.#opts.log.error({ err, method: req.method.name }, "internal error");
        throw new ConnectError("internal error", Code.Internal);
      } finally {
        this.#inFlight--;
        this.#completed++;
        if (this.#inFlight === 0) this.#idle?.();
      }
    };
  }

  /**
   * A transport for callers in this process: requests are encoded and decoded as on the wire
   * (the handlers see exactly what a remote call would give them) but go straight to this
   * server's handlers through its guard, with no socket (see createDirectTransport).
   */
  transport(client: InProcessClientOptions): Transport {
    const callers = this.#localCallers;
    // A forced stop answers the calls it gives up on, as a destroyed HTTP/2 session would.
    const severable: Interceptor = (next) => (req) =>
      new Promise((resolve, reject) => {
        callers.add(reject);
        next(req)
          .then(resolve, reject)
          .finally(() => callers.delete(reject));
      });
    return createDirectTransport({
      routes: this.#opts.routes,
      clientInterceptors: [...client.interceptors, severable],
      serverInterceptors: [this.#guard],
      defaultTimeoutMs: client.defaultTimeoutMs,
      readMaxBytes: READ_MAX_BYTES,
    });
  }

  async start(): Promise<void> {
    if (this.#state !== "idle") return;
    if (this.#opts.listen !== false) await this.#listen();
    this.#state = "running";
    this.#opts.local?.add(this.address, this);
    if (this.#opts.listen === false) this.#opts.log.info({ address: this.address }, `${this.#opts.name} serving in process only (no port)`);
  }

  async #listen(): Promise<void> {
    const handler = connectNodeAdapter({ routes: this.#opts.routes, interceptors: [this.#guard], readMaxBytes: READ_MAX_BYTES });
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
    this.#opts.log.info({ port: this.port }, `${this.#opts.name} listening`);
  }

  /**
   * A call with a missing or wrong secret: a misconfigured peer (its RESONANCE_INTERNAL_SECRET
   * differs) or a stranger. Said loudly at error level, at most once per {@link AUTH_LOG_EVERY_MS}
   * with the count since the last line, so a flood cannot fill the log.
   */
  #refusedCall(method: string, missing: boolean): void {
    this.#refused++;
    this.#opts.onRefused?.();
    const now = Date.now();
    if (now - this.#refusedLoggedAt < AUTH_LOG_EVERY_MS) return;
    this.#refusedLoggedAt = now;
    this.#opts.log.error(
      { method, refused: this.#refused, secret: missing ? "missing" : "wrong" },
      `${this.#opts.name}: refused internal calls without the shared secret (is RESONANCE_INTERNAL_SECRET the same on every instance?)`,
    );
    this.#refused = 0;
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
    const started = this.#state !== "idle";
    this.drain();
    const server = this.#server;
    if (!started) {
      this.#state = "closed";
      return { completed: 0, aborted: 0 };
    }
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const idle = this.#inFlight === 0 ? Promise.resolve() : new Promise<void>((r) => (this.#idle = r));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      idle.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
    ]);
    clearTimeout(timer);
    const aborted = timedOut ? this.#inFlight : 0;
    if (timedOut) {
      const err = new ConnectError(`${this.#opts.name} stopped before answering`, Code.Canceled);
      for (const reject of this.#localCallers) reject(err);
    }
    for (const s of this.#sessions) {
      if (timedOut) s.destroy();
      else s.close();
    }
    await closed;
    this.#state = "closed";
    return { completed: this.#completed, aborted };
  }
}
