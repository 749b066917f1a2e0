import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import type { LocalServers } from "./in-process.js";
import { INTERNAL_SECRET_HEADER } from "./server.js";

interface Channel {
  /** The HTTP/2 connection; none for a server of this process. */
  readonly manager: Http2SessionManager | undefined;
  readonly transport: Transport;
  readonly clients: Map<string, unknown>;
}

/**
 * gRPC client channels keyed by address (host:port), one HTTP/2 connection each, reused by
 * every call. An address served by this very process (found in `local`) gets a channel with no
 * socket: its calls go straight to that server's handlers. `close()` aborts them all; idempotent.
 */
export class Channels {
  readonly #channels = new Map<string, Channel>();
  readonly #interceptors: Interceptor[];
  readonly #timeoutMs: number;
  readonly #local: LocalServers | undefined;
  #closed = false;

  constructor(opts: { timeoutMs: number; secret?: string | undefined; local?: LocalServers | undefined }) {
    this.#timeoutMs = opts.timeoutMs;
    this.#local = opts.local;
    const secret = opts.secret;
    this.#interceptors = secret
      ? [
          (next) => (req) => {
            req.header.set(INTERNAL_SECRET_HEADER, secret);
            return next(req);
          },
        ]
      : [];
  }

  client<S extends DescService>(service: S, address: string): Client<S> {
    if (this.#closed) throw new Error("channels are closed");
    let ch = this.#channels.get(address);
    const local = ch ? undefined : this.#local?.get(address);
    if (local) {
      ch = { manager: undefined, transport: local.transport({ interceptors: this.#interceptors, defaultTimeoutMs: this.#timeoutMs }), clients: new Map() };
      this.#channels.set(address, ch);
    } else if (!ch) {
      const baseUrl = `http://${address}`;
      const manager = new Http2SessionManager(baseUrl, { pingIntervalMs: 15_000, pingTimeoutMs: 10_000, idleConnectionTimeoutMs: 60_000 });
      const transport = createGrpcTransport({
        baseUrl,
        sessionManager: manager,
        defaultTimeoutMs: this.#timeoutMs,
        interceptors: this.#interceptors,
        // Internal calls stay uncompressed: gzip of a batch's answer cost more CPU than the bytes it saved on a LAN.
        acceptCompression: [],
      });
      ch = { manager, transport, clients: new Map() };
      this.#channels.set(address, ch);
    }
    let client = ch.clients.get(service.typeName) as Client<S> | undefined;
    if (!client) {
      client = createClient(service, ch.transport);
      ch.clients.set(service.typeName, client);
    }
    return client;
  }

  /** Drops the channel to an address that left the registry. */
  forget(address: string): void {
    this.#channels.get(address)?.manager?.abort();
    this.#channels.delete(address);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const ch of this.#channels.values()) ch.manager?.abort();
    this.#channels.clear();
  }
}
