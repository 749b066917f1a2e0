import { create, fromBinary, toBinary, type DescMethod } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  type ConnectRouter,
  type HandlerContext,
  type Interceptor,
  type Transport,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";

/** What a client channel asks of an in-process server: its own interceptors and deadline. */
export interface InProcessClientOptions {
  readonly interceptors: readonly Interceptor[];
  readonly defaultTimeoutMs: number;
}

/** An RPC server that can also be called without a socket (see RpcServer). */
export interface InProcessServer {
  /** A transport whose calls go straight to the server's handlers, through its own checks. */
  transport(client: InProcessClientOptions): Transport;
}

/** Prefix of the address a server has when it serves only calls from its own process. */
export const IN_PROCESS_SCHEME = "in-process:";

/**
 * The RPC servers of one process by the address they are registered under (in the registry, in
 * `RESONANCE_LOGIC_ADDRESSES`), so that a call from one service to another of the same process
 * (`all`) goes straight to the handlers instead of over loopback HTTP/2. One per App.
 */
export class LocalServers {
  readonly #byAddress = new Map<string, InProcessServer>();

  add(address: string, server: InProcessServer): void {
    this.#byAddress.set(address, server);
  }

  get(address: string): InProcessServer | undefined {
    return this.#byAddress.get(address);
  }
}

/** How a service of `all` wires its RPC: servers and clients meet in `servers`; `listen` false opens no port. */
export interface InProcessWiring {
  readonly servers: LocalServers;
  readonly listen: boolean;
}

type UnaryFn = (req: UnaryRequest) => Promise<UnaryResponse>;
type UnaryImpl = (req: unknown, ctx: HandlerContext) => unknown;

/** The unary implementations `routes` registers, by method (what a router would serve). */
function implementations(routes: (router: ConnectRouter) => void): Map<DescMethod, UnaryImpl> {
  const impls = new Map<DescMethod, UnaryImpl>();
  const router = {
    handlers: [],
    service(service: { methods: readonly DescMethod[] }, impl: Record<string, unknown>) {
      for (const m of service.methods) {
        const fn = impl[m.localName];
        if (typeof fn === "function") impls.set(m, (fn as UnaryImpl).bind(impl));
      }
      return router;
    },
    rpc(method: DescMethod, impl: UnaryImpl) {
      impls.set(method, impl);
      return router;
    },
  };
  routes(router as unknown as ConnectRouter);
  return impls;
}

/**
 * The abort signal of one call, made only if someone looks at it (an AbortController per call
 * is a good part of an in-process call's cost, and handlers rarely need it).
 */
class LazySignal {
  #controller: AbortController | undefined;
  #reason: unknown;
  #aborted = false;

  get signal(): AbortSignal {
    if (this.#aborted && !this.#controller) return AbortSignal.abort(this.#reason);
    this.#controller ??= new AbortController();
    return this.#controller.signal;
  }

  abort(reason: unknown): void {
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

const chain = (interceptors: readonly Interceptor[], last: UnaryFn): UnaryFn =>
  interceptors.reduceRight<UnaryFn>((next, i) => i(next as never) as UnaryFn, last);

export interface DirectTransportOptions {
  readonly routes: (router: ConnectRouter) => void;
  /** The caller's interceptors (e.g. the one that adds the shared secret), outermost first. */
  readonly clientInterceptors: readonly Interceptor[];
  /** The server's interceptors (its guard), run after the request has been through the "wire". */
  readonly serverInterceptors: readonly Interceptor[];
  readonly defaultTimeoutMs: number;
  /** Largest request the server accepts (as its network listener does). */
  readonly readMaxBytes: number;
}

/**
 * A Connect transport that calls the handlers of `routes` directly. Each request and response is
 * encoded and decoded once, as on the wire (the handler sees exactly what a remote call would
 * give it, and neither side can alias the other's objects), and passes the client's and the
 * server's interceptors; but there is no HTTP, no envelope, no stream: Connect's own router
 * transport costs ~200 µs of CPU per call, this a few µs. Unary methods only (the only kind the
 * internal services have). The deadline (and the caller's signal) reject the call and abort the
 * handler's signal.
 */
export function createDirectTransport(opts: DirectTransportOptions): Transport {
  const impls = implementations(opts.routes);
  const unary = async (
    method: DescMethod & { methodKind: "unary" },
    signal: AbortSignal | undefined,
    timeoutMs: number | undefined,
    header: HeadersInit | undefined,
    input: unknown,
    contextValues: UnaryRequest["contextValues"] | undefined,
  ): Promise<UnaryResponse> => {
    const impl = impls.get(method);
    const service = method.parent;
    const url = `${IN_PROCESS_SCHEME}/${service.typeName}/${method.name}`;
    const timeout = timeoutMs ?? opts.defaultTimeoutMs;
    const deadline = timeout > 0 ? Date.now() + timeout : undefined;
    const abort = new LazySignal();
    const handle: UnaryFn = async (req) => {
      if (!impl) throw new ConnectError(`${service.typeName}.${method.name} is not implemented`, Code.Unimplemented);
      const responseHeader = new Headers();
      const responseTrailer = new Headers();
      const ctx: HandlerContext = {
        service,
        method,
        protocolName: "in-process",
        requestMethod: "POST",
        url,
        get signal() {
          return abort.signal;
        },
        timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
        requestHeader: req.header,
        responseHeader,
        responseTrailer,
        values: req.contextValues,
      };
      const out = await impl(req.message, ctx);
      return { stream: false, service, method, header: responseHeader, trailer: responseTrailer, message: create(method.output, out as never) } as UnaryResponse;
    };
    const server = chain(opts.serverInterceptors, handle);
    const wire: UnaryFn = async (req) => {
      const bytes = toBinary(method.input, req.message);
      if (bytes.byteLength > opts.readMaxBytes) {
        throw new ConnectError(`message size ${bytes.byteLength} is larger than configured readMaxBytes ${opts.readMaxBytes}`, Code.ResourceExhausted);
      }
      const res = await server({
        stream: false,
        service,
        method,
        requestMethod: req.requestMethod,
        url: req.url,
        get signal() {
          return abort.signal;
        },
        header: req.header,
        contextValues: req.contextValues,
        message: fromBinary(method.input, bytes),
      } as UnaryRequest);
      return { ...res, message: fromBinary(method.output, toBinary(method.output, res.message)) } as UnaryResponse;
    };
    const req = {
      stream: false,
      service,
      method,
      requestMethod: "POST",
      url,
      get signal() {
        return abort.signal;
      },
      header: new Headers(header),
      contextValues: contextValues ?? createContextValues(),
      message: create(method.input, input as never),
    } as UnaryRequest;
    return settle(chain(opts.clientInterceptors, wire)(req), abort, timeout, signal);
  };
  return {
    unary: unary as Transport["unary"],
    stream: () => Promise.reject(new ConnectError("streaming calls are not served in process", Code.Unimplemented)),
  };
}

/**
 * `call`, unless the deadline passes (deadline_exceeded) or the caller aborts (canceled) first;
 * either also aborts the handler's signal. No timer when there is no deadline.
 */
function settle<T>(call: Promise<T>, abort: LazySignal, timeoutMs: number, signal: AbortSignal | undefined): Promise<T> {
  if (timeoutMs <= 0 && !signal) return call;
  return new Promise<T>((resolve, reject) => {
    const fail = (err: ConnectError): void => {
      done();
      abort.abort(err);
      reject(err);
    };
    const onAbort = (): void => fail(ConnectError.from(signal?.reason, Code.Canceled));
    const timer = timeoutMs > 0 ? setTimeout(() => fail(new ConnectError("the operation timed out", Code.DeadlineExceeded)), timeoutMs) : undefined;
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    };
    if (signal?.aborted) return onAbort();
    signal?.addEventListener("abort", onAbort, { once: true });
    call.then(
      (v) => (done(), resolve(v)),
      (e: unknown) => (done(), reject(e as Error)),
    );
  });
}
