import type { Interceptor, Transport } from "@connectrpc/connect";

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
