import type { Interceptor, Transport } from "@connectrpc/connect";

/*
 * What the SDK needs from its runtime, so that one client serves Node (terminal chat, tests,
 * benchmarks) and browsers (the web client). Nothing here imports a runtime: the Node
 * binding is platform-node.ts, the browser one platform-browser.ts.
 */

/** How a WebSocket ended, before or after it opened. */
export interface SocketEnd {
  readonly code: number;
  readonly reason: string;
  /** True when the close handshake completed (never for 1006). */
  readonly wasClean: boolean;
  /**
   * HTTP status of a refused upgrade when the runtime can see it (Node); undefined when it
   * cannot (browsers hide it) or when the socket had opened.
   */
  readonly upgradeStatus: number | undefined;
  /** The runtime's error, if one preceded the end. */
  readonly error: Error | undefined;
}

/** Callbacks of one socket; `end` is called exactly once, whether or not it opened. */
export interface SocketEvents {
  open(): void;
  /** A binary frame; `undefined` for a text frame (the protocol has none). */
  frame(data: Uint8Array | undefined): void;
  /** The peer showed it is alive without a frame (protocol ping or pong). */
  alive(): void;
  end(info: SocketEnd): void;
}

/** A WebSocket as the SDK uses it: binary frames out, one end report. */
export interface PlatformSocket {
  readonly isOpen: boolean;
  send(frame: Uint8Array): void;
  /** Starts the close handshake (the end report follows when it completes). */
  close(code: number, reason: string): void;
  /** Drops the connection at once; the end report (1006) is made now if not made yet. */
  terminate(): void;
}

export interface TransportOptions {
  readonly baseUrl: string;
  readonly useBinaryFormat: boolean;
  readonly interceptors: Interceptor[];
  readonly defaultTimeoutMs: number;
}

/** A timer handle as both runtimes return it. */
export type Timer = ReturnType<typeof setTimeout>;

export interface ClientPlatform {
  /** Whether a refused upgrade's HTTP status (401 vs 503) is visible; browsers hide it. */
  readonly seesUpgradeStatus: boolean;
  /** A Connect-protocol transport for the gateway's public HTTP API. */
  createTransport(opts: TransportOptions): Transport;
  /** Opens a WebSocket (binary, no compression); events arrive through `events`. */
  openSocket(url: string, handshakeTimeoutMs: number, events: SocketEvents): PlatformSocket;
  /** Lets the process exit while only this timer is pending (Node); nothing to do in a browser. */
  detach(timer: Timer): void;
}

/**
 * A random RFC 4122 version 4 id. Uses `crypto.randomUUID` where available; pages served over
 * plain HTTP to another host are not a secure context and lack it, but have getRandomValues.
 */
export function randomId(): string {
  const c = globalThis.crypto;
  if (typeof c.randomUUID === "function") return c.randomUUID();
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Resolves after `ms`, or at once when `signal` aborts (never rejects). */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
